"""Microbenchmark of TLS in an event loop: `ssl.SSLObject` over memory BIOs, or a non-blocking `SSLSocket`.

    make bench-tls-io                                                      # published
    .venv/bin/python -m bench.tls_io --requests 2000 --repeats 1          # exploratory

With --publish (`make bench-tls-io`) it writes bench/results/tls_io.json and docs/generated/tls_io.md;
otherwise bench/results/exploratory-tls_io-NAME.json alone. A loop that speaks TLS can let OpenSSL read and
write the socket itself (a non-blocking `SSLSocket`), or move the bytes itself and hand OpenSSL memory
(`SSLObject` between two `MemoryBIO`s). The server here is the smallest epoll loop that can tell them
apart, one per engine:

  sslsocket  `recv_into` and `send` on the `SSLSocket`: OpenSSL calls read() and write() on the descriptor.
  sslobject  `recv_into` on the plain socket, the ciphertext written into the incoming BIO, the plaintext
             read from the `SSLObject`; the answers written to it, their ciphertext read from the outgoing
             BIO and sent on the plain socket.

Both serve one TLS 1.3 connection over loopback, one receive per wakeup (level-triggered epoll), every
request answered with the same 150-odd bytes. A client process on the other CPU sends requests in lockstep
(keep-alive) or sixteen per write (pipelined). Measured: the server process's user and system CPU per
request (getrusage around the requests, the handshake excluded), the median of several repeats with the
engines taking turns; and, in one more repeat per engine, its system calls per request, counted by
`strace -c` attached to it (a traced run is slow: counts only, never time). The bytes copied into and out
of the BIOs are not measured: they follow from the engine (the ciphertext both ways, once more). The
tradeoff: one connection and fixed answers, so this is the cost of TLS's plumbing, not of a server.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import trustme

from bench.report import EN_DASH, markdown_table
from bench.results import add_publishing_options, document, harness_command, measured_on, save_and_publish
from tools.phases import HOST, REPO_ROOT

PUBLISHED_NAME = "tls_io"  # bench/results/tls_io.json: the results the docs show
TABLE = REPO_ROOT / "docs" / "generated" / "tls_io.md"
SSLSOCKET, SSLOBJECT = "SSLSocket", "SSLObject + MemoryBIO"
ENGINES = (SSLSOCKET, SSLOBJECT)
DEPTHS = {"keep-alive": 1, "pipelined, 16 per write": 16}
REQUESTS = 20_000  # per repeat and mode
REPEATS = 5
REQUEST = b"GET /users/42 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench.tls_io\r\nAccept: */*\r\n\r\n"
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 22\r\n"
    b'Date: Tue, 08 Dec 2026 00:00:00 GMT\r\n\r\n{"id": 42, "n": "ada"}'
)
END_OF_HEAD = b"\r\n\r\n"
RECEIVE_BYTES = 64 * 1024


# ---------------------------------------------------------------------------------------------- the server


class SocketEngine:
    """OpenSSL reads and writes the descriptor itself: one Python call each way."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.tls = context.wrap_socket(sock, server_side=True)  # blocking handshake, before the clock
        self.tls.setblocking(False)
        self.fd = self.tls.fileno()

    def receive(self) -> bytes | None:
        """The plaintext of one receive: empty if a record is still incomplete, None at the end."""
        try:
            plaintext = self.tls.recv(RECEIVE_BYTES)
        except ssl.SSLWantReadError:
            return b""
        return plaintext or None

    def send(self, plaintext: bytes) -> None:
        self.tls.sendall(plaintext)  # a few hundred bytes: the socket always takes them at once


