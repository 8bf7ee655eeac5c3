"""Worker processes measured, per model: the cost and spread of requests, kill -9, SIGTERM and SIGHUP.

Phase 5's workers (or a later phase's, with --phase), measured: what a request costs the server and how that
work spreads across the workers, per model; what kill -9, SIGTERM and SIGHUP cost clients under load; and the
trap the supervisor avoids.

    .venv/bin/python -m bench.workers --publish               # bench/results/workers.json, docs/generated/
    .venv/bin/python -m bench.workers --runs 1 --duration 1   # a quick look: exploratory-workers-NAME.json

This machine has 2 cores and the server and wrk share them (`--server-cpus` and `--client-cpus` both default
to every CPU we may use), so requests per second cannot show multi-core scaling. What carries to more cores is
measured instead: the server's CPU time per request (its whole process tree, psutil) and each worker's share
of it (per child process; per thread for `threads`). From that cost, the tables project what 8 cores would
serve, labelled as projected, and give the command that measures it on a machine that has them. The
resilience runs act on a 2-worker server under wrk load and read its `supervisor:` log as it is written; the
trap needs no server, only two SO_REUSEPORT listeners. The tradeoff: event times come from polling that log
every 10 ms, so they are good to 10 ms, which is enough for events that take hundreds.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import cpu, wrk
from bench.report import markdown_table
from bench.results import Run, add_publishing_options, document, harness_command, save_and_publish
from tools.phases import HOST, REPO_ROOT, PhaseProcess, pinned, raise_open_file_limit

PUBLISHED_NAME = "workers"  # bench/results/workers.json: the results the docs show
TABLE = REPO_ROOT / "docs" / "generated" / "workers.md"
PHASE = "phase5_concurrency"
MODELS = ("reuseport", "shared", "threads")
RESILIENCE_MODELS = ("reuseport", "shared")  # a thread cannot be killed on its own
RESILIENCE_WORKERS = 2
KEEPALIVE, CHURN = (next(s for s in wrk.SCENARIOS if s.name == name) for name in ("keepalive-64", "close"))
PROJECTED_CORES = 8
BIGGER_MACHINE = "--server-cpus 0-7 --client-cpus 8-15 --workers 1,2,4,8 --wrk-threads 8"
TRAP_CLIENTS = 100
LOG_POLL_S = 0.01
EVENT_TIMEOUT_S = 30.0
LOAD_CEILING_S = 300  # wrk's --duration in the resilience runs, which stop it with SIGINT long before
ALL_CPUS = ",".join(str(number) for number in sorted(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class WorkerRun(Run):
    """A timed run, plus each worker's CPU seconds during it: how evenly the clients were spread."""

    worker_cpu_s: list[float]

    def worker_shares(self) -> list[float]:
        total = sum(self.worker_cpu_s)
        return [seconds / total for seconds in self.worker_cpu_s] if total > 0 else []


# ------------------------------------------------------------------------------------------------ models


def start_server(phase: str, model: str, workers: int, cpus: str) -> PhaseProcess:
    options = ("--workers", str(workers), "--model", model)
    return PhaseProcess(phase, *options, root=REPO_ROOT, prefix=pinned(cpus, ()))


def load(
    scenario: wrk.Scenario, server: PhaseProcess, seconds: int, options: argparse.Namespace
) -> list[str]:
    """bench/wrk.py's command with --wrk-threads threads: one wrk thread cannot load eight workers."""
    command = wrk.command(scenario, f"http://{HOST}:{server.port}", seconds, options.client_cpus)
    command[command.index("--threads") + 1] = str(options.wrk_threads)
    return command


def worker_cpu_seconds(server: PhaseProcess, model: str) -> dict[int, float]:
    """Each worker's CPU seconds so far: the supervisor's children, or for `threads` its threads but the main
    one (psutil reads /proc/PID/task/TID/stat)."""
    supervisor = psutil.Process(server.pid)
    if model == "threads":
        return {t.id: t.user_time + t.system_time for t in supervisor.threads() if t.id != server.pid}
    return {child.pid: sum(child.cpu_times()[:2]) for child in supervisor.children()}  # user + system


