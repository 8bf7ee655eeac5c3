"""The echo chapters' benchmark: many clients at once, each timing its own round trips, on phases 1 and 2.

    python -m bench.echo        # `make bench-echo`: the full run, a few minutes
    python -m bench.echo --clients 1,10 --cell-round-trips 200 --runs 1 --json /tmp/e.json --docs-dir /tmp/e

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

Writes bench/results/echo.json (every run's figures, the machine, the commands) and the Markdown tables that
the chapters include, under docs/generated/echo/.
"""

from __future__ import annotations

import argparse
import errno
import json
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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.results import host_facts
from tools.phases import REPO_ROOT, PhaseProcess, phase_command, raise_open_file_limit
from tools.phases import pinned as pinned_to

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


def server_command(variant: ServerVariant, pinned: bool) -> list[str]:
    """`[taskset --cpu-list 1] python -m PHASE --host 127.0.0.1 --port 0 OPTIONS`, run from the repo root."""
    return phase_command(variant.package, *variant.options, prefix=server_pinning(pinned))


def server_pinning(pinned: bool) -> list[str]:
    return pinned_to(str(SERVER_CPU), []) if pinned else []


def start_server(variant: ServerVariant, pinned: bool) -> PhaseProcess:
    """A phase started as a subprocess on a free port, pinned to SERVER_CPU."""
    return PhaseProcess(variant.package, *variant.options, root=REPO_ROOT, prefix=server_pinning(pinned))


def stop_server(server: PhaseProcess) -> None:
    """Stop the server; raise if it did not exit cleanly."""
    server.stop()
    failure = server.failure()
    if failure is not None:
        raise RuntimeError(f"server {failure}")


def measure(
    variant: ServerVariant, clients: int, *, round_trips: int, message: bytes, deadline: float, pinned: bool
) -> RunFigures:
    """Start a fresh server, run one closed loop against it, stop it."""
    server = start_server(variant, pinned)
    try:
        return ClosedLoop(server.address, clients, round_trips, message).run(deadline)
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
    events = ",".join(SYSCALL_EVENTS.values())
    eagain_filter = f"ret == -{errno.EAGAIN}"
    return [
        "perf",
        "stat",
        "-x",
        ",",
        "-o",
        output,
        "-p",
        str(pid),
        "-e",
        events,
        "-e",
        EAGAIN_RECV_EVENT,
        "--filter",
        eagain_filter,
    ]


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


def round_trips_per_client(clients: int, *, at_least: int, per_cell: int) -> int:
    # One client doing 200 round trips is done in milliseconds, and one hiccup of the machine would decide the
    # result: few clients each do more, so that every cell does a comparable amount of work.
    return max(at_least, math.ceil(per_cell / clients))


def pin_client(pinned: bool) -> None:
    if pinned:
        os.sched_setaffinity(0, {CLIENT_CPU})
    raise_open_file_limit()  # one descriptor per client, and the default soft limit is often 1024


def machine_facts(pinned: bool) -> dict[str, Any]:
    host = host_facts()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": host["cpu_model"],
        "cpus": host["cores"],  # echo.json's name for it, which its tables read
        "kernel": host["kernel"],
        "python": host["python"],
        "pinned": pinned,
        "server_cpu": SERVER_CPU if pinned else None,
        "client_cpu": CLIENT_CPU if pinned else None,
    }


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


# Formatting: every number in the docs goes through these.


def duration(seconds: float | None, deadline: float) -> str:
    if seconds is None:
        return f"> {deadline:g} s"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def rate(per_second: float | None) -> str:
    return "0" if per_second is None else f"{per_second:,.0f}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def trips_note(method: dict[str, Any]) -> str:
    """E.g. `20,000 (1 client), 2,000 (10 clients), 200 (100 clients)`."""
    per_client = method["round_trips_per_client"]
    return ", ".join(
        f"{per_client[str(clients)]:,} ({plural(clients, 'client')})" for clients in method["clients"]
    )


def method_note(report: dict[str, Any]) -> str:
    method, machine = report["method"], report["machine"]
    pinning = (
        f"Server pinned to CPU {machine['server_cpu']}, clients to CPU {machine['client_cpu']}"
        if machine["pinned"]
        else "Not pinned (fewer than 2 CPUs, or no taskset)"
    )
    return (
        f"_Median of {plural(method['runs'], 'run')}. Round trips of {method['message_bytes']} bytes per "
        f"client: {trips_note(method)}; deadline {method['deadline']:g} s per run. {pinning}; "
        f"{machine['cpus']} x {machine['cpu_model']}, Linux {machine['kernel']}, Python {machine['python']}, "
        f"{machine['date']}, load average {machine['load_average_before']:.2f} before the run. "
        "Raw figures: `bench/results/echo.json`; rerun: `make bench-echo`._"
    )


