"""Phase 6 on every Python interpreter found here, in one run: which build serves it for the least CPU.

    make bench-interpreters                                       # published: bench/results/interpreters.json
    .venv/bin/python -m bench.interpreters --runs 1 --duration 2  # a look: exploratory-interpreters-NAME.json
    .venv/bin/python -m bench.interpreters --list                 # the interpreters and their builds only

The interpreters: this one (the venv's: the reference), each CPython from 3.11 on that pyenv built
(~/.pyenv/versions/), the system's (/usr/bin/python3.X), and any --python adds; an executable already listed
under another name (the venv's python is a link to its pyenv build) is measured once. phase6_perf runs on each
as a target of the HTTP bench (bench/__main__.py), all in one run: one worker pinned as the bench pins it, the
targets taking turns run by run, a disturbed run repeated, the median of the runs with their range, in the
keep-alive, parametrized-route and browser scenarios. Phase 6 needs the standard library only, so no venv is
made. The figure is requests per second of server CPU, and each interpreter's ratio to the venv's, run i over
run i. Each build (PGO, LTO) is what the interpreter records of itself (targets.interpreter_record), "unknown"
where it cannot tell, as Debian's cannot. The page names the fastest build: the highest geometric mean of its
median ratios over the scenarios. `make bench` runs every Python server on it (`--python fastest` reads it
from the published results). The tradeoff: the fastest is named by medians even where the ranges of two
builds overlap; the table gives the ranges, and a close second is as good a choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import bench.__main__ as http_bench
from bench import report, targets
from bench.results import (
    Results,
    Spread,
    add_publishing_options,
    document,
    from_json,
    harness_command,
    in_repository,
    rerun_command,
    save_and_publish,
)
from tools.phases import REPO_ROOT

PUBLISHED_NAME = "interpreters"
TABLE = REPO_ROOT / "docs" / "generated" / "interpreters.md"
PHASE = "phase6_perf"
SCENARIOS = "keepalive-64,route-64,browser"
FIGURE = "requests_per_server_cpu_s"
OLDEST = (3, 11)  # pyproject.toml's requires-python
SYSTEM_PYTHONS = Path("/usr/bin")


# --------------------------------------------------------------------------------------------- finding them


def version_key(text: str) -> tuple[int, ...]:
    """`3.12.1` -> (3, 12, 1), from a pyenv directory's or an executable's name."""
    return tuple(int(number) for number in re.findall(r"\d+", text))


def found_here(extra: list[str]) -> list[str]:
    """This interpreter, then pyenv's CPythons and the system's from 3.11 on, oldest first, then `extra`: each
    executable once, by its real path (the venv's python is a link to its pyenv build)."""
    pyenv = pyenv_root() / "versions"
    builds = [(path, path.parent.parent.name) for path in pyenv.glob("[0-9]*/bin/python3")]
    system = [
        (path, path.name)
        for path in SYSTEM_PYTHONS.glob("python3.*")
        if re.fullmatch(r"python3\.\d+", path.name)
    ]
    candidates = [
        sys.executable,
        *(
            str(path)
            for path, version in sorted(builds + system, key=lambda found: version_key(found[1]))
            if version_key(version)[:2] >= OLDEST
        ),
        *extra,
    ]
    chosen: list[str] = []
    for python in candidates:
        if os.access(python, os.X_OK) and os.path.realpath(python) not in map(os.path.realpath, chosen):
            chosen.append(python)
    return chosen


def pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def label(python: str, record: dict[str, Any]) -> str:
    """A target's name for an interpreter: where it comes from and its version (`pyenv 3.12.1`)."""
    if python == sys.executable:
        origin = "venv"
    elif Path(python).is_relative_to(pyenv_root()):
        origin = "pyenv"
    else:
        origin = str(Path(python).parent)
    return f"{origin} {record['version']}"


def described(pythons: list[str]) -> list[dict[str, Any]]:
    """Each interpreter's record (targets.interpreter_record), with its target's `name`; one that cannot
    describe itself is left out, with the reason."""
    records = []
    for python in pythons:
        try:
            record = targets.interpreter_record(python)
        except targets.InterpreterError as error:
            print(f"skipping {python}: {error}", file=sys.stderr)
            continue
        records.append({"name": label(python, record), **record, "executable": python})
    return records


# --------------------------------------------------------------------------------------------- measuring


def measure_on_each(options: argparse.Namespace, records: list[dict[str, Any]]) -> Results:
    """phase6_perf on each interpreter, as targets of the HTTP bench, in one run of it (as bench.ablation)."""
    phase = next(target for target in targets.discover_phases() if target.name == PHASE)
    variants = [targets.run_on(phase, record["executable"], record["name"]) for record in records]
    bench_argv = ["--targets", PHASE, "--scenarios", options.scenarios, "--runs", str(options.runs)]
    bench_argv += ["--duration", str(options.duration), "--warmup", str(options.warmup)]
    plan = dataclasses.replace(http_bench.plan(http_bench.parse_arguments(bench_argv)), targets=variants)
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, http_bench.parse_cpus(plan.settings.client_cpus))  # off the server's CPUs
    try:
        results = http_bench.run(plan, PUBLISHED_NAME, harness_command("bench.interpreters", options.argv))
    finally:
        os.sched_setaffinity(0, previous)
    # Not one interpreter but several served: the page's table says which, not the one line under "Measured".
    return dataclasses.replace(results, machine={**results.machine, "interpreter": None})


