"""The echo chapters' benchmark: many clients at once, each timing its own round trips, on phases 1 and 2.

    make bench-echo                                 # the full run, a few minutes, published
    .venv/bin/python -m bench.echo --clients 1,10 --cell-round-trips 200 --runs 1 --name try   # exploratory

Every client connects, sends a small message, waits until all of it has come back, and repeats (a closed
loop). From send to full echo is one round trip; from the client's connect() to its first full echo is its
time to first echo, the figure that shows a server serving clients one at a time. Throughput is the round
trips all clients completed per second. Each (server, clients) cell runs several times, the servers
interleaved within each run so that they all see the same machine, and the tables show the medians. Every
cell has a deadline: a client not served by then counts as not served, so a run always ends.

The clients are non-blocking sockets on one `selectors` loop in this process, pinned to CPU 0; the server is
pinned to CPU 1 with taskset. The tradeoff: the client is Python on one core too, so with many clients it can
be the bottleneck, and a round trip includes the time the reply waits for the client loop to get to it. Both
are the same for every server measured, so the comparison stays fair; the absolute figures are the client's
view, not the server's alone.

Before the timed runs, one untimed run per cell counts the server's system calls with `perf stat` on the
kernel's syscall tracepoints: what each design asks of the kernel per round trip.

With --publish (`make bench-echo`) it writes bench/results/echo.json (every run's figures, the machine, the
commands) and the Markdown tables that the chapters include, under docs/generated/echo/; otherwise
bench/results/exploratory-echo-NAME.json alone.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from bench import cpu, report
from bench.results import add_publishing_options, document, harness_command, save_and_publish
from tools.phases import REPO_ROOT, PhaseProcess, phase_command, raise_open_file_limit
from tools.phases import pinned as pinned_to

PUBLISHED_NAME = "echo"  # bench/results/echo.json: the results the chapters' tables are drawn from
DOCS_DIR = REPO_ROOT / "docs" / "generated" / "echo"
SERVER_CPU = 1
CLIENT_CPU = 0
STARTUP_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 10.0
RECEIVE_BUFFER_SIZE = 64 * 1024


@dataclass(frozen=True)
class ServerVariant:
    """One server as measured: a phase package and the options it runs with."""

    key: str
    label: str
    package: str
    options: tuple[str, ...] = ()


VARIANTS = (
    ServerVariant("phase1", "phase 1 (blocking)", "phase1_blocking_echo"),
    ServerVariant("phase2-level", "phase 2 (epoll, level)", "phase2_nonblocking", ("--trigger", "level")),
    ServerVariant("phase2-edge", "phase 2 (epoll, edge)", "phase2_nonblocking", ("--trigger", "edge")),
)


@dataclass
class RunFigures:
    """What one run of one (server, clients) cell measured. Durations in seconds; None = not reached."""

    clients: int
    served: int  # clients that got their first echo before the deadline
    completed: int  # clients that finished all their round trips
    failed: int  # clients whose connection failed or was closed early, or whose echo was wrong
    round_trips: int
    elapsed: float
    round_trips_per_second: float
    round_trip_p50: float | None
    round_trip_p99: float | None
    first_echo_p50: float | None
    first_echo_p99: float | None
    first_echo_max: float | None
    # CPU seconds around the run, as the HTTP bench reads them: a run other processes disturbed is repeated.
    wall_s: float = 0.0
    server_cpu_s: float = 0.0  # the server's process tree
    client_cpu_s: float = 0.0  # this process: the clients' loop
    machine_cpu_s: float = 0.0  # every process on the machine

    @property
    def other_cpu_share(self) -> float:
        """The share of a core used during the run by neither the server nor the clients."""
        other = self.machine_cpu_s - self.server_cpu_s - self.client_cpu_s
        return max(0.0, other) / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(slots=True)
class Client:
    """One client connection of the closed loop."""

    sock: socket.socket
    connect_started: float
    rounds_left: int
    connected: bool = False
    interest: int = selectors.EVENT_WRITE
    unsent: memoryview = field(default_factory=lambda: memoryview(b""))
    sent_at: float = 0.0
    received: int = 0
    first_echo_at: float | None = None


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value that `fraction` of the values are at or below (inf: never reached)."""
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


def finite_or_none(value: float) -> float | None:
    return None if math.isinf(value) else value


