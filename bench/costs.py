"""Where a request's CPU time goes: the kernel or the interpreter, and which system calls it makes.

    make bench-costs                                             # published: bench/results/costs.json
    .venv/bin/python -m bench.costs --duration 2 --runs 1        # a quick look: exploratory-costs-NAME.json

For nginx, phases 5, 6 and 7 and the floor, one worker pinned as the bench pins it, in the keep-alive,
pipelined and churn (one request per connection) scenarios: the server's CPU time per request split into user
time (the server's own code: for our phases, the interpreter running our Python) and system time (the
kernel: the system calls and the TCP stack under them), read from /proc around a wrk run; then, once per
target and scenario, every system call the server makes, counted by `strace -c` attached to it, per request.
As in the bench, the targets take turns run by run, each run on a fresh server after a warm-up, a run that
other processes disturbed is repeated, and the table shows the median of the runs with their range.
The tradeoff: strace stops the server at every system call, so its run is slow and measures counts only,
never time; the split comes from the timed runs, made without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import cpu, targets, wrk
from bench.report import EN_DASH, markdown_table
from bench.results import add_publishing_options, document, harness_command, measured_on, save_and_publish
from tools.phases import REPO_ROOT

PUBLISHED_NAME = "costs"
TABLE = REPO_ROOT / "docs" / "generated" / "costs.md"
TARGETS = ("nginx", "phase5_concurrency", "phase6_perf", "phase7_io_uring", "floor")
SCENARIOS = ("keepalive-64", "pipeline-16", "close")
SERVER_CPUS, CLIENT_CPUS = "1", "0"
SHOWN_CALLS = 9  # the most frequent system calls, by name; the rest are summed
SHOWN_PER = 100  # ...if each is made at least once per this many requests


def serving_process(server: targets.RunningTarget) -> psutil.Process:
    """The process that serves: the worker of a supervisor, else the server itself (one worker)."""
    root = psutil.Process(server.pid)
    return next(iter(root.children(recursive=True)), root)


def cpu_split(process: psutil.Process) -> tuple[float, float]:
    times = process.cpu_times()
    return times.user, times.system


def strace_counts(pid: int, seconds: int, load: list[str]) -> tuple[dict[str, int], int]:
    """System calls made by `pid` while `load` (a wrk command) runs for `seconds`: by name, and requests."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as output:
        tracer = subprocess.Popen(
            ["strace", "-c", "-f", "-p", str(pid), "-o", output.name], stderr=subprocess.DEVNULL
        )
        time.sleep(0.5)  # attached before the load starts
        result, _ = wrk.run(load, seconds)
        tracer.send_signal(signal.SIGINT)  # detach: strace then writes its table
        tracer.wait(timeout=10)
        counts = {}
        for line in output.read().splitlines():
            fields = line.split()
            # "% time  seconds  usecs/call  calls  [errors]  syscall": a row ends with the call's name
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                counts[fields[-1]] = int(fields[3])
    return counts, result.requests


@dataclass(frozen=True)
class Split:
    """One timed run: the serving process's user and system CPU per request, and how busy the rest was."""

    requests: int
    user_us_per_request: float
    system_us_per_request: float
    other_cpu_share: float  # of a core, used by neither the server's tree nor wrk: a high one is repeated


def timed_split(server: targets.RunningTarget, load: list[str], seconds: int) -> Split:
    process = serving_process(server)
    (user_before, system_before), tree_before = cpu_split(process), cpu.tree_cpu_seconds(server.pid)
    machine_before = cpu.machine_cpu_seconds()
    result, client_cpu_s = wrk.run(load, seconds)
    machine_cpu_s = cpu.machine_cpu_seconds() - machine_before
    (user_after, system_after), tree_after = cpu_split(process), cpu.tree_cpu_seconds(server.pid)
    requests = max(result.requests, 1)
    other = max(0.0, machine_cpu_s - (tree_after - tree_before) - client_cpu_s) / result.duration_s
    return Split(
        result.requests,
        (user_after - user_before) * 1e6 / requests,
        (system_after - system_before) * 1e6 / requests,
        round(other, 3),
    )


def measure_one(
    target: targets.Target,
    scenario: wrk.Scenario,
    seconds: int,
    scratch: Path,
    *,
    count_calls: bool,
    repeats: cpu.RepeatBudget,
) -> tuple[Split, list[Split], tuple[dict[str, int], int] | None]:
    """One timed run of a target in a scenario, on a fresh server (repeated while disturbed); with
    `count_calls`, then a strace run on the same server: its calls by name, and the requests wrk counted."""
    server = targets.start(target, SERVER_CPUS, scratch, scratch)
    try:
        load = wrk.command(scenario, server.origin, seconds, CLIENT_CPUS)
        wrk.run(wrk.command(scenario, server.origin, 1, CLIENT_CPUS), 1)  # warm-up

        def say_again(share: float) -> None:
            print(f"{target.name} {scenario.name}: other processes used {share:.0%} of a core; again")

        kept, discarded = cpu.quietest_of(lambda: timed_split(server, load, seconds), repeats, say_again)
        traced = strace_counts(serving_process(server).pid, seconds, load) if count_calls else None
    finally:
        server.stop()
    return kept, discarded, traced


def empty_row(target: str, scenario: str) -> dict[str, Any]:
    """A target's row in one scenario, before any run: the medians are filled in run by run."""
    return {"target": target, "scenario": scenario, "requests": 0, "runs": [], "discarded_runs": []}