def against_reference(results: Results, name: str) -> list[Spread | None]:
    """Per scenario, `name`'s requests per server CPU-second over the reference's (the first target, this
    interpreter), run i over run i: median, lowest and highest; None where either has no runs."""
    reference = results.targets[0].name
    ratios = []
    for scenario in results.scenarios:
        ours, theirs = results.measurement(name, scenario.name), results.measurement(reference, scenario.name)
        ratios.append(ours.ratio(theirs, FIGURE) if ours and theirs else None)
    return ratios


def scores(results: Results) -> dict[str, float]:
    """Per interpreter measured in every scenario: the geometric mean of its median ratios to the reference's
    (1 for the reference)."""
    scored = {}
    for info in results.targets:
        ratios = against_reference(results, info.name)
        if ratios and all(ratios):
            scored[info.name] = statistics.geometric_mean([ratio.median for ratio in ratios if ratio])
    return scored


def fastest(results: Results, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The record of the interpreter with the highest score, and its score; None if none was measured."""
    scored = scores(results)
    if not scored:
        return None
    best = max(scored, key=lambda name: scored[name])
    record = next(record for record in records if record["name"] == best)
    shown = {key: record[key] for key in ("name", "version", "implementation", "pgo", "lto")}
    # Inside the repository (the venv's), relative to it: `--python fastest` finds it on a reader's clone too.
    return {**shown, "executable": in_repository(record["executable"]), "against_reference": scored[best]}


# --------------------------------------------------------------------------------------------- the page


def ratio_cell(spread: Spread | None) -> str:
    return report.with_range(spread, report.times)


def markdown(contents: dict[str, Any], source: str) -> str:
    results = from_json(contents["http"])
    records = {record["name"]: record for record in contents["interpreters"]}
    scored = scores(results)
    names = sorted(records, key=lambda name: -scored.get(name, 0.0))  # fastest first; unmeasured last
    reference = records[results.targets[0].name]
    scenario_names = [scenario.name for scenario in results.scenarios]
    ratio_rows, figure_rows = [], []
    for name in names:
        record = records[name]
        shown = f"`{in_repository(record['executable'])}`"
        build = [record["version"], record["pgo"], record["lto"]]
        measured = [results.measurement(name, scenario) for scenario in scenario_names]
        failures = [m.failure for m in measured if m is not None and m.failure and not m.runs]
        if failures:
            ratio_rows.append([shown, *build, f"failed: {' '.join(failures[0].split())[:160]}"])
            ratio_rows[-1] += [""] * (len(scenario_names) - 1)
            continue
        ratio_rows.append([shown, *build, *(ratio_cell(ratio) for ratio in against_reference(results, name))])
        figures = [report.with_range(m.spread(FIGURE) if m else None, report.si) for m in measured]
        figure_rows.append([shown, *figures])
    best = contents["fastest"]
    reference_shown = f"`{in_repository(reference['executable'])}` (CPython {reference['version']}"
    if reference["real_executable"] != reference["executable"]:  # the venv's: its pyenv build, in truth
        reference_shown += f", a link to `{reference['real_executable']}`, measured once"
    reference_shown += ")"
    lines = [
        f"<!-- Generated by bench/interpreters.py from {source}. Do not edit by hand. -->",
        "",
        f"{PHASE}, one worker, on each Python interpreter found on the machine, in one run. Requests per"
        f" second of server CPU against {reference_shown}, this repository's venv, run i over run i: the"
        " median of the ratios (lowest to highest); above 1, the interpreter serves a request for less CPU."
        " PGO and LTO as the interpreter records its build (its sysconfig): configure's"
        " --enable-optimizations and --with-lto.",
        "",
        *report.markdown_table(
            ["interpreter", "version", "PGO", "LTO", *scenario_names],
            ratio_rows,
            ["---", "---", "---", "---", *["--:"] * len(scenario_names)],
        ),
        "",
        "Requests per server CPU-second, median of runs (lowest to highest):",
        "",
        *report.markdown_table(
            ["interpreter", *scenario_names], figure_rows, ["---", *["--:"] * len(scenario_names)]
        ),
        "",
    ]
    if best is not None:
        lines += [
            f"Fastest: `{best['executable']}`, {best['implementation']} {best['version']} (PGO {best['pgo']},"
            f" LTO {best['lto']}), {report.times(best['against_reference'])} the reference: the geometric"
            " mean of its median ratios over the scenarios. `make bench` runs every Python server on it"
            " (`--python fastest`).",
            "",
        ]
    unknown = [records[name] for name in names if "unknown" in (records[name]["pgo"], records[name]["lto"])]
    lines += [f"- `{in_repository(record['executable'])}`: {record['build_source']}." for record in unknown]
    lines += ["", report.conditions(results)] if unknown else [report.conditions(results)]
    lines.append(f"Raw figures: `{source}`; rerun: `{rerun_command(contents, 'make bench-interpreters')}`.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- the command


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m bench.interpreters", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--runs", type=int, default=5, help="timed runs per interpreter (default: %(default)s)"
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds (default: %(default)s)")
    parser.add_argument("--scenarios", default=SCENARIOS, help="comma-separated (default: %(default)s)")
    parser.add_argument(
        "--python", action="append", default=[], metavar="PATH", help="another interpreter to compare"
    )
    parser.add_argument("--list", action="store_true", help="list the interpreters and their builds; no run")
    add_publishing_options(parser, PUBLISHED_NAME, "make bench-interpreters")
    options = parser.parse_args(argv)
    options.argv = sys.argv[1:] if argv is None else argv
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    records = described(found_here(options.python)) if options.from_results is None else []
    if options.list:
        for record in records:
            print(f"{record['name']}: {record['executable']}, PGO {record['pgo']}, LTO {record['lto']}")
            print(f"    {record['build_source']}; CONFIG_ARGS {record['sysconfig']['CONFIG_ARGS']}")
        return 0

    def measure(results_file: Path) -> dict[str, Any]:
        results = measure_on_each(options, records)
        settings = {"runs": options.runs, "duration_s": options.duration, "warmup_s": options.warmup}
        command = harness_command("bench.interpreters", options.argv)
        return document(
            PUBLISHED_NAME,
            PUBLISHED_NAME,
            command,
            {},
            settings,
            interpreters=records,
            fastest=fastest(results, records),
            http=results.to_json(),
        )

    try:
        return save_and_publish(
            options, PUBLISHED_NAME, measure, lambda contents, source: {TABLE: markdown(contents, source)}
        )
    except http_bench.UsageError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