def timed_run(server: PhaseProcess, model: str, command: list[str], seconds: int) -> WorkerRun:
    workers_before = worker_cpu_seconds(server, model)
    server_before, machine_before = cpu.tree_cpu_seconds(server.pid), cpu.machine_cpu_seconds()
    result, client_cpu_s = wrk.run(command, seconds)
    machine_cpu_s = cpu.machine_cpu_seconds() - machine_before
    server_cpu_s = cpu.tree_cpu_seconds(server.pid) - server_before
    workers_after = worker_cpu_seconds(server, model)
    return WorkerRun(
        **dataclasses.asdict(result),
        server_cpu_s=round(server_cpu_s, 3),
        client_cpu_s=round(client_cpu_s, 3),
        machine_cpu_s=round(machine_cpu_s, 3),
        worker_cpu_s=[round(workers_after[pid] - before, 3) for pid, before in workers_before.items()],
    )


def stopped(server: PhaseProcess) -> None:
    server.stop()
    if (failure := server.failure()) is not None:
        raise RuntimeError(f"{' '.join(server.command)} {failure}")


def measure_model(
    model: str, workers: int, options: argparse.Namespace, budget: cpu.RepeatBudget
) -> dict[str, Any]:
    """A fresh server, a warm-up, then the runs; a run disturbed by other processes is repeated."""
    server = start_server(options.phase, model, workers, options.server_cpus)
    command = load(KEEPALIVE, server, options.duration, options)
    runs: list[WorkerRun] = []
    discarded: list[WorkerRun] = []
    try:
        if options.warmup > 0:
            wrk.run(load(KEEPALIVE, server, options.warmup, options), options.warmup)
        for number in range(1, options.runs + 1):
            print(f"{model}, {workers} worker(s): run {number}/{options.runs}", flush=True)
            kept, disturbed = cpu.quietest_of(
                lambda: timed_run(server, model, command, options.duration),
                budget,
                lambda share: print(f"  other processes used {share:.0%} of a core: again", flush=True),
            )
            runs.append(kept)
            discarded += disturbed
    finally:
        stopped(server)
    return {
        "model": model,
        "workers": workers,
        "server_command": server.command,
        "wrk_command": command,
        "runs": [dataclasses.asdict(run) for run in runs],
        "discarded_runs": [dataclasses.asdict(run) for run in discarded],
    }


# -------------------------------------------------------------------------------------------- resilience


class SupervisorLog:
    """The supervisor's stderr as it is written. PhaseProcess sends it to an unnamed temporary file, which
    /proc/PID/fd/2 opens anew, with a read offset of its own: the server's writes are not disturbed."""

    def __init__(self, pid: int) -> None:
        self.file = open(f"/proc/{pid}/fd/2", "rb")  # noqa: SIM115  # closed by resilience_run
        self.partial = b""

    def new_lines(self) -> list[bytes]:
        *lines, self.partial = (self.partial + self.file.read()).split(b"\n")
        return lines

    def wait_for(self, pattern: bytes) -> None:
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in self.new_lines()):
                return
            time.sleep(LOG_POLL_S)
        raise RuntimeError(f"the supervisor did not log {pattern!r} within {EVENT_TIMEOUT_S} s")


def kill_a_worker(server: PhaseProcess, log: SupervisorLog) -> dict[str, Any]:
    worker = psutil.Process(server.pid).children()[0]
    log.new_lines()  # from now on, the only worker to log `ready` is the replacement
    killed = time.monotonic()
    worker.kill()
    log.wait_for(rb": ready$")
    return {"replacement_ready_s": round(time.monotonic() - killed, 3)}


def terminate(server: PhaseProcess, log: SupervisorLog) -> dict[str, Any]:
    sent = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    status = server.process.wait(timeout=EVENT_TIMEOUT_S)
    return {"exit_s": round(time.monotonic() - sent, 3), "exit_status": status}


def restart_twice(server: PhaseProcess, log: SupervisorLog) -> dict[str, Any]:
    before = {child.pid for child in psutil.Process(server.pid).children()}
    restart_s = []
    for _ in range(2):
        log.new_lines()
        sent = time.monotonic()
        server.process.send_signal(signal.SIGHUP)
        log.wait_for(rb"rolling restart done")
        restart_s.append(round(time.monotonic() - sent, 3))
    after = {child.pid for child in psutil.Process(server.pid).children()}
    return {"restart_s": restart_s, "worker_pids_all_new": not before & after}


# Each resilience run: what is done to the server mid-load, and the load it is done under.
EVENTS: dict[str, tuple[Callable[[PhaseProcess, SupervisorLog], dict[str, Any]], wrk.Scenario]] = {
    "kill -9 one worker": (kill_a_worker, KEEPALIVE),
    "SIGTERM": (terminate, KEEPALIVE),
    "SIGHUP twice": (restart_twice, CHURN),
}


