"""The bench: every HTTP phase and every peer, under the same wrk scenarios, in one run.

    make bench                                   # everything, with the defaults, published (--publish)
    .venv/bin/python -m bench --targets peers --quick      # a quick look at the peers
    .venv/bin/python -m bench --targets phase3_http_parse,nginx --scenarios keepalive-64 --runs 5
    .venv/bin/python -m bench --workers 2 --server-cpus 2-3     # on 4 cores: every target with 2 workers
    .venv/bin/python -m bench --python /usr/bin/python3.11 --targets phase6_perf,uvicorn --quick

For each scenario, the targets take turns run by run (run 1 of each target, then run 2 of each, ...), so that
a machine whose speed drifts over minutes slows every target alike. Each run: a fresh server pinned to the
server CPUs, a warm-up, then one timed wrk run pinned to the client CPUs, reading the server's CPU time from
/proc around it; before the warm-up, the server must answer every request of the scenario with the bench's
bytes, or it is not measured. Every target runs --workers workers; one that cannot is not measured. A
scenario that asks for more than `GET /` (a parametrized route, a static file the harness writes, a
browser's page load of both) measures only the targets that serve it, and records why the others were not
measured. Then, per target, the memory it needs to hold many idle connections. Prints a summary and writes
the results file. Only with --publish (`make bench`) is that bench/results/latest.json, with the charts
under docs/assets/bench/ and the tables under docs/generated/bench/ redrawn from it: any other run is
exploratory, written to bench/results/exploratory-NAME.json alone, so trying something never overwrites the
published numbers.

Every Python server of a run, ours and the peers alike, runs on one interpreter: this one (the venv's) unless
--python names another. Our phases need the standard library only and run on it directly; the Python peers
need their packages, so they run on a venv of it that the harness makes under .bench-venvs/ (once) and fills
with the bench extra's pins from pyproject.toml. The results file records the interpreter, with its build
(PGO and LTO as far as the interpreter can tell), and the pages say it under "Measured". Which interpreter the
published run uses is one option: `make bench` passes `--python fastest`, the build that
bench/results/interpreters.json names the fastest (`make bench-interpreters`, bench/interpreters.py, measures
phase 6 on every interpreter found here, in one run, and names it). So the choice is measured, not typed into
the Makefile as a path that holds on one machine only, and the pages say which build served and why. On a
machine without that interpreter (or before it was measured), the servers run on this one, and the run says
so; `make bench BENCH_PYTHON=PATH` chooses another.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from shutil import which
from typing import Any

from bench import charts, cpu, idle, report, targets, wrk
from bench.progress import Progress
from bench.results import (
    EXPLORATORY_PREFIX,
    RESULTS_DIR,
    IdleMemory,
    Measurement,
    Results,
    Run,
    SchemaError,
    Settings,
    TargetInfo,
    add_publishing_options,
    harness_command,
    in_repository,
    load,
    machine_facts,
    now,
    read_document,
    result_file_name,
    shown,
    write,
)
from tools.phases import REPO_ROOT, raise_open_file_limit

PUBLISHED_NAME = "latest"  # bench/results/latest.json: the results the docs show
IDLE = "idle"  # the memory test, selectable with --scenarios like the wrk scenarios
SCENARIOS_BY_NAME = {scenario.name: scenario for scenario in wrk.SCENARIOS}
FD_HEADROOM = 1000  # descriptors beyond the idle connections: listening sockets, logs, /proc reads
FASTEST = "fastest"  # --python fastest: the interpreter that bench/interpreters.py found the fastest
INTERPRETERS_RESULTS = RESULTS_DIR / "interpreters.json"  # ...in its published results

# --8<-- [start:defaults]
DEFAULTS = {"runs": 3, "duration": 5, "warmup": 2, "idle_connections": 10_000, "workers": 1}
QUICK = {"runs": 1, "duration": 1, "warmup": 0, "idle_connections": 1_000, "workers": 1}
# --8<-- [end:defaults]


def parse_cpus(text: str) -> set[int]:
    """'1' -> {1}; '0-2,5' -> {0, 1, 2, 5}: the list syntax of taskset and /sys."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--targets",
        default="all",
        help="comma-separated: phase or peer names, or the groups phases, peers, all (default: all);"
        f" peers: {', '.join(peer.name for peer in targets.PEERS)}",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join([*SCENARIOS_BY_NAME, IDLE]),
        help=f"comma-separated, from: {', '.join([*SCENARIOS_BY_NAME, IDLE])} (default: all)",
    )
    for option, what in (
        ("runs", "timed runs per scenario"),
        ("duration", "seconds per run, whole seconds for wrk"),
        ("warmup", "warm-up seconds, 0 for none"),
        ("idle_connections", "connections held open by the memory test"),
        ("workers", "workers every target runs (processes, or threads for hyper)"),
    ):
        parser.add_argument(
            f"--{option.replace('_', '-')}", type=int, help=f"{what} (default {DEFAULTS[option]:,})"
        )
    parser.add_argument(
        "--python",
        metavar="PATH",
        help="the interpreter of every Python server: our phases run on it, the Python peers on a venv of it"
        f" made under .bench-venvs/ (once); `{FASTEST}`: the fastest build in {shown(INTERPRETERS_RESULTS)}"
        f" (make bench-interpreters) (default: this one, {in_repository(sys.executable)})",
    )
    parser.add_argument("--server-cpus", default="1", help="CPUs for the server and its children (default 1)")
    parser.add_argument("--client-cpus", default="0", help="CPUs for wrk and this harness (default 0)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a look, not a measurement: 1 run of 1 s, no warm-up, 1,000 idle connections; never published",
    )
    add_publishing_options(parser, PUBLISHED_NAME, "make bench", exploratory=f"{EXPLORATORY_PREFIX}NAME")
    parser.add_argument(
        "--output-root",
        type=Path,
        default=REPO_ROOT,
        help="write bench/results/, docs/assets/bench/ and docs/generated/bench/ under this directory"
        " (default: the repository)",
    )
    options = parser.parse_args(argv)
    if options.workers is not None and options.workers < 1:
        parser.error("--workers must be at least 1")
    if options.quick and options.publish:
        parser.error("--quick runs are never published: drop --quick or --publish")
    preset = QUICK if options.quick else DEFAULTS
    for key, value in preset.items():
        if getattr(options, key) is None:
            setattr(options, key, value)
    return options