class ObjectEngine:
    """We move the bytes: the socket to the incoming BIO, the outgoing BIO to the socket."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        while True:  # the handshake, blocking, before the clock
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self.incoming.write(self.sock.recv(RECEIVE_BYTES))
        self.sock.sendall(self.outgoing.read())
        self.sock.setblocking(False)
        self.cipher = bytearray(RECEIVE_BYTES)
        self.cipher_view = memoryview(self.cipher)
        self.fd = sock.fileno()

    def receive(self) -> bytes | None:
        count = self.sock.recv_into(self.cipher)
        if count == 0:
            return None
        self.incoming.write(self.cipher_view[:count])
        received = b""
        while True:  # every whole record the BIO holds now
            try:
                received += self.tls.read(RECEIVE_BYTES)
            except ssl.SSLWantReadError:
                return received
            except ssl.SSLZeroReturnError:  # close_notify
                return None

    def send(self, plaintext: bytes) -> None:
        self.tls.write(plaintext)
        self.sock.sendall(self.outgoing.read())


def serve(listener: socket.socket, certificate: Path, key: Path, cpu: int, control: Connection) -> None:
    """In the server process: for every connection, the engine the parent names, then answer until the
    client closes, and report the CPU the answering took."""
    os.sched_setaffinity(0, {cpu})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(certificate, key)
    while True:
        engine_name = control.recv()
        sock, _ = listener.accept()
        engine = SocketEngine(sock, context) if engine_name == SSLSOCKET else ObjectEngine(sock, context)
        epoll = select.epoll()
        epoll.register(engine.fd, select.EPOLLIN)
        control.send("ready")
        control.recv()  # go: strace is attached, if it is to be
        before = resource.getrusage(resource.RUSAGE_SELF)
        answered, unfinished = 0, b""
        while True:
            epoll.poll()
            plaintext = engine.receive()
            if plaintext is None:
                break
            unfinished += plaintext
            count = unfinished.count(END_OF_HEAD)
            if count:
                unfinished = unfinished[unfinished.rindex(END_OF_HEAD) + len(END_OF_HEAD) :]
                engine.send(ANSWER * count)
                answered += count
        after = resource.getrusage(resource.RUSAGE_SELF)
        epoll.close()
        sock.close()
        control.send((after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, answered))


# ---------------------------------------------------------------------------------------------- the client


def load(address: tuple[str, int], ca: Path, requests: int, depth: int, *, cpu: int, go: Connection) -> None:
    """In the client process: connect, wait for the go, then `requests` requests, `depth` per write, each
    write's answers read whole before the next."""
    os.sched_setaffinity(0, {cpu})
    context = ssl.create_default_context(cafile=str(ca))
    with context.wrap_socket(socket.create_connection(address), server_hostname=HOST) as tls:
        tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        go.recv()
        batch, expected = REQUEST * depth, len(ANSWER) * depth
        for _ in range(requests // depth):
            tls.sendall(batch)
            received = 0
            while received < expected:
                received += len(tls.recv(RECEIVE_BYTES))


# ---------------------------------------------------------------------------------------------- measuring


def system_calls(pid: int) -> tuple[subprocess.Popen[bytes], Path]:
    """strace -c attached to `pid`, returned once it is attached; its table goes to the file returned."""
    output = Path(tempfile.mkstemp(suffix=".strace")[1])
    tracer = subprocess.Popen(["strace", "-c", "-p", str(pid), "-o", str(output)], stderr=subprocess.PIPE)
    assert tracer.stderr is not None
    tracer.stderr.readline()  # "strace: Process N attached"
    return tracer, output


def counts_from(tracer: subprocess.Popen[bytes], output: Path) -> dict[str, int]:
    """Detach strace and read its table: calls by name."""
    tracer.send_signal(signal.SIGINT)
    tracer.wait()
    calls = {}
    for line in output.read_text().splitlines():
        match = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if match and match.group(2) != "total":
            calls[match.group(2)] = int(match.group(1))
    output.unlink()
    return calls


def one_repeat(engine: str, depth: int, requests: int, trace: bool, setup: dict[str, Any]) -> dict[str, Any]:
    """One connection through `engine`: the server's CPU while it answered `requests` requests (rounded
    down to whole writes of `depth`)."""
    requests -= requests % depth
    control, go = setup["control"], multiprocessing.Pipe()
    control.send(engine)
    client = multiprocessing.get_context("fork").Process(
        target=load,
        args=(setup["address"], setup["ca"], requests, depth),
        kwargs=dict(cpu=setup["client_cpu"], go=go[1]),
    )
    client.start()
    if control.recv() != "ready":
        raise RuntimeError("the server did not get ready")
    tracer = system_calls(setup["server_pid"]) if trace else None
    control.send("go")
    go[0].send("go")
    client.join()
    user_s, system_s, answered = control.recv()
    if answered != requests or client.exitcode != 0:
        raise RuntimeError(f"{engine}: {answered:,} of {requests:,} answered, client exit {client.exitcode}")
    if tracer is not None:  # a traced repeat's time is strace's: its counts alone are kept
        return {"requests": answered, "system_calls": counts_from(*tracer)}
    return {"requests": answered, "user_s": round(user_s, 6), "system_s": round(system_s, 6)}


def run(requests: int, repeats: int, server_cpu: int, client_cpu: int) -> list[dict[str, Any]]:
    """Every engine in every mode, `repeats` times, the engines taking turns; then one traced repeat each."""
    measured: dict[tuple[str, str], dict[str, Any]] = {
        (engine, mode): {"engine": engine, "mode": mode, "depth": depth, "repeats": []}
        for mode, depth in DEPTHS.items()
        for engine in ENGINES
    }
    with tempfile.TemporaryDirectory(prefix="tls-io-") as scratch, socket.socket() as listener:
        authority = trustme.CA()
        certificate = authority.issue_cert(HOST)
        paths = {name: Path(scratch) / f"{name}.pem" for name in ("ca", "cert", "key")}
        authority.cert_pem.write_to_path(str(paths["ca"]))
        certificate.cert_chain_pems[0].write_to_path(str(paths["cert"]))
        certificate.private_key_pem.write_to_path(str(paths["key"]))
        listener.bind((HOST, 0))
        listener.listen()
        ours, theirs = multiprocessing.Pipe()
        server = multiprocessing.get_context("fork").Process(
            target=serve, args=(listener, paths["cert"], paths["key"], server_cpu, theirs), daemon=True
        )
        server.start()
        assert server.pid is not None
        setup = dict(
            control=ours,
            address=listener.getsockname(),
            ca=paths["ca"],
            client_cpu=client_cpu,
            server_pid=server.pid,
        )
        try:
            for entry in measured.values():  # warm-up
                one_repeat(entry["engine"], entry["depth"], min(requests, 1000), False, setup)
            for _ in range(repeats):
                for entry in measured.values():
                    entry["repeats"].append(
                        one_repeat(entry["engine"], entry["depth"], requests, False, setup)
                    )
            for entry in measured.values():
                entry["traced"] = one_repeat(
                    entry["engine"], entry["depth"], min(requests, 5000), True, setup
                )
        finally:
            server.terminate()
            server.join()
    return list(measured.values())


# ------------------------------------------------------------------------------------------------ output


def per_request_us(run: dict[str, Any], *figures: str) -> float:
    return sum(float(run[figure]) for figure in figures) * 1e6 / int(run["requests"])


def calls_per_request(entry: dict[str, Any]) -> str:
    traced = entry["traced"]
    calls = sorted(traced["system_calls"].items(), key=lambda item: -item[1])
    total = sum(count for _, count in calls) / traced["requests"]
    named = ", ".join(f"`{name}` {count / traced['requests']:.2f}" for name, count in calls[:3])
    return f"{total:.2f} ({named})"


def markdown(results: dict[str, Any]) -> str:
    """docs/generated/tls_io.md: a row per engine and mode, then which engine used less CPU, in a sentence."""
    settings = results["settings"]
    lines = [
        "<!-- generated by bench/tls_io.py; do not edit. -->",
        "",
        "**TLS 1.3 in an epoll loop, two ways**: the server's CPU per request, median of"
        f" {settings['repeats']} repeats of {settings['requests']:,} requests over one connection (lowest to"
        " highest repeat in brackets), and its system calls per request in one more, traced, repeat",
        "",
    ]
    rows, totals = [], {}
    for entry in results["engines"]:
        repeats = entry["repeats"]
        total = [per_request_us(run, "user_s", "system_s") for run in repeats]
        totals[entry["engine"], entry["mode"]] = total
        rows.append(
            [
                entry["mode"],
                f"`{entry['engine']}`",
                f"{statistics.median(per_request_us(run, 'user_s') for run in repeats):.1f} µs",
                f"{statistics.median(per_request_us(run, 'system_s') for run in repeats):.1f} µs",
                f"{statistics.median(total):.1f} µs ({min(total):.1f}{EN_DASH}{max(total):.1f})",
                calls_per_request(entry),
            ]
        )
    lines += markdown_table(
        [
            "mode",
            "engine",
            "user CPU",
            "system CPU",
            "CPU per request",
            "system calls per request (most made)",
        ],
        rows,
        ["---", "---", "--:", "--:", "--:", "---"],
    )
    sentences = []
    for mode in DEPTHS:
        socket_us, object_us = totals[SSLSOCKET, mode], totals[SSLOBJECT, mode]
        change = (statistics.median(object_us) / statistics.median(socket_us) - 1) * 100
        overlap = min(object_us) <= max(socket_us) and min(socket_us) <= max(object_us)
        sentences.append(
            f"{mode}, `{SSLOBJECT}` used {abs(change):.0f}% {'less' if change < 0 else 'more'} CPU per"
            f" request than `{SSLSOCKET}` by the medians"
            + (
                ", their repeats' ranges overlapping"
                if overlap
                else ", every repeat of one below every other's"
            )
        )
    lines += [
        "",
        "; ".join(sentences) + ". The copies into and out of the BIOs are not measured: they follow from the"
        " engine (the ciphertext of every request and answer, once more). Server pinned to CPU"
        f" {settings['server_cpu']}, the client to CPU {settings['client_cpu']}; {results['tls']}.",
        "",
        measured_on(results, "make bench-tls-io"),
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- command


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m bench.tls_io", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--requests", type=int, default=REQUESTS, help="requests per repeat and mode (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=REPEATS, help="repeats per engine (default: %(default)s)"
    )
    cpus = sorted(os.sched_getaffinity(0))
    for role, cpu in (("server", 1), ("client", 0)):
        parser.add_argument(
            f"--{role}-cpu", type=int, default=cpu, choices=cpus, help=f"the {role}'s CPU (default: {cpu})"
        )
    add_publishing_options(parser, PUBLISHED_NAME, "make bench-tls-io")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    if options.from_results is None and shutil.which("strace") is None:
        print("cannot count system calls: strace is not installed (Debian: apt-get install strace)")
        return 1

    def measure(results_file: Path) -> dict[str, Any]:
        settings = dict(
            requests=options.requests,
            repeats=options.repeats,
            server_cpu=options.server_cpu,
            client_cpu=options.client_cpu,
        )
        engines = run(options.requests, options.repeats, options.server_cpu, options.client_cpu)
        command = harness_command("bench.tls_io", argv)
        tls = f"TLS 1.3, {ssl.OPENSSL_VERSION}"
        return document(PUBLISHED_NAME, PUBLISHED_NAME, command, {}, settings, engines=engines, tls=tls)

    return save_and_publish(options, PUBLISHED_NAME, measure, lambda contents, _: {TABLE: markdown(contents)})


if __name__ == "__main__":
    sys.exit(main())
