"""Chapter 6's ablation: phase 6 with each of its switchable optimisations turned off in turn.

    make bench-ablation                                          # published: bench/results/ablation.json
    .venv/bin/python -m bench.ablation --runs 1 --duration 2     # a quick look: exploratory-ablation-NAME

Every variant is a target of the HTTP bench (bench/__main__.py), measured in one run with the targets taking
turns run by run: phase 5 (before the chapter), phase 6 with every switch off (the chapter's changes that
have no switch), phase 6 without each optimisation in turn, phase 6 as it ships, and phase 6 with
`--gc-freeze`, an option left off. One worker, pinned as the bench pins it, in the keep-alive, pipelined,
churn (`Connection: close`) and 64 KiB file scenarios, then the memory held by 10,000 idle connections.
Pinning each worker to a CPU (`--pin`, the other option left off) matters only with several workers, so it
has its own run: 2 workers over every CPU, wrk beside them, with and without it.
Five runs per variant by default, not the bench's three: the changes measured are smaller than the whole
bench's differences (some 25 minutes in all). The tradeoff: still one session on a noisy machine; each
change is given with its range run by run, and a change whose range spans 0% is one this run cannot tell
from noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

import bench.__main__ as http_bench
from bench import charts, report, targets
from bench.results import (
    Measurement,
    Results,
    add_publishing_options,
    document,
    from_json,
    harness_command,
    save_and_publish,
)
from tools.phases import REPO_ROOT

PUBLISHED_NAME = "ablation"
TABLE = REPO_ROOT / "docs" / "generated" / "ablation.md"
CHART = REPO_ROOT / "docs" / "assets" / "ablation.svg"
PHASE, BEFORE = "phase6_perf", "phase5_concurrency"
# phase6_perf/__main__.py's OPTIMISATIONS, each turned off in turn.
ONE_WORKER_SWITCHES = (
    "shared_buffer",
    "cached_responses",
    "inherited_nodelay",
    "quick_close",
    "file_head_more",
)
PINNED = f"{PHASE} --pin"
EVERY_SWITCH_OFF = f"{PHASE} without every switch"
FROZEN = f"{PHASE} --gc-freeze"
# Where the switches act: every request (keep-alive, pipelined), a connection per request (close), a file.
ONE_WORKER_SCENARIOS = ("keepalive-64", "pipeline-16", "close", "static-64k", "idle")
ALL_CPUS = ",".join(str(number) for number in sorted(os.sched_getaffinity(0)))


def variant(base: targets.Target, name: str, extra: list[str]) -> targets.Target:
    """`base` started with the options `extra`, under the name `name`."""

    def command(port: int, scratch: Path, static_dir: Path, workers: int) -> list[str]:
        return [*base.command(port, scratch, static_dir, workers), *extra]

    return dataclasses.replace(
        base, name=name, description=f"{base.description} {' '.join(extra)}", command=command
    )


def measure_plan(
    options: argparse.Namespace, bench_argv: list[str], variants: list[targets.Target]
) -> Results:
    """The HTTP bench's plan for `bench_argv`, with `variants` as its targets, run."""
    plan = http_bench.plan(http_bench.parse_arguments([*bench_argv, "--targets", PHASE]))
    plan = dataclasses.replace(plan, targets=variants)
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, http_bench.parse_cpus(plan.settings.client_cpus))  # off the server's CPUs
    try:
        return http_bench.run(plan, PUBLISHED_NAME, harness_command("bench.ablation", options.argv))
    finally:
        os.sched_setaffinity(0, previous)


def one_worker_variants() -> list[targets.Target]:
    phases = {target.name: target for target in targets.discover_phases()}
    whole = phases[PHASE]
    return [
        phases[BEFORE],
        variant(whole, EVERY_SWITCH_OFF, without(*ONE_WORKER_SWITCHES)),
        *(variant(whole, f"{PHASE} without {switch}", without(switch)) for switch in ONE_WORKER_SWITCHES),
        whole,
        variant(whole, FROZEN, ["--gc-freeze"]),
    ]


def without(*switches: str) -> list[str]:
    return [argument for switch in switches for argument in ("--without", switch)]


def pinning_variants() -> list[targets.Target]:
    whole = next(target for target in targets.discover_phases() if target.name == PHASE)
    return [whole, variant(whole, PINNED, ["--pin"])]


# --------------------------------------------------------------------------------------------- the page


def change_against_whole(results: Results, measurement: Measurement) -> str:
    """Server CPU per request against phase 6 as it ships, run i with run i: median change (lowest to
    highest)."""
    whole = results.measurement(PHASE, measurement.scenario)
    paired = measurement.ratio(whole, "server_cpu_us_per_request") if whole else None
    if paired is None or measurement.target == PHASE:
        return "—"
    low, middle, high = ((ratio - 1) * 100 for ratio in (paired.low, paired.median, paired.high))
    return f"{middle:+.1f}% ({low:+.1f}% to {high:+.1f}%)"