class ClosedLoop:
    """Drive `clients` connections to `address`, each doing `round_trips` echoes of `message`, until done or
    `deadline` seconds have passed."""

    def __init__(self, address: tuple[str, int], clients: int, round_trips: int, message: bytes) -> None:
        self.address = address
        self.client_count = clients
        self.round_trips = round_trips
        self.message = message
        self.selector = selectors.DefaultSelector()
        self.receive_buffer = memoryview(bytearray(RECEIVE_BUFFER_SIZE))
        self.clients: list[Client] = []
        self.round_trip_times: list[float] = []
        self.active = 0
        self.failed = 0
        self.completed = 0
        self.last_completion = 0.0

    def run(self, deadline: float) -> RunFigures:
        started = time.perf_counter()
        for _ in range(self.client_count):
            self.open_client()
        stop_at = started + deadline
        while self.active:
            timeout = stop_at - time.perf_counter()
            if timeout <= 0:
                break
            for key, events in self.selector.select(timeout):
                self.on_event(key.data, events)
        finished = self.active == 0
        for client in self.clients:
            if client.sock.fileno() != -1:
                self.selector.unregister(client.sock)
                client.sock.close()
        self.selector.close()
        elapsed = (self.last_completion if finished else stop_at) - started
        return self.figures(elapsed)

    def open_client(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        # Small messages: without TCP_NODELAY, Nagle's algorithm could hold a message back.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = Client(sock, time.perf_counter(), self.round_trips)
        self.clients.append(client)
        result = sock.connect_ex(self.address)
        if result not in (0, errno.EINPROGRESS):
            sock.close()
            self.failed += 1
            return
        self.selector.register(sock, selectors.EVENT_WRITE, client)
        self.active += 1

    def on_event(self, client: Client, events: int) -> None:
        try:
            if events & selectors.EVENT_WRITE:
                self.on_writable(client)
            elif events & selectors.EVENT_READ:
                self.on_readable(client)
        except OSError:
            self.finish(client, failed=True)

    def on_writable(self, client: Client) -> None:
        if not client.connected:
            error = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
            client.connected = True
            self.start_round_trip(client)
        else:
            self.send_unsent(client)

    def start_round_trip(self, client: Client) -> None:
        client.sent_at = time.perf_counter()
        client.unsent = memoryview(self.message)
        self.send_unsent(client)

    def send_unsent(self, client: Client) -> None:
        try:
            client.unsent = client.unsent[client.sock.send(client.unsent) :]
        except BlockingIOError:
            pass
        self.want(client, selectors.EVENT_WRITE if client.unsent else selectors.EVENT_READ)

    def want(self, client: Client, interest: int) -> None:
        if client.interest != interest:
            self.selector.modify(client.sock, interest, client)
            client.interest = interest

    def on_readable(self, client: Client) -> None:
        count = client.sock.recv_into(self.receive_buffer)
        start = client.received
        if count == 0 or self.receive_buffer[:count] != self.message[start : start + count]:
            self.finish(client, failed=True)  # closed early, more bytes than sent, or not our bytes
            return
        client.received += count
        if client.received < len(self.message):
            return
        now = time.perf_counter()
        self.round_trip_times.append(now - client.sent_at)
        if client.first_echo_at is None:
            client.first_echo_at = now
        client.received = 0
        client.rounds_left -= 1
        if client.rounds_left:
            self.start_round_trip(client)
        else:
            self.last_completion = now
            self.finish(client, failed=False)

    def finish(self, client: Client, *, failed: bool) -> None:
        self.selector.unregister(client.sock)
        client.sock.close()
        self.active -= 1
        if failed:
            self.failed += 1
        else:
            self.completed += 1

    def figures(self, elapsed: float) -> RunFigures:
        round_trips = sorted(self.round_trip_times)
        first_echoes = sorted(
            math.inf if client.first_echo_at is None else client.first_echo_at - client.connect_started
            for client in self.clients
        )
        return RunFigures(
            clients=self.client_count,
            served=sum(1 for client in self.clients if client.first_echo_at is not None),
            completed=self.completed,
            failed=self.failed,
            round_trips=len(round_trips),
            elapsed=elapsed,
            round_trips_per_second=len(round_trips) / elapsed if elapsed > 0 else 0.0,
            round_trip_p50=percentile(round_trips, 0.50) if round_trips else None,
            round_trip_p99=percentile(round_trips, 0.99) if round_trips else None,
            first_echo_p50=finite_or_none(percentile(first_echoes, 0.50)),
            first_echo_p99=finite_or_none(percentile(first_echoes, 0.99)),
            first_echo_max=finite_or_none(first_echoes[-1]),
        )


def server_prefix(pinned: bool) -> list[str]:
    return pinned_to(str(SERVER_CPU), []) if pinned else []


def start_server(variant: ServerVariant, pinned: bool) -> PhaseProcess:
    """`[taskset --cpu-list 1] python -m PHASE --host 127.0.0.1 --port 0 OPTIONS`, run from the repo root."""
    return PhaseProcess(variant.package, *variant.options, root=REPO_ROOT, prefix=server_prefix(pinned))


def stop_server(server: PhaseProcess) -> None:
    """Stop the server; raise if it did not exit cleanly."""
    server.stop()
    failure = server.failure()
    if failure is not None:
        raise RuntimeError(f"server {failure}")


def measure(
    variant: ServerVariant, clients: int, *, round_trips: int, message: bytes, deadline: float, pinned: bool
) -> RunFigures:
    """Start a fresh server, run one closed loop against it, reading the CPU time used around it, stop it."""
    server = start_server(variant, pinned)
    try:
        started, machine, client = time.perf_counter(), cpu.machine_cpu_seconds(), time.process_time()
        server_cpu = cpu.tree_cpu_seconds(server.pid)
        figures = ClosedLoop(server.address, clients, round_trips, message).run(deadline)
        return replace(
            figures,
            wall_s=round(time.perf_counter() - started, 3),
            server_cpu_s=round(cpu.tree_cpu_seconds(server.pid) - server_cpu, 3),
            client_cpu_s=round(time.process_time() - client, 3),
            machine_cpu_s=round(cpu.machine_cpu_seconds() - machine, 3),
        )
    finally:
        stop_server(server)


# What `perf stat` counts in the server: tracepoints, so the server runs at full speed while counted (strace
# would stop it at every call, and a slowed server finds the next message already waiting, which hides the
# recv that fails with EAGAIN in edge-triggered mode).
SYSCALL_EVENTS = {
    "epoll_wait": "syscalls:sys_enter_epoll_wait",
    "epoll_ctl": "syscalls:sys_enter_epoll_ctl",
    "accept4": "syscalls:sys_enter_accept4",
    "recvfrom": "syscalls:sys_enter_recvfrom",
    "sendto": "syscalls:sys_enter_sendto",
    "all": "raw_syscalls:sys_enter",
}
EAGAIN_RECV_EVENT = "syscalls:sys_exit_recvfrom"  # counted with the filter ret == -EAGAIN


def perf_command(pid: int, output: str) -> list[str]:
    return [
        "perf", "stat", "-x", ",", "-o", output, "-p", str(pid), "-e", ",".join(SYSCALL_EVENTS.values()),
        "-e", EAGAIN_RECV_EVENT, "--filter", f"ret == -{errno.EAGAIN}",
    ]  # fmt: skip


def wait_until_counting(perf: subprocess.Popen[bytes], pid: int) -> None:
    """Wait until perf has opened its counters on the server (one perf_event descriptor per event)."""
    wanted = len(SYSCALL_EVENTS) + 1
    give_up_at = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < give_up_at and perf.poll() is None:
        fds = Path(f"/proc/{perf.pid}/fd")
        opened = sum(1 for fd in fds.iterdir() if "perf_event" in os.readlink(fd)) if fds.exists() else 0
        if opened >= wanted:
            return
        time.sleep(0.01)
    raise RuntimeError(f"perf stat did not start counting on pid {pid}")


def count_syscalls(
    variant: ServerVariant, clients: int, *, round_trips: int, message: bytes, deadline: float, pinned: bool
) -> dict[str, float]:
    """System calls the server makes per round trip, counted by `perf stat` on syscall tracepoints."""
    with tempfile.NamedTemporaryFile("r") as counts:
        server = start_server(variant, pinned)
        perf = subprocess.Popen(
            perf_command(server.pid, counts.name),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_counting(perf, server.pid)
            figures = ClosedLoop(server.address, clients, round_trips, message).run(deadline)
        finally:
            perf.send_signal(signal.SIGINT)  # perf stops counting and writes its totals
            perf.wait(timeout=SHUTDOWN_TIMEOUT)
            stop_server(server)
        totals = {}
        for line in counts.read().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[0].isdigit():
                totals[fields[2]] = int(fields[0])
    per_round_trip = {
        name: totals[event] / figures.round_trips for name, event in SYSCALL_EVENTS.items() if event in totals
    }
    per_round_trip["recvfrom EAGAIN"] = totals.get(EAGAIN_RECV_EVENT, 0) / figures.round_trips
    return per_round_trip


def median_figures(runs: list[RunFigures]) -> dict[str, float | None]:
    """The median of every figure across runs; a figure some run did not reach (None) counts as infinite."""
    medians: dict[str, float | None] = {}
    for name in asdict(runs[0]):
        if name == "clients":
            continue
        values = [
            math.inf if value is None else float(value) for value in (getattr(run, name) for run in runs)
        ]
        medians[name] = finite_or_none(statistics.median(values))
    return medians


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clients",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 10, 100, 1000],
        help="concurrent clients per cell, comma-separated (default: 1,10,100,1000)",
    )
    parser.add_argument(
        "--round-trips", type=int, default=200, help="per client, at least (default: %(default)s)"
    )
    parser.add_argument(
        "--cell-round-trips",
        type=int,
        default=20_000,
        help="per cell, at least: few clients do more round trips each (default: %(default)s)",
    )
    parser.add_argument("--message-bytes", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="runs per cell; tables show medians (default: 5)")
    parser.add_argument(
        "--deadline", type=float, default=10.0, help="seconds per cell and run (default: %(default)s)"
    )
    add_publishing_options(parser, PUBLISHED_NAME, "make bench-echo")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def pages(contents: dict[str, Any], source: str) -> dict[Path, str]:
        return {DOCS_DIR / name: text for name, text in report.echo_markdown(contents, source).items()}

    command = harness_command("bench.echo", argv)
    return save_and_publish(args, PUBLISHED_NAME, lambda _: measure_everything(args, command), pages)


def measure_everything(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    """Every count and every timed run; returns the report that becomes echo.json."""
    pinned = len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None
    if pinned:
        os.sched_setaffinity(0, {CLIENT_CPU})
    raise_open_file_limit()  # one descriptor per client, and the default soft limit is often 1024
    message = bytes(index % 251 for index in range(args.message_bytes))

    def trips(clients: int) -> int:
        # One client doing 200 round trips is done in milliseconds, and one hiccup of the machine would decide
        # the result: few clients each do more, so that every cell does a comparable amount of work.
        at_least: int = args.round_trips
        per_cell: int = args.cell_round_trips
        return max(at_least, math.ceil(per_cell / clients))

    def cell(clients: int) -> dict[str, Any]:
        return {
            "round_trips": trips(clients),
            "message": message,
            "deadline": args.deadline,
            "pinned": pinned,
        }

    load_at_start = os.getloadavg()
    if load_at_start[0] > 1.0:
        print(f"warning: load average {load_at_start[0]:.2f}: other processes are running; disturbed runs")
        print("will be repeated, but the figures may suffer")

    syscalls: list[dict[str, Any]] = []
    if shutil.which("perf") is not None:
        # A separate, untimed pass: counting costs a little time per call, so it stays out of the timed runs.
        for clients in args.clients:
            for variant in VARIANTS:
                per_round_trip = count_syscalls(variant, clients, **cell(clients))
                syscalls.append({"server": variant.key, "clients": clients, "per_round_trip": per_round_trip})
                print(f"counted system calls: {variant.key:>12} {clients:>5} clients", flush=True)
    else:
        print("perf is not installed (apt-get install linux-perf): no system call counts", file=sys.stderr)
    runs: dict[tuple[str, int], list[RunFigures]] = {}
    discarded: dict[tuple[str, int], list[RunFigures]] = {}
    repeats = cpu.RepeatBudget.for_runs(args.runs * len(args.clients) * len(VARIANTS))
    for run in range(1, args.runs + 1):
        for clients in args.clients:
            # Servers interleaved inside each run: a slow moment of the machine hits all of them alike.
            for variant in VARIANTS:

                def say_again(share: float, key: str = variant.key, clients: int = clients) -> None:
                    print(f"{key} {clients} clients: other processes used {share:.0%} of a core; again")

                figures, disturbed = cpu.quietest_of(
                    partial(measure, variant, clients, **cell(clients)), repeats, say_again
                )
                runs.setdefault((variant.key, clients), []).append(figures)
                discarded.setdefault((variant.key, clients), []).extend(disturbed)
                print(
                    f"run {run}/{args.runs} {variant.key:>12} {clients:>5} clients: "
                    f"{figures.round_trips_per_second:>9,.0f} round trips/s, "
                    f"served {figures.served}/{clients}, failed {figures.failed}",
                    flush=True,
                )
    return document(
        "echo",
        PUBLISHED_NAME,
        command,
        {
            "pinned": pinned,
            "server_cpu": SERVER_CPU if pinned else None,
            "client_cpu": CLIENT_CPU if pinned else None,
            "load_average_at_start": load_at_start,
        },
        {
            "clients": args.clients,
            "round_trips_per_client": {str(clients): trips(clients) for clients in args.clients},
            "message_bytes": args.message_bytes,
            "runs": args.runs,
            "deadline": args.deadline,
            "client": "one selectors loop in the bench process, non-blocking sockets, TCP_NODELAY",
        },
        servers={
            variant.key: {
                "label": variant.label,
                "command": phase_command(variant.package, *variant.options, prefix=server_prefix(pinned)),
            }
            for variant in VARIANTS
        },
        syscalls={"command": perf_command(0, "FILE"), "counts": syscalls},
        results=[
            {
                "server": key,
                "clients": clients,
                "median": median_figures(figures),
                "runs": [asdict(run) for run in figures],
                "discarded_runs": [asdict(run) for run in discarded[key, clients]],
            }
            for (key, clients), figures in runs.items()
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
