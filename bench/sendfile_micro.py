"""Microbenchmark of sendfile: the CPU a process spends sending one 64 KiB file, with and without a copy.

    make bench-sendfile                                           # published
    .venv/bin/python -m bench.sendfile_micro --files 2000 --repeats 3      # exploratory

With --publish (`make bench-sendfile`) it writes bench/results/sendfile_micro.json and
docs/generated/sendfile_micro.md; otherwise bench/results/exploratory-sendfile_micro-NAME.json alone. The same
64 KiB file is sent N times over one loopback TCP connection, two ways: (a) `os.sendfile`, as phase 4 sends
a static file, where the bytes go from the page cache to the socket inside the kernel; (b) `os.preadv` into
one reused buffer, then `socket.sendall` from it, where every byte crosses into this process and back out. A
reader process, pinned to the other CPU, drains the connection and counts what arrived, so the sender never
waits for a reader on its own core. What is measured is the sender's own CPU time per file, user and
system apart (`resource.getrusage`), median of several repeats; the bytes through user space are not measured
but follow from the method: none for sendfile, the whole file for pread + send. The tradeoff: loopback has no
network card, so this is the CPU a send costs, not what a real network adds; and the file is in the page cache
throughout, as a hot static file is.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import socket
import statistics
import sys
import tempfile
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.report import EN_DASH, markdown_table
from bench.results import add_publishing_options, document, harness_command, rerun_command, save_and_publish
from tools.phases import HOST, REPO_ROOT

PUBLISHED_NAME = "sendfile_micro"  # bench/results/sendfile_micro.json: the results the docs show
TABLE = REPO_ROOT / "docs" / "generated" / "sendfile_micro.md"
FILE_BYTES = 64 * 1024
FILES = 20_000  # per repeat: about 1.3 GB, long enough that a clock tick is noise
REPEATS = 7
SENDFILE = "os.sendfile"
READ_AND_SEND = "os.preadv into a buffer + socket.sendall"
# Bytes that pass through this process's memory per file: not measured, they follow from the method.
BYTES_THROUGH_USER_SPACE = {SENDFILE: 0, READ_AND_SEND: FILE_BYTES}

Sender = Callable[[socket.socket, int, int], None]  # (connected socket, file descriptor, file size)


# -------------------------------------------------------------------------------------------- two senders


def send_with_sendfile(sock: socket.socket, fd: int, size: int) -> None:
    """The file from the page cache to the socket, inside the kernel. A blocking socket may still take
    part of it: carry on from where the kernel stopped."""
    offset = 0
    while offset < size:
        offset += os.sendfile(sock.fileno(), fd, offset, size - offset)


def read_and_send(buffer: bytearray) -> Sender:
    """The file into `buffer` (reused: no allocation per file), then out of it with sendall."""
    view = memoryview(buffer)

    def send(sock: socket.socket, fd: int, size: int) -> None:
        offset = 0
        while offset < size:
            count = os.preadv(fd, [view[: size - offset]], offset)
            sock.sendall(view[:count])
            offset += count

    return send


# -------------------------------------------------------------------------------------------- the reader


def drain(listener: socket.socket, cpu: int, report: Connection) -> None:
    """In the reader process: accept connections one after another, read each to its end, and report how
    many bytes arrived. Runs until the parent terminates it."""
    os.sched_setaffinity(0, {cpu})
    buffer = bytearray(1 << 20)
    while True:
        connection, _ = listener.accept()
        received = 0
        with connection:
            while count := connection.recv_into(buffer):
                received += count
        report.send(received)


# -------------------------------------------------------------------------------------------- measuring


def one_repeat(
    sender: Sender, path: Path, files: int, address: tuple[str, int], report: Connection
) -> dict[str, Any]:
    """Send the file `files` times over a new connection; the CPU this process used doing it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with socket.create_connection(address) as sock:
            before = resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(files):
                sender(sock, fd, FILE_BYTES)
            after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.close(fd)
    received = report.recv()
    if received != files * FILE_BYTES:
        raise RuntimeError(f"the reader received {received:,} bytes, not {files * FILE_BYTES:,}")
    return {
        "files": files,
        "user_s": round(after.ru_utime - before.ru_utime, 6),
        "system_s": round(after.ru_stime - before.ru_stime, 6),
        "bytes_received": received,
    }