# --------------------------------------------------------------------------------------------- measuring


def schedule(
    chosen: list[targets.Target], scenarios: list[wrk.Scenario], runs: int
) -> list[tuple[wrk.Scenario, int, targets.Target]]:
    """The order of the timed runs: scenario by scenario, run 1 of every target that serves it, then run 2 of
    every one, and so on, so that the machine's drift during a scenario lands on every target alike."""
    return [
        (scenario, number, target)
        for scenario in scenarios
        for number in range(1, runs + 1)
        for target in chosen
        if target.not_served(scenario.needs) is None
    ]


def measure(
    target: targets.Target,
    scenario: wrk.Scenario,
    number: int,
    settings: Settings,
    progress: Progress,
    *,
    scratch: Path,
    static_dir: Path,
    repeats: cpu.RepeatBudget,
) -> Measurement:
    """Run `number` of a target in a scenario: a fresh server, a check of the scenario's answer, a warm-up,
    then one timed run (repeated if other processes disturbed it); any failure is recorded, never raised."""
    label = f"{target.name} | {scenario.name} | run {number}/{settings.runs}"
    progress.step(f"{label} | starting")
    try:
        server = targets.start(target, settings.server_cpus, scratch, static_dir, settings.workers)
    except targets.TargetFailed as error:
        progress.note(f"{label}: {error}")
        return Measurement(target.name, scenario.name, [], [], [], None, str(error))
    timed_command = wrk.command(scenario, server.origin, settings.duration_s, settings.client_cpus)
    runs: list[Run] = []
    discarded: list[Run] = []
    peak_rss: int | None = None
    failure: str | None = None
    try:
        if (wrong := targets.check_answers(server.port, scenario.paths)) is not None:
            raise targets.TargetFailed(f"{target.name}: {wrong}")
        if settings.warmup_s > 0:
            progress.step(f"{label} | warm-up")
            warmup = wrk.command(scenario, server.origin, settings.warmup_s, settings.client_cpus)
            wrk.run(warmup, settings.warmup_s)
        progress.step(label)

        def say_again(share: float) -> None:
            progress.note(f"{label}: other processes used {share:.0%} of a core; again")

        kept, discarded = cpu.quietest_of(
            lambda: timed_run(server, timed_command, settings.duration_s), repeats, say_again
        )
        runs.append(kept)
        peak_rss = cpu.tree_peak_rss_bytes(server.pid)
    except (wrk.WrkError, targets.TargetFailed, OSError, http.client.HTTPException) as error:
        failure = str(error)
        progress.note(f"{label}: {failure}")
    finally:
        server.stop()
    return Measurement(
        target.name, scenario.name, server.command, timed_command, runs, peak_rss, failure, discarded
    )