def cell(report: dict[str, Any], key: str, clients: int) -> dict[str, Any] | None:
    for result in report["results"]:
        if result["server"] == key and result["clients"] == clients:
            found: dict[str, Any] = result
            return found
    return None


def phase_table(report: dict[str, Any]) -> str:
    deadline = report["method"]["deadline"]
    rows = [
        "| clients | server | served | round trips/s | round trip p50 | round trip p99 "
        "| first echo p50 | first echo p99 | last first echo |",
        "|--:|:--|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for clients in report["method"]["clients"]:
        for variant in VARIANTS[:2]:
            result = cell(report, variant.key, clients)
            if result is None:
                continue
            median = result["median"]
            rows.append(
                f"| {clients} | {variant.label} | {median['served']:g}/{clients} "
                f"| {rate(median['round_trips_per_second'])} "
                f"| {duration(median['round_trip_p50'], deadline)} "
                f"| {duration(median['round_trip_p99'], deadline)} "
                f"| {duration(median['first_echo_p50'], deadline)} "
                f"| {duration(median['first_echo_p99'], deadline)} "
                f"| {duration(median['first_echo_max'], deadline)} |"
            )
    return "\n".join(rows)


def phase_summary(report: dict[str, Any]) -> str:
    """One generated sentence per client count: who waited longest for a first echo, on each server."""
    deadline = report["method"]["deadline"]
    sentences = []
    for clients in report["method"]["clients"]:
        blocking, nonblocking = cell(report, "phase1", clients), cell(report, "phase2-level", clients)
        if clients == 1 or blocking is None or nonblocking is None:
            continue
        sentences.append(
            f"- {plural(clients, 'client')}: the last to be served waited "
            f"{duration(blocking['median']['first_echo_max'], deadline)} for its first echo from phase 1, "
            f"{duration(nonblocking['median']['first_echo_max'], deadline)} from phase 2."
        )
    return "\n".join(sentences)


def trigger_table(report: dict[str, Any]) -> str:
    deadline = report["method"]["deadline"]
    rows = [
        "| clients | trigger | round trips/s | lowest to highest run | round trip p50 | round trip p99 |",
        "|--:|:--|--:|--:|--:|--:|",
    ]
    for clients in report["method"]["clients"]:
        for variant in VARIANTS[1:]:
            result = cell(report, variant.key, clients)
            if result is None:
                continue
            median, runs = result["median"], result["runs"]
            throughputs = [run["round_trips_per_second"] for run in runs]
            rows.append(
                f"| {clients} | {variant.options[-1]} | {rate(median['round_trips_per_second'])} "
                f"| {rate(min(throughputs))} to {rate(max(throughputs))} "
                f"| {duration(median['round_trip_p50'], deadline)} "
                f"| {duration(median['round_trip_p99'], deadline)} |"
            )
    return "\n".join(rows)


def trigger_summary(report: dict[str, Any]) -> str:
    """One generated sentence per client count: edge against level, and whether the runs' ranges overlap."""
    sentences = []
    for clients in report["method"]["clients"]:
        level, edge = cell(report, "phase2-level", clients), cell(report, "phase2-edge", clients)
        if level is None or edge is None:
            continue
        level_runs = [run["round_trips_per_second"] for run in level["runs"]]
        edge_runs = [run["round_trips_per_second"] for run in edge["runs"]]
        change = edge["median"]["round_trips_per_second"] / level["median"]["round_trips_per_second"] - 1
        overlap = max(min(level_runs), min(edge_runs)) <= min(max(level_runs), max(edge_runs))
        verdict = (
            "the two ranges of runs overlap: no difference this benchmark can tell apart from noise"
            if overlap
            else "the two ranges of runs do not overlap"
        )
        sentences.append(
            f"- {plural(clients, 'client')}: edge-triggered served {abs(change):.1%} "
            f"{'more' if change >= 0 else 'fewer'} round trips per second than level-triggered; {verdict}."
        )
    return "\n".join(sentences)


def syscall_table(report: dict[str, Any]) -> str:
    """System calls per round trip for every (clients, server) cell: where each server spends its calls."""
    names = [*(name for name in SYSCALL_EVENTS if name != "all"), "recvfrom EAGAIN", "all"]
    labels = {variant.key: variant.label for variant in VARIANTS}
    rows = [
        "| clients | server | " + " | ".join(f"`{name}`" for name in names) + " |",
        "|--:|:--|" + "--:|" * len(names),
    ]
    for count in report["syscalls"]["counts"]:
        figures = " | ".join(f"{count['per_round_trip'].get(name, 0.0):.2f}" for name in names)
        rows.append(f"| {count['clients']} | {labels[count['server']]} | {figures} |")
    method = report["method"]
    note = (
        "_System calls the server made per round trip, in one counted run per cell (not the timed runs): "
        "`perf stat` on the kernel's syscall tracepoints, attached to the server pid; `recvfrom EAGAIN` "
        "counts the reads that found nothing, `all` every system call. Round trips of "
        f"{method['message_bytes']} bytes per client: {trips_note(method)}. "
        f"{report['machine']['date']}; rerun: `make bench-echo`._"
    )
    return "\n".join(rows) + "\n\n" + note + "\n"


def write_docs(report: dict[str, Any], docs_dir: Path) -> list[Path]:
    docs_dir.mkdir(parents=True, exist_ok=True)
    note = method_note(report)
    outputs = {
        docs_dir / "phase1_vs_phase2.md": f"{phase_table(report)}\n\n{phase_summary(report)}\n\n{note}\n",
        docs_dir / "trigger_modes.md": f"{trigger_table(report)}\n\n{trigger_summary(report)}\n\n{note}\n",
    }
    outputs[docs_dir / "syscalls.md"] = (
        syscall_table(report)
        if report["syscalls"]["counts"]
        else "_Not measured: `perf` was not installed when `make bench-echo` last ran._\n"
    )
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
    return list(outputs)


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
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="measure nothing: rewrite the Markdown tables from the existing --json file",
    )
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "bench" / "results" / "echo.json")
    parser.add_argument("--docs-dir", type=Path, default=REPO_ROOT / "docs" / "generated" / "echo")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tables_only:
        report = json.loads(args.json.read_text(encoding="utf-8"))
    else:
        report = measure_everything(args, argv if argv is not None else sys.argv[1:])
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    for path in write_docs(report, args.docs_dir):
        print(f"wrote {path}")
    return 0