def resilience_run(model: str, event: str, options: argparse.Namespace) -> dict[str, Any]:
    """wrk for half of --duration, the event (until it is over), wrk for the other half unless the server
    has exited, then SIGINT: wrk stops and reports, as on Ctrl-C."""
    act, scenario = EVENTS[event]
    print(f"{model}: {event}", flush=True)
    server = start_server(options.phase, model, RESILIENCE_WORKERS, options.server_cpus)
    log = SupervisorLog(server.pid)
    command = load(scenario, server, LOAD_CEILING_S, options)
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(options.duration / 2)
        figures = act(server, log)
        if server.process.poll() is None:
            time.sleep(options.duration / 2)
        client.send_signal(signal.SIGINT)
        result = wrk.parse_output(client.communicate(timeout=EVENT_TIMEOUT_S)[0])
    finally:
        client.kill()  # nothing, if it has exited
        client.wait()
        log.file.close()
        stopped(server)
    return {
        "model": model,
        "event": event,
        "server_command": server.command,
        "wrk_command": command,
        "requests": result.requests,
        "duration_s": result.duration_s,
        "errors": result.errors,
        **figures,
    }


# --------------------------------------------------------------------------------------------- the trap


def accept_all(listener: socket.socket) -> int:
    accepted = 0
    while True:
        try:
            listener.accept()[0].close()
        except BlockingIOError:
            return accepted
        accepted += 1


def was_reset(client: socket.socket) -> bool:
    client.setblocking(False)
    try:
        client.recv(1)
    except BlockingIOError:  # still connected, waiting for an answer
        return False
    except ConnectionResetError:
        return True
    return False


def close_one_listener(*, kept_open: bool) -> dict[str, int]:
    """Two workers' listeners on one port, TRAP_CLIENTS clients queued on them while both workers are busy;
    then one worker closes its listener. Kept open: another descriptor of the socket is held, as the
    supervisor holds one, so its queue waits for the next worker of that slot (here: accepted from it)."""
    listeners: list[socket.socket] = []
    for _ in range(2):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((HOST, listeners[0].getsockname()[1] if listeners else 0))
        listener.listen(TRAP_CLIENTS)
        listener.setblocking(False)
        listeners.append(listener)
    clients = [socket.create_connection(listeners[0].getsockname(), timeout=5) for _ in range(TRAP_CLIENTS)]
    held = listeners[0].dup() if kept_open else None
    listeners[0].close()
    time.sleep(0.1)  # close() sends the resets; this is only a margin for their delivery
    reset = sum(was_reset(client) for client in clients)
    accepted = accept_all(listeners[1]) + (accept_all(held) if held else 0)
    for sock in (*clients, listeners[1], *([held] if held else [])):
        sock.close()
    return {"clients": TRAP_CLIENTS, "reset": reset, "accepted": accepted}


def trap() -> dict[str, Any]:
    print("the trap: closing one of two SO_REUSEPORT listeners", flush=True)
    migrate = Path("/proc/sys/net/ipv4/tcp_migrate_req")  # Linux 5.14 and later
    return {
        "tcp_migrate_req": int(migrate.read_text()) if migrate.exists() else None,
        "naive": close_one_listener(kept_open=False),
        "kept_open": close_one_listener(kept_open=True),
    }


# ------------------------------------------------------------------------------------------------ output

Figure = Callable[[WorkerRun], float | None]
MODEL_COLUMNS: dict[str, tuple[Figure, str]] = {
    "req/s": (lambda run: run.requests_per_s, "{:,.0f}"),
    "server CPU per req": (lambda run: run.server_cpu_us_per_request, "{:.1f} µs"),
    "req per server CPU-second": (lambda run: run.requests_per_server_cpu_s, "{:,.0f}"),
    "server CPU": (lambda run: run.server_cpu_share, "{:.0%}"),
    "wrk CPU": (lambda run: run.client_cpu_share, "{:.0%}"),
    "p99": (lambda run: run.latency_us["p99"] / 1000, "{:.2f} ms"),
    "errors": (lambda run: run.error_count, "{:,.0f}"),
    "least busy worker": (lambda run: min(run.worker_shares(), default=None), "{:.0%}"),
    "busiest worker": (lambda run: max(run.worker_shares(), default=None), "{:.0%}"),
}
ERROR_KINDS = ("connect", "read", "write", "timeout", "status")


def median(runs: list[WorkerRun], figure: Figure, form: str) -> str:
    values = [value for run in runs if (value := figure(run)) is not None]
    return form.format(statistics.median(values)) if values else "—"