def scenario_rows(results: Results, scenario: str, pipelined: bool) -> list[list[str]]:
    rows = []
    for info in results.targets:
        measurement = results.measurement(info.name, scenario)
        if measurement is None:
            continue
        cost = measurement.spread("server_cpu_us_per_request")
        p99 = measurement.spread("p99_us") if not pipelined else None  # wrk times a batch as one request
        rows.append(
            [
                info.name,
                report.with_range(cost, report.microseconds),
                change_against_whole(results, measurement),
                report.median_only(p99, report.microseconds),
                report.median_only(measurement.spread("requests_per_s"), report.si),
            ]
        )
    return rows


HEADER = ["variant", "server CPU per request", "against phase6_perf", "p99", "req/s"]
ALIGN = ["---", "--:", "--:", "--:", "--:"]


def results_section(results: Results) -> list[str]:
    lines = [report.conditions(results), ""]
    for scenario in results.scenarios:
        lines += [f"#### {scenario.title}", ""]
        rows = scenario_rows(results, scenario.name, scenario.pipeline_depth > 1)
        lines += report.markdown_table(HEADER, rows, ALIGN)
        lines.append("")
    if results.idle:
        names = [info.name for info in results.targets]
        lines += ["#### Memory per idle keep-alive connection", "", *report.idle_table(results, names), ""]
    return lines


def markdown(contents: dict[str, Any], source: str) -> str:
    one_worker, pinning = (from_json(contents[key]) for key in ("one_worker", "pinning"))
    lines = [
        f"<!-- Generated by bench/ablation.py from {source}. Do not edit by hand. -->",
        "",
        "Server CPU per request: median of runs (lowest to highest run). The change against phase6_perf (as",
        "it ships) pairs run i of a variant with run i of phase6_perf: its median, then its range; a range",
        "that spans 0% is one this run cannot tell from noise. p99 is not given for pipelined runs: wrk",
        "times a batch of 16 requests as one.",
        "",
        "### One worker",
        "",
        *results_section(one_worker),
        "### Pinning (`--pin`): 2 workers",
        "",
        *results_section(pinning),
    ]
    return "\n".join(lines).rstrip() + "\n"


def draw(contents: dict[str, Any]) -> list[Path]:
    """A panel per scenario: a bar per variant, its median server CPU per request; whiskers: the range."""
    results = from_json(contents["one_worker"])
    figure, axes = plt.subplots(1, len(results.scenarios), figsize=(9, 3.2), squeeze=False)
    names = [info.name for info in results.targets]
    for axis, scenario in zip(axes[0], results.scenarios, strict=True):
        spreads = [
            m.spread("server_cpu_us_per_request") if (m := results.measurement(name, scenario.name)) else None
            for name in names
        ]
        medians = [spread.median if spread else 0.0 for spread in spreads]
        errors = [
            [spread.median - spread.low if spread else 0.0 for spread in spreads],
            [spread.high - spread.median if spread else 0.0 for spread in spreads],
        ]
        axis.barh(range(len(names)), medians, xerr=errors, color=charts.PHASE_COLOUR, capsize=3)
        axis.set_yticks(range(len(names)), names if axis is axes[0][0] else [""] * len(names))
        axis.invert_yaxis()
        axis.set_title(scenario.title, fontsize=9)
        axis.set_xlabel("server CPU per request (µs)")
    figure.tight_layout()
    CHART.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(CHART, metadata={"Date": None})
    plt.close(figure)
    return [CHART]


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m bench.ablation", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant (default: %(default)s)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds (default: %(default)s)")
    parser.add_argument(
        "--idle-connections", type=int, default=10_000, help="for the memory test (default: %(default)s)"
    )
    add_publishing_options(parser, PUBLISHED_NAME, "make bench-ablation")
    options = parser.parse_args(argv)
    options.argv = sys.argv[1:] if argv is None else argv
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    common = [
        "--runs",
        str(options.runs),
        "--duration",
        str(options.duration),
        "--warmup",
        str(options.warmup),
    ]

    every_cpu = ["--server-cpus", ALL_CPUS, "--client-cpus", ALL_CPUS]

    def measure(results_file: Path) -> dict[str, Any]:
        one_worker = measure_plan(
            options,
            [
                *common,
                "--scenarios",
                ",".join(ONE_WORKER_SCENARIOS),
                "--idle-connections",
                str(options.idle_connections),
            ],
            one_worker_variants(),
        )
        pinning = measure_plan(
            options,
            [*common, "--scenarios", "keepalive-64", "--workers", "2", *every_cpu],
            pinning_variants(),
        )
        command = harness_command("bench.ablation", options.argv)
        settings = {"runs": options.runs, "duration_s": options.duration, "warmup_s": options.warmup}
        return document(
            PUBLISHED_NAME,
            PUBLISHED_NAME,
            command,
            {},
            settings,
            one_worker=one_worker.to_json(),
            pinning=pinning.to_json(),
        )

    return save_and_publish(
        options, PUBLISHED_NAME, measure, lambda contents, source: {TABLE: markdown(contents, source)}, draw
    )


if __name__ == "__main__":
    sys.exit(main())