def combined(earlier: Measurement, later: Measurement) -> Measurement:
    """The runs of one target in one scenario so far, then one more: its runs appended, the highest peak."""
    peaks = [rss for rss in (earlier.peak_rss_bytes, later.peak_rss_bytes) if rss is not None]
    return dataclasses.replace(
        later,
        server_command=later.server_command or earlier.server_command,
        wrk_command=later.wrk_command or earlier.wrk_command,
        runs=earlier.runs + later.runs,
        peak_rss_bytes=max(peaks, default=None),
        discarded_runs=earlier.discarded_runs + later.discarded_runs,
    )


def timed_run(server: targets.RunningTarget, wrk_command: list[str], duration_s: int) -> Run:
    """One wrk run, with the CPU time of the server's tree and of the whole machine read around it."""
    server_before, machine_before = cpu.tree_cpu_seconds(server.pid), cpu.machine_cpu_seconds()
    result, client_cpu_s = wrk.run(wrk_command, duration_s)
    machine_cpu_s = cpu.machine_cpu_seconds() - machine_before
    if (gone := server.exited()) is not None:
        raise targets.TargetFailed(gone)
    server_cpu_s = cpu.tree_cpu_seconds(server.pid) - server_before
    return Run(
        **dataclasses.asdict(result),
        server_cpu_s=round(server_cpu_s, 3),
        client_cpu_s=round(client_cpu_s, 3),
        machine_cpu_s=round(machine_cpu_s, 3),
    )


def measure_idle(
    target: targets.Target, settings: Settings, progress: Progress, scratch: Path, static_dir: Path
) -> IdleMemory:
    count = settings.idle_connections
    progress.step(f"{target.name} | {IDLE} | {count:,} connections")
    try:
        server = targets.start(target, settings.server_cpus, scratch, static_dir, settings.workers)
    except targets.TargetFailed as error:
        progress.note(f"{target.name} | {IDLE}: {error}")
        return IdleMemory(target.name, [], count, 0, 0, 0, 0.0, str(error))
    try:
        outcome = idle.hold_idle_connections(server, count)
    finally:
        server.stop()
    if outcome.failure:
        progress.note(f"{target.name} | {IDLE}: {outcome.failure}")
    return outcome


# --------------------------------------------------------------------------------------------- outputs


def write_docs(results: Results, root: Path, source: Path) -> list[Path]:
    """The published tables and charts under `root`, drawn from `results`, which came from `source`."""
    tables = report.write_markdown(results, root / "docs" / "generated" / "bench", shown(source, root))
    return tables + charts.write_charts(results, root / "docs" / "assets" / "bench")


class UsageError(Exception):
    """A run that cannot start as asked: the message says why."""


@dataclass(frozen=True)
class Plan:
    settings: Settings
    targets: list[targets.Target]
    scenarios: list[wrk.Scenario]
    with_idle: bool
    skipped: dict[str, str]
    # The record of the interpreter the Python targets run on (targets.interpreter_record), if --python named
    # one; None: this one, which host_facts records.
    interpreter: dict[str, Any] | None = None

    @property
    def measured_pairs(self) -> int:
        """The (target, scenario) pairs measured: none where the target does not serve the scenario."""
        return sum(
            target.not_served(scenario.needs) is None
            for target in self.targets
            for scenario in self.scenarios
        )

    @property
    def steps(self) -> int:
        per_run = 2 + (self.settings.warmup_s > 0)  # start, warm-up, timed run
        return self.measured_pairs * self.settings.runs * per_run + len(self.targets) * self.with_idle

    @property
    def seconds(self) -> float:
        """About how long the run will take, repeated runs aside. The constants are timed on this machine:
        half a second per run to start a server and wrk and stop them; for the memory test, 2 s per target (a
        server, and the settling) and a second per 1,250 connections opened (10 s for the default 10,000);
        a second for the harness to start."""
        settings = self.settings
        per_run = settings.warmup_s + settings.duration_s + 0.5
        per_idle_test = 2 + settings.idle_connections / 1250
        return (
            1
            + self.measured_pairs * settings.runs * per_run
            + len(self.targets) * self.with_idle * per_idle_test
        )