def projection(measured: dict[str, Any]) -> list[str]:
    """PROJECTED_CORES times the requests per server CPU-second one measurement gave, and the cores wrk would
    need for that load at the CPU per request it used there."""
    runs = [WorkerRun(**raw) for raw in measured["runs"]]
    cells = [
        measured["model"],
        str(measured["workers"]),
        median(runs, *MODEL_COLUMNS["req per server CPU-second"]),
    ]
    if measured["model"] == "threads":  # one GIL: a second core runs no more Python
        return [*cells, "not projected: one GIL", "—"]
    projected = PROJECTED_CORES * statistics.median(run.requests_per_server_cpu_s or 0 for run in runs)
    wrk_cores = projected * statistics.median(run.client_cpu_s / run.requests for run in runs)
    return [*cells, f"{projected:,.0f}", f"{wrk_cores:.1f}"]


def outcome(row: dict[str, Any]) -> str:
    if "replacement_ready_s" in row:
        return f"replacement ready {row['replacement_ready_s'] * 1000:.0f} ms after the kill"
    if "exit_status" in row:
        return f"exit status {row['exit_status']}, {row['exit_s']:.2f} s after the signal"
    restarts = " and ".join(f"{seconds:.2f} s" for seconds in row["restart_s"])
    return f"restarts took {restarts}; worker pids all new: {'yes' if row['worker_pids_all_new'] else 'no'}"


def bigger_machine_command(phase: str) -> str:
    """The command that measures `phase` on a machine with 16 CPUs, as a reader would type it: with --phase,
    so that it measures the phase the page shows, whatever the default is."""
    return f".venv/bin/python -m bench.workers --phase {phase} {BIGGER_MACHINE}"


def section(
    name: str, title: str, prose: str, header: list[str], rows: list[list[str]], *, align: str
) -> str:
    """A heading with the anchor #workers-NAME, a paragraph and a table (`align`: an l or an r per column),
    between snippet markers: a chapter includes all of the file, or one section (`workers.md:NAME`)."""
    table = markdown_table(header, rows, [{"l": "---", "r": "--:"}[side] for side in align])
    heading = f"### {title} {{#workers-{name}}}"
    start, end = f"<!-- --8<-- [start:{name}] -->", f"<!-- --8<-- [end:{name}] -->"
    return "\n".join([start, heading, "", prose, "", *table, end])


def markdown(contents: dict[str, Any], source: str) -> str:
    """docs/generated/workers.md: the models, the projection, the resilience runs, the trap."""
    machine, settings, trapped = contents["machine"], contents["settings"], contents["trap"]
    phase = settings.get("phase", PHASE)  # older files measured the default
    repeated = sum(len(measured["discarded_runs"]) for measured in contents["models"])
    models = section(
        "models",
        "The models: server CPU per request, and its spread across workers",
        f"{phase}, measured {contents['created'][:10]} on {machine['cpu_model']}"
        f" ({machine['cores']} cores), Linux "
        f"{machine['kernel']}, Python {machine['python']}: the server on CPUs {settings['server_cpus']}, wrk "
        f"({settings['wrk_threads']} thread(s)) on CPUs {settings['client_cpus']}. Where they share cores, "
        "req/s is what the cores give both, and the server's CPU per request is the figure that carries to "
        f"more cores. Keep-alive `GET /`, {KEEPALIVE.connections} connections, a fresh server per row; each "
        f"figure is the median of {settings['runs']} run(s) of {settings['duration_s']} s after a "
        f"{settings['warmup_s']} s warm-up; {repeated} run(s) disturbed by other processes were repeated. "
        "The last two columns: the least and the most busy worker's share of the workers' CPU time (per "
        "process, or per thread for `threads`).",
        ["model", "workers", *MODEL_COLUMNS],
        [
            [m["model"], str(m["workers"])]
            + [median([WorkerRun(**raw) for raw in m["runs"]], *column) for column in MODEL_COLUMNS.values()]
            for m in contents["models"]
        ],
        align="lr" + "r" * len(MODEL_COLUMNS),
    )
    projected = section(
        "projection",
        f"Projected, not measured: {PROJECTED_CORES} workers on {PROJECTED_CORES} cores",
        f"{PROJECTED_CORES} times the requests per server CPU-second each measurement above gave. From the "
        "1-worker cost, this assumes that a request costs each of the workers what it cost the one; the "
        "costs with more workers include what sharing these cores with each other and with wrk added. Both "
        "assume that the kernel spreads the clients evenly and a client fast enough: the last column is the "
        "cores wrk would need for that load, at the CPU per request it used here. To measure it instead, on "
        f"a machine with 16 CPUs: `{bigger_machine_command(phase)}`.",
        [
            "model",
            "cost measured with workers",
            "req per server CPU-second",
            "projected: req/s",
            "projected: wrk cores",
        ],
        [
            projection(m)
            for m in contents["models"]
            if m["runs"] and (m["model"] != "threads" or m["workers"] == 1)
        ],
        align="lrrrr",
    )
    resilience = section(
        "resilience",
        "Kill, drain, restart under load",
        f"{RESILIENCE_WORKERS} workers under wrk, {KEEPALIVE.connections} connections (keep-alive; for the "
        "restarts, `Connection: close`, a new connection per request): half of --duration before the event, "
        "half after unless the server has exited, then wrk is stopped. Times are read from the supervisor's "
        f"log, polled every {LOG_POLL_S * 1000:.0f} ms. The errors are wrk's, by kind; after SIGTERM, "
        "connect and write errors are wrk reconnecting to a port that no longer listens, until it stops.",
        ["model", "event", "requests", *ERROR_KINDS, "outcome"],
        [
            [row["model"], row["event"], f"{row['requests']:,}"]
            + [str(row["errors"][kind]) for kind in ERROR_KINDS]
            + [outcome(row)]
            for row in contents["resilience"]
        ],
        align="llrrrrrrl",
    )
    trap = section(
        "trap",
        "The trap: closing one SO_REUSEPORT listener",
        f"Two listeners on one port, as two workers hold them (`--model reuseport`), and {TRAP_CLIENTS} "
        "clients connected and queued on them while nobody accepts; then one listener is closed, as a worker "
        "closes it when it drains. If that is its last descriptor, the kernel resets the clients still "
        "queued on it. If another descriptor of the socket is kept open (the supervisor keeps one), they "
        f"wait for the next worker. `/proc/sys/net/ipv4/tcp_migrate_req` was {trapped['tcp_migrate_req']} "
        "(None: absent, before Linux 5.14; at 1, Linux moves the clients to another listener instead).",
        ["one listener closed", "clients queued", "reset", "accepted afterwards"],
        [
            [label, *(str(trapped[key][count]) for count in ("clients", "reset", "accepted"))]
            for label, key in (("its last descriptor", "naive"), ("one of two descriptors", "kept_open"))
        ],
        align="lrrr",
    )
    note = f"<!-- Generated by bench/workers.py from {source}. Do not edit by hand. -->"
    return "\n\n".join([note, models, projected, resilience, trap]) + "\n"