def measure_everything(args: argparse.Namespace, arguments: list[str]) -> dict[str, Any]:
    """Every count and every timed run; returns the report that becomes echo.json."""
    pinned = len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None
    pin_client(pinned)
    message = bytes(index % 251 for index in range(args.message_bytes))

    def trips(clients: int) -> int:
        return round_trips_per_client(clients, at_least=args.round_trips, per_cell=args.cell_round_trips)

    load_before = os.getloadavg()[0]
    if load_before > 1.0:
        print(f"warning: load average {load_before:.2f}: something else is running, figures will suffer")

    syscalls: list[dict[str, Any]] = []
    if shutil.which("perf") is not None:
        # A separate, untimed pass: counting costs a little time per call, so it stays out of the timed runs.
        for clients in args.clients:
            for variant in VARIANTS:
                per_round_trip = count_syscalls(
                    variant,
                    clients,
                    round_trips=trips(clients),
                    message=message,
                    deadline=args.deadline,
                    pinned=pinned,
                )
                syscalls.append({"server": variant.key, "clients": clients, "per_round_trip": per_round_trip})
                print(f"counted system calls: {variant.key:>12} {clients:>5} clients", flush=True)
    else:
        print("perf is not installed (apt-get install linux-perf): no system call counts", file=sys.stderr)
    runs: dict[tuple[str, int], list[RunFigures]] = {}
    for run in range(1, args.runs + 1):
        for clients in args.clients:
            # Servers interleaved inside each run: a slow moment of the machine hits all of them alike.
            for variant in VARIANTS:
                figures = measure(
                    variant,
                    clients,
                    round_trips=trips(clients),
                    message=message,
                    deadline=args.deadline,
                    pinned=pinned,
                )
                runs.setdefault((variant.key, clients), []).append(figures)
                print(
                    f"run {run}/{args.runs} {variant.key:>12} {clients:>5} clients: "
                    f"{figures.round_trips_per_second:>9,.0f} round trips/s, "
                    f"served {figures.served}/{clients}, failed {figures.failed}",
                    flush=True,
                )
    report: dict[str, Any] = {
        "generated_by": "python -m bench.echo " + " ".join(arguments),
        "machine": {**machine_facts(pinned), "load_average_before": load_before},
        "method": {
            "clients": args.clients,
            "round_trips_per_client": {str(clients): trips(clients) for clients in args.clients},
            "message_bytes": args.message_bytes,
            "runs": args.runs,
            "deadline": args.deadline,
            "client": "one selectors loop in the bench process, non-blocking sockets, TCP_NODELAY",
        },
        "servers": {
            variant.key: {"label": variant.label, "command": server_command(variant, pinned)}
            for variant in VARIANTS
        },
        "syscalls": {"command": perf_command(0, "FILE"), "counts": syscalls},
        "results": [
            {
                "server": key,
                "clients": clients,
                "median": median_figures(figures),
                "runs": [asdict(run) for run in figures],
            }
            for (key, clients), figures in runs.items()
        ],
    }
    return report


if __name__ == "__main__":
    sys.exit(main())