def plan(options: argparse.Namespace) -> Plan:
    """Check the machine and the options, and decide what to measure; UsageError if nothing can be."""
    needed = {"wrk": "apt-get install wrk", "taskset": "apt-get install util-linux"}
    if problems := [
        f"{tool} is not installed (Debian: {how})" for tool, how in needed.items() if not which(tool)
    ]:
        raise UsageError("cannot run the bench:\n  " + "\n  ".join(problems))
    server_cpus, client_cpus = parse_cpus(options.server_cpus), parse_cpus(options.client_cpus)
    usable = os.sched_getaffinity(0)
    for role, cpus in (("server", server_cpus), ("client", client_cpus)):
        if not cpus <= usable:
            raise UsageError(f"--{role}-cpus {sorted(cpus)}: this machine offers CPUs {sorted(usable)} only")
    if server_cpus & client_cpus:
        print("note: server and client share CPUs; expect noisy, lower numbers", file=sys.stderr)
    known_scenarios = [*SCENARIOS_BY_NAME, IDLE]
    scenario_names = options.scenarios.split(",")
    if unknown := [name for name in scenario_names if name not in known_scenarios]:
        raise UsageError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known_scenarios)}")
    try:
        chosen = targets.select(options.targets.split(","), targets.discover_phases())
        chosen, interpreter = on_python(options.python, chosen)
    except (ValueError, targets.InterpreterError) as error:
        raise UsageError(str(error)) from error
    skipped: dict[str, str] = {}
    for target in chosen:
        if options.workers > 1 and target.one_process is not None:
            reason: str | None = f"runs one worker, not --workers {options.workers}: {target.one_process}"
        else:
            reason = target.missing()
        if reason is not None:
            print(f"skipping {target.name}: {reason}", file=sys.stderr)
            skipped[target.name] = reason
    if len(skipped) == len(chosen):
        raise UsageError("nothing to measure: every target chosen is skipped")
    settings = Settings(
        runs=options.runs,
        duration_s=options.duration,
        warmup_s=options.warmup,
        server_cpus=options.server_cpus,
        client_cpus=options.client_cpus,
        idle_connections=options.idle_connections,
        workers=options.workers,
        interleaved=True,
    )
    return Plan(
        settings=settings,
        targets=[target for target in chosen if target.name not in skipped],
        scenarios=[SCENARIOS_BY_NAME[name] for name in scenario_names if name != IDLE],
        with_idle=IDLE in scenario_names,
        skipped=skipped,
        interpreter=interpreter,
    )


def on_python(
    asked: str | None, chosen: list[targets.Target]
) -> tuple[list[targets.Target], dict[str, Any] | None]:
    """`chosen`, moved to the interpreter --python asks for, and its record: why it was chosen, if it was,
    and the venv of it that the Python peers run on, if they needed one. Without --python, `chosen` as they
    are (on this interpreter) and no record: host_facts makes it."""
    if asked is None:
        return chosen, None
    python, chosen_as = interpreter_asked(asked)
    interpreter = {**targets.interpreter_record(python), "chosen_as": chosen_as, "peer_venv": None}
    if python != sys.executable:  # the peers' packages: in a venv of it, made (once) if need be
        chosen, interpreter["peer_venv"] = targets.on_interpreter(chosen, python)
    return chosen, interpreter


def interpreter_asked(asked: str) -> tuple[str, str | None]:
    """The interpreter --python names (a path, or a name on PATH; `fastest`: the one the published
    interpreters results name), and why it was chosen, if it was chosen by measurement. UsageError if there is
    none such here."""
    chosen_as = None
    if asked == FASTEST:
        try:
            contents = read_document(INTERPRETERS_RESULTS, "interpreters")
            fastest = contents["fastest"]["executable"]  # relative to the repository if inside it (the venv)
        except (OSError, SchemaError, KeyError, TypeError) as error:
            print(
                f"--python {FASTEST}: {shown(INTERPRETERS_RESULTS)} names no fastest build ({error}):"
                " the servers run on this interpreter (`make bench-interpreters` measures which is fastest)"
            )
            return sys.executable, None
        if which(str(REPO_ROOT / fastest)) is None:  # measured on another machine: not here
            print(
                f"--python {FASTEST}: {fastest}, the fastest build in {shown(INTERPRETERS_RESULTS)}, is not"
                " on this machine: the servers run on this interpreter (BENCH_PYTHON=PATH chooses another)"
            )
            return sys.executable, None
        asked = str(REPO_ROOT / fastest)
        chosen_as = f"the fastest build in {shown(INTERPRETERS_RESULTS)} ({contents['created'][:10]})"
    found = which(asked)
    if found is None:
        raise UsageError(
            f"--python {asked}: no such interpreter here (`python -m bench.interpreters --list` lists them)"
        )
    return os.path.abspath(found), chosen_as


