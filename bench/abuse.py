"""Attacks and defences, measured: what each abuse of chapter 3 costs a server, before and after its defence.

    make bench-abuse       # published: before (commit 8be1d17's phase 3, from git archive) and after
    .venv/bin/python -m bench.abuse --label after                        # this repository's phase 3
    .venv/bin/python -m bench.abuse --label before --phase-dir DIR       # another copy, e.g. an old commit

Each run measures one phase directory with its default options (except where an attack would otherwise take
minutes; the option used is in the table) and stores its figures under the label, beside the labels the file
already holds: in bench/results/abuse.json, and docs/generated/abuse.md shows every label side by side, only
with --publish (`make bench-abuse`); otherwise in bench/results/exploratory-abuse-NAME.json alone (run it
twice with the same --name to compare two labels). The attacks are the ones tests/test_abuse.py asserts on;
this file only measures them. Everything goes to 127.0.0.1 and is bounded in time.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.report import markdown_table
from bench.results import (
    add_publishing_options,
    document,
    harness_command,
    measured_on,
    now,
    read_document,
    save_and_publish,
)
from tools.phases import REPO_ROOT, PhaseProcess

PUBLISHED_NAME = "abuse"  # bench/results/abuse.json: the results the docs show
TABLE = REPO_ROOT / "docs" / "generated" / "abuse.md"
GET = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

Figures = dict[str, str]


def start(phase_dir: Path, *options: str) -> PhaseProcess:
    return PhaseProcess(phase_dir.name, *options, root=phase_dir.parent)


def answer_time(server: PhaseProcess) -> float:
    """Seconds for a new client to get `GET /` answered."""
    started = time.monotonic()
    with socket.create_connection(server.address, timeout=30) as sock:
        sock.sendall(GET)
        sock.recv(4096)
    return time.monotonic() - started


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, str]:
    """What the server sends until it closes -> (bytes, "eof", "reset" or "still open")."""
    received = bytearray()
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            break
        except ConnectionResetError:
            return bytes(received), "reset"
        if not chunk:
            return bytes(received), "eof"
        received += chunk
    return bytes(received), "still open"


def crashing_target(phase_dir: Path) -> Figures:
    server = start(phase_dir)
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"GET http://[/ HTTP/1.1\r\nHost: h\r\n\r\n")
        answer, _ = read_until_closed(sock, within=5)
    time.sleep(0.5)
    alive = server.process.poll() is None
    server.stop()
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "nothing"
    return {
        "`GET http://[/`: the answer": status,
        "`GET http://[/`: the server": "serving" if alive else "dead",
    }


def declared_bodies(phase_dir: Path) -> Figures:
    server = start(phase_dir)
    process = psutil.Process(server.pid)
    before = process.memory_info().rss
    head = b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 8388608\r\n\r\n"
    clients = [socket.create_connection(server.address, timeout=30) for _ in range(100)]
    for client in clients:
        client.sendall(head + b"x" * 1024)
    waited = answer_time(server)
    time.sleep(0.5)
    held = process.memory_info().rss - before
    for client in clients:
        client.close()
    server.stop()
    return {
        "100 heads declaring 8 MiB bodies: memory held": f"{held / 2**20:.1f} MiB",
        "100 heads declaring 8 MiB bodies: another client's answer": f"{waited * 1000:.0f} ms",
    }


def time_to_cut(server: PhaseProcess, prologue: bytes, drip: bytes, every: float, window: float) -> str:
    """Send `prologue`, then `drip` every `every` seconds: how long until the server closes (or "not cut")."""
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(prologue)
        started = time.monotonic()
        while time.monotonic() - started < window:
            try:
                sock.sendall(drip)
            except OSError:
                break
            _, ending = read_until_closed(sock, within=every)
            if ending != "still open":
                break
        else:
            return f"not cut in {window:.0f} s"
    return f"{time.monotonic() - started:.1f} s"


def empty_lines(phase_dir: Path) -> Figures:
    server = start(phase_dir)
    cut = time_to_cut(server, GET, b"\r\n", every=5, window=30)  # the first answer is read with the rest
    server.stop()
    return {"a CRLF every 5 s after a request: cut after": cut}


def trickling_body(phase_dir: Path) -> Figures:
    server = start(phase_dir)
    head = b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n"
    cut = time_to_cut(server, head, b"x" * 10, every=0.1, window=40)
    server.stop()
    return {"a body sent at 100 B/s: cut after": cut}


def slow_pipelined_reader(phase_dir: Path) -> Figures:
    server = start(phase_dir, "--header-timeout", "1")
    count = 100_000
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect(server.address)
        sender = threading.Thread(target=sock.sendall, args=(GET * count,), daemon=True)
        sender.start()
        time.sleep(3)
        received = bytearray()
        ending = ""
        sock.settimeout(10)
        while received.count(b"HTTP/1.1 ") < count:
            try:
                chunk = sock.recv(1 << 20)
            except (ConnectionResetError, TimeoutError) as error:
                ending = "reset" if isinstance(error, ConnectionResetError) else "stalled"
                break
            if not chunk:
                ending = "closed"
                break
            received += chunk
    server.stop()
    answers = f"{received.count(b'HTTP/1.1 200 '):,} answers" + (f", then {ending}" if ending else "")
    return {"100,000 pipelined GETs read after 3 s (`--header-timeout 1`)": answers}


def sigterm_in_flight(phase_dir: Path) -> Figures:
    server = start(phase_dir)
    body = b"s" * (4 * 1024 * 1024)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect(server.address)
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        first = sock.recv(12)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        rest, _ = read_until_closed(sock, within=10)
    status = server.process.wait(timeout=15)
    server.stop()
    complete = (first + rest).endswith(body)
    twice = start(phase_dir)
    with socket.create_connection(twice.address, timeout=5) as busy:
        busy.sendall(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhalf")
        time.sleep(0.2)
        twice.process.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        twice.process.send_signal(signal.SIGTERM)
        second_status = twice.process.wait(timeout=15)
    twice.stop()
    traceback = "Traceback" in twice.stderr
    burst = start(phase_dir)
    with socket.create_connection(burst.address, timeout=5):
        deadline = time.monotonic() + 10
        while burst.process.poll() is None and time.monotonic() < deadline:
            burst.process.send_signal(signal.SIGTERM)
    burst.stop()
    burst_traceback = ", with a traceback" if "Traceback" in burst.stderr else ""
    return {
        "SIGTERM during a 4 MiB answer: the answer": "complete" if complete else "cut short",
        "SIGTERM during a 4 MiB answer: exit status": str(status),
        "SIGTERM twice, a request in flight: exit status": f"{second_status}"
        + (", with a traceback" if traceback else ""),
        "SIGTERM again and again until it exits: exit status": f"{burst.process.returncode}{burst_traceback}",
    }


MEASUREMENTS: list[Callable[[Path], Figures]] = [
    crashing_target,
    declared_bodies,
    empty_lines,
    trickling_body,
    slow_pipelined_reader,
    sigterm_in_flight,
]


def markdown(contents: dict[str, Any], source: str = f"bench/results/{PUBLISHED_NAME}.json") -> str:
    """docs/generated/abuse.md: a row per attack, a column per label, in the order first measured."""
    labels = contents["labels"]
    attacks = dict.fromkeys(attack for label in labels.values() for attack in label["figures"])
    rows = [
        [attack, *(label["figures"].get(attack, "not measured") for label in labels.values())]
        for attack in attacks
    ]
    lines = markdown_table(["attack", *labels], rows, [":--", *["--:"] * len(labels)])
    generated = f"Generated by `bench/abuse.py` from `{source}`."
    lines += ["", f"{generated} {measured_on(contents, 'make bench-abuse')}"]
    return "\n".join(lines) + "\n"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m bench.abuse", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--label", help="the column these figures go in, e.g. before, after")
    parser.add_argument(
        "--phase-dir",
        type=Path,
        default=REPO_ROOT / "phase3_http_parse",
        help="the phase package to measure (default: this repository's phase3_http_parse)",
    )
    add_publishing_options(parser, PUBLISHED_NAME, "make bench-abuse")
    options = parser.parse_args(argv)
    if options.from_results is None and not options.label:
        parser.error("--label is required, unless --from-results")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)

    def measure(results_file: Path) -> dict[str, Any]:
        labels = read_document(results_file, PUBLISHED_NAME)["labels"] if results_file.exists() else {}
        phase_dir = options.phase_dir.resolve()
        command = harness_command("bench.abuse", argv)
        created = now()
        figures: Figures = {}
        for attack in MEASUREMENTS:
            print(f"{options.label}: {attack.__name__} ...", flush=True)
            figures.update(attack(phase_dir))
        labels[options.label] = {
            "created": created,
            "command": command,
            "phase_dir": str(phase_dir),
            "figures": figures,
        }
        settings = {"measurements": [attack.__name__ for attack in MEASUREMENTS]}
        return document(PUBLISHED_NAME, PUBLISHED_NAME, command, {}, settings, labels=labels)

    return save_and_publish(
        options, PUBLISHED_NAME, measure, lambda contents, source: {TABLE: markdown(contents, source)}
    )


if __name__ == "__main__":
    sys.exit(main())