# ---------------------------------------------------------------------------------------------- command


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m bench.workers", description=__doc__.splitlines()[0]
    )
    option = parser.add_argument
    option("--phase", default=PHASE, help="the phase measured, phase 5 or later (default: %(default)s)")
    option("--runs", type=int, default=3, help="runs per model and worker count (default: %(default)s)")
    option("--duration", type=int, default=5, help="seconds per run (default: %(default)s)")
    option("--warmup", type=int, default=1, help="seconds of warm-up per server (default: %(default)s)")
    option("--workers", default="1,2", help="the worker counts to measure (default: %(default)s)")
    option("--server-cpus", default=ALL_CPUS, help="taskset's list for the server (default: %(default)s)")
    option("--client-cpus", default=ALL_CPUS, help="taskset's list for wrk (default: %(default)s)")
    option("--wrk-threads", type=int, default=1, help="wrk's threads (default: %(default)s)")
    add_publishing_options(parser, PUBLISHED_NAME, ".venv/bin/python -m bench.workers --publish")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)

    def measure(results_file: Path) -> dict[str, Any]:
        started = time.monotonic()
        raise_open_file_limit()
        counts = [int(count) for count in options.workers.split(",")]
        budget = cpu.RepeatBudget.for_runs(len(MODELS) * len(counts) * options.runs)
        models = [measure_model(model, count, options, budget) for model in MODELS for count in counts]
        resilience = [
            resilience_run(model, event, options) for model in RESILIENCE_MODELS for event in EVENTS
        ]
        figures = {"models": models, "resilience": resilience, "trap": trap()}
        settings = {
            "phase": options.phase,
            "runs": options.runs,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "workers": counts,
            "server_cpus": options.server_cpus,
            "client_cpus": options.client_cpus,
            "wrk_threads": options.wrk_threads,
        }
        command = harness_command("bench.workers", argv)
        contents = document(PUBLISHED_NAME, PUBLISHED_NAME, command, {}, settings, **figures)
        return {**contents, "elapsed_s": round(time.monotonic() - started, 1)}

    return save_and_publish(
        options, PUBLISHED_NAME, measure, lambda contents, source: {TABLE: markdown(contents, source)}
    )


if __name__ == "__main__":
    sys.exit(main())