def run(files: int, repeats: int, sender_cpu: int, reader_cpu: int) -> list[dict[str, Any]]:
    """Both methods, `repeats` times each, alternating so that a disturbance hits both alike."""
    senders: dict[str, Sender] = {
        SENDFILE: send_with_sendfile,
        READ_AND_SEND: read_and_send(bytearray(FILE_BYTES)),
    }
    measured: dict[str, list[dict[str, Any]]] = {method: [] for method in senders}
    with tempfile.TemporaryDirectory(prefix="sendfile-") as scratch, socket.socket() as listener:
        path = Path(scratch) / "file64k.bin"
        path.write_bytes(bytes(range(256)) * (FILE_BYTES // 256))
        listener.bind((HOST, 0))
        listener.listen()
        ours, theirs = multiprocessing.Pipe()
        reader = multiprocessing.get_context("fork").Process(
            target=drain, args=(listener, reader_cpu, theirs), daemon=True
        )
        reader.start()
        previous_cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {sender_cpu})
        try:
            for sender in senders.values():  # a first pass warms up the code and the page cache
                one_repeat(sender, path, min(files, 100), listener.getsockname(), ours)
            for _ in range(repeats):
                for method, sender in senders.items():
                    measured[method].append(one_repeat(sender, path, files, listener.getsockname(), ours))
        finally:
            os.sched_setaffinity(0, previous_cpus)
            reader.terminate()
            reader.join()
    return [
        {
            "method": method,
            "bytes_through_user_space_per_file": BYTES_THROUGH_USER_SPACE[method],
            "repeats": runs,
        }
        for method, runs in measured.items()
    ]


# ------------------------------------------------------------------------------------------------ output


def per_file_us(run: dict[str, Any], *figures: str) -> float:
    seconds = sum(float(run[figure]) for figure in figures)
    return seconds * 1e6 / int(run["files"])


def median_us(method: dict[str, Any], *figures: str) -> float:
    return statistics.median(per_file_us(run, *figures) for run in method["repeats"])


def markdown(results: dict[str, Any]) -> str:
    """docs/generated/sendfile_micro.md: one table, a row per method, and the difference as a sentence."""
    machine, settings = results["machine"], results["settings"]
    lines = [
        "<!-- generated by bench/sendfile_micro.py; do not edit. -->",
        "",
        f"**Sending one {settings['file_bytes'] // 1024} KiB file over loopback TCP**: the sender's CPU time"
        f" per file, median of {settings['repeats']} repeats of {settings['files']:,} files (lowest to"
        " highest repeat in brackets)",
        "",
    ]
    rows = []
    for method in results["methods"]:
        totals = [per_file_us(run, "user_s", "system_s") for run in method["repeats"]]
        rows.append(
            [
                f"`{method['method']}`",
                f"{method['bytes_through_user_space_per_file']:,}",
                f"{median_us(method, 'user_s'):.1f} µs",
                f"{median_us(method, 'system_s'):.1f} µs",
                f"{median_us(method, 'user_s', 'system_s'):.1f} µs"
                f" ({min(totals):.1f}{EN_DASH}{max(totals):.1f})",
            ]
        )
    lines += markdown_table(
        ["method", "bytes through user space per file", "user CPU", "system CPU", "CPU per file"],
        rows,
        ["---", "---:", "---:", "---:", "---:"],
    )
    by_method = {method["method"]: method for method in results["methods"]}
    sendfile, copying = (
        median_us(by_method[name], "user_s", "system_s") for name in (SENDFILE, READ_AND_SEND)
    )
    change = (sendfile / copying - 1) * 100
    lines += [
        "",
        f"`os.sendfile` used {abs(change):.0f}% {'less' if change < 0 else 'more'} CPU per file than reading"
        " the file into a buffer and sending it. The bytes through user space are not measured: they follow"
        " from the method (`preadv` copies the file into the buffer, `sendall` copies it back into the"
        " kernel; `sendfile` copies nothing into the process)."
        f" Sender pinned to CPU {settings['sender_cpu']}, the reader draining the connection to CPU"
        f" {settings['reader_cpu']}; {machine['cores']} x"
        f" {machine['cpu_model']}, Linux"
        f" {machine['kernel']}, Python {machine['python']}, {results['created'][:10]}. Rerun:"
        f" `{rerun_command(results, 'make bench-sendfile')}`.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- command


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m bench.sendfile_micro", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--files", type=int, default=FILES, help="files sent per repeat (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=REPEATS, help="repeats per method (default: %(default)s)"
    )
    cpus = sorted(os.sched_getaffinity(0))
    for role, cpu in (("sender", 1), ("reader", 0)):
        parser.add_argument(
            f"--{role}-cpu", type=int, default=cpu, choices=cpus, help=f"the {role}'s CPU (default: {cpu})"
        )
    add_publishing_options(parser, PUBLISHED_NAME, "make bench-sendfile")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)

    def measure(results_file: Path) -> dict[str, Any]:
        settings = dict(
            files=options.files,
            repeats=options.repeats,
            file_bytes=FILE_BYTES,
            sender_cpu=options.sender_cpu,
            reader_cpu=options.reader_cpu,
        )
        methods = run(options.files, options.repeats, options.sender_cpu, options.reader_cpu)
        command = harness_command("bench.sendfile_micro", argv)
        return document(PUBLISHED_NAME, PUBLISHED_NAME, command, {}, settings, methods=methods)

    return save_and_publish(options, PUBLISHED_NAME, measure, lambda contents, _: {TABLE: markdown(contents)})


if __name__ == "__main__":
    sys.exit(main())