def run(plan: Plan, name: str, command: list[str]) -> Results:
    settings = plan.settings
    created = now()
    started = time.monotonic()
    machine = machine_facts(targets.nginx_path(), targets.HYPER_DIR / "Cargo.lock")
    if plan.interpreter is not None:
        machine["interpreter"] = plan.interpreter
    idle_results: list[IdleMemory] = []
    repeats = cpu.RepeatBudget.for_runs(plan.measured_pairs * settings.runs)
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as scratch,
        tempfile.TemporaryDirectory(prefix="bench-static-") as static,
        Progress(plan.steps) as progress,
    ):
        static_dir = targets.write_static_files(Path(static))  # one directory for every target
        # Per target and scenario: why the target does not serve it, or its runs so far.
        measured = {
            (target.name, scenario.name): Measurement(
                target.name, scenario.name, [], [], [], None, not_served=target.not_served(scenario.needs)
            )
            for target in plan.targets
            for scenario in plan.scenarios
        }
        start_failures: dict[str, str] = {}  # a target that did not start once is not tried again
        for scenario, number, target in schedule(plan.targets, plan.scenarios, settings.runs):
            key = (target.name, scenario.name)
            if target.name in start_failures:
                measured[key] = dataclasses.replace(measured[key], failure=start_failures[target.name])
            elif measured[key].failure is None:  # after a failed run, a measurement takes no more
                this_run = measure(
                    target,
                    scenario,
                    number,
                    settings,
                    progress,
                    scratch=Path(scratch) / target.name,
                    static_dir=static_dir,
                    repeats=repeats,
                )
                measured[key] = combined(measured[key], this_run)
                if not this_run.server_command:
                    start_failures[target.name] = this_run.failure or "did not start"
        for target in plan.targets:
            if not plan.with_idle:
                break
            if (start_failure := start_failures.get(target.name)) is not None:
                count = settings.idle_connections
                idle_results.append(IdleMemory(target.name, [], count, 0, 0, 0, 0.0, start_failure))
            else:
                target_scratch = Path(scratch) / target.name
                idle_results.append(measure_idle(target, settings, progress, target_scratch, static_dir))
    return Results(
        name=name,
        created=created,
        machine=machine,
        settings=settings,
        command=command,
        targets=[TargetInfo(t.name, t.kind, t.description) for t in plan.targets],
        scenarios=plan.scenarios,
        skipped=plan.skipped,
        measurements=list(measured.values()),
        idle=idle_results,
        elapsed_s=round(time.monotonic() - started),
    )


def stop_on_sigterm(signum: int, frame: object) -> None:
    """`kill PID` ends the bench like Ctrl-C does: through the finally blocks that stop the servers."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    options = parse_arguments(argv)
    if options.from_results is not None:
        results = load(options.from_results)
        written = write_docs(results, options.output_root, options.from_results) if options.publish else []
        return summarize(results, written)
    try:
        chosen = plan(options)
    except UsageError as error:
        print(error, file=sys.stderr)
        return 2
    # The harness (and the asyncio client of the memory test) stays off the server's CPUs too.
    os.sched_setaffinity(0, parse_cpus(options.client_cpus))
    wanted_fds = chosen.settings.idle_connections + FD_HEADROOM
    if (fd_limit := raise_open_file_limit(wanted_fds)) < wanted_fds:
        print(f"note: the descriptor limit, {fd_limit}, is low for the memory test", file=sys.stderr)
    print(
        f"measuring {len(chosen.targets)} target(s), {len(chosen.scenarios)} scenario(s)"
        f"{' and the memory test' if chosen.with_idle else ''}: about {report.how_long(chosen.seconds)}",
        file=sys.stderr,
    )
    name = result_file_name(PUBLISHED_NAME, options.name, publish=options.publish)
    results_file = options.output_root / "bench" / "results" / f"{name}.json"
    results = run(chosen, name, harness_command("bench", argv))
    write(results, results_file)
    written = write_docs(results, options.output_root, results_file) if options.publish else []
    return summarize(results, [results_file, *written])


def summarize(results: Results, written: list[Path]) -> int:
    print(report.terminal_summary(results))
    if written:
        print("\nwrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