def add_run(
    row: dict[str, Any], kept: Split, discarded: list[Split], traced: tuple[dict[str, int], int] | None
) -> None:
    """One more timed run in a row: its figures, and the row's medians (and its system calls, if counted)."""
    row["runs"].append(dataclasses.asdict(kept))
    row["discarded_runs"] += [dataclasses.asdict(split) for split in discarded]
    row["requests"] += kept.requests
    for figure in ("user_us_per_request", "system_us_per_request"):
        row[figure] = statistics.median(run[figure] for run in row["runs"])
    if traced is not None:
        row["calls"], row["traced_requests"] = traced


def available_targets() -> dict[str, targets.Target]:
    """The TARGETS that can run here, by name; each of the others is skipped, with the reason."""
    known = {target.name: target for target in [*targets.discover_phases(), *targets.PEERS]}
    chosen = {}
    for name in TARGETS:
        if (reason := known[name].missing()) is not None:
            print(f"skipping {name}: {reason}", file=sys.stderr)
        else:
            chosen[name] = known[name]
    return chosen


def median_and_range(values: list[float]) -> str:
    """The median of the runs and, if there are several, their lowest and highest, as the bench shows them."""
    if len(values) == 1:
        return f"{values[0]:.1f} µs"
    low, high = min(values), max(values)
    return f"{statistics.median(values):.1f} µs ({low:.1f}{EN_DASH}{high:.1f})"


def run_summary(split: Split) -> str:
    """One timed run, for the progress lines: its user and system CPU per request as the table shows them."""
    user, system = (
        median_and_range([figure]) for figure in (split.user_us_per_request, split.system_us_per_request)
    )
    return f"user CPU {user}, system CPU {system} per request ({split.requests:,} requests)"


def per_request(calls: float) -> str:
    """Calls per request, with two significant digits below 0.01 (an io_uring loop makes that few)."""
    return f"{calls:.2f}" if calls >= 0.01 or calls == 0 else f"{calls:.2g}"


def markdown(contents: dict[str, Any], source: str) -> str:
    settings = contents["settings"]
    lines = [
        f"<!-- Generated by bench/costs.py from {source}. Do not edit by hand. -->",
        "",
        f"Median of {settings['runs']} run(s) of {settings['duration_s']} s (lowest to highest), the targets",
        "taking turns run by run; one worker on CPU 1, wrk on CPU 0. User and system time from /proc, in",
        "runs without strace; system calls from `strace -c` in one more run, per request that wrk counted",
        "in it.",
        measured_on(contents, "make bench-costs"),
    ]
    for scenario in SCENARIOS:
        rows = []
        for row in (row for row in contents["rows"] if row["scenario"] == scenario):
            requests = max(row["traced_requests"], 1)
            ranked = sorted(row["calls"].items(), key=lambda item: -item[1])
            # By name, those made at least once per SHOWN_PER requests; the rest summed.
            named = [(name, count) for name, count in ranked[:SHOWN_CALLS] if count * SHOWN_PER >= requests]
            shown = [f"{name} {per_request(count / requests)}" for name, count in named]
            if rest := sum(count for _, count in ranked[len(named) :]) / requests:
                shown.append(f"others {per_request(rest)}")
            rows.append(
                [
                    row["target"],
                    median_and_range([run["user_us_per_request"] for run in row["runs"]]),
                    median_and_range([run["system_us_per_request"] for run in row["runs"]]),
                    per_request(sum(row["calls"].values()) / requests),
                    ", ".join(shown),
                ]
            )
        title = next(s.title for s in wrk.SCENARIOS if s.name == scenario)
        header = [
            "server",
            "user CPU per request",
            "system CPU per request",
            "system calls per request",
            "of which",
        ]
        lines += [
            "",
            f"#### {title[0].upper()}{title[1:]}",
            "",
            *markdown_table(header, rows, ["---", "--:", "--:", "--:", "---"]),
        ]
    return "\n".join(lines) + "\n"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m bench.costs", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per run (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per target (default: %(default)s)")
    add_publishing_options(parser, PUBLISHED_NAME, "make bench-costs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    if shutil.which("strace") is None:
        print("cannot measure system calls: strace is not installed (Debian: apt-get install strace)")
        return 2

    def measure(results_file: Path) -> dict[str, Any]:
        previous = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {int(CLIENT_CPUS)})  # the harness stays off the server's CPU
        chosen = available_targets()
        scenarios = {scenario.name: scenario for scenario in wrk.SCENARIOS}
        rows = {(name, scenario): empty_row(name, scenario) for scenario in SCENARIOS for name in chosen}
        repeats = cpu.RepeatBudget.for_runs(len(rows) * options.runs)
        with tempfile.TemporaryDirectory(prefix="bench-costs-") as scratch:
            try:
                # Run by run, every target in turn: the machine's drift lands on all of them alike.
                for scenario, number, name in itertools.product(SCENARIOS, range(options.runs), chosen):
                    kept, discarded, traced = measure_one(
                        chosen[name],
                        scenarios[scenario],
                        options.duration,
                        Path(scratch) / name,
                        count_calls=number == 0,
                        repeats=repeats,
                    )
                    add_run(rows[name, scenario], kept, discarded, traced)
                    print(
                        f"{scenario} run {number + 1}/{options.runs} {name}: {run_summary(kept)}", flush=True
                    )
            finally:
                os.sched_setaffinity(0, previous)
        command = harness_command("bench.costs", argv)
        settings = {"duration_s": options.duration, "runs": options.runs}
        return document(PUBLISHED_NAME, PUBLISHED_NAME, command, {}, settings, rows=list(rows.values()))

    return save_and_publish(
        options, PUBLISHED_NAME, measure, lambda contents, source: {TABLE: markdown(contents, source)}
    )


if __name__ == "__main__":
    sys.exit(main())
