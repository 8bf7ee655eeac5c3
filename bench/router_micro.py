"""Microbenchmark of a phase's router: nanoseconds per lookup, for our trie and the ways other routers match.

    make bench-router                                   # the newest phase with a router.py, published
    taskset -c 1 .venv/bin/python -m bench.router_micro --phase phase4_routing   # exploratory

With --publish (`make bench-router`) it writes bench/results/router_micro.json, docs/generated/router_micro.md
and docs/assets/router_micro.svg; otherwise bench/results/exploratory-router_micro-NAME.json alone. Four
routers get the same routes and the same paths: our segment trie (router.py); a dict of exact paths, which
only static routes can use; a list of compiled regular expressions tried in order, which is how Starlette and
Django match; and werkzeug's `Map`, Flask's router (since werkzeug 2.2 a state machine over segments, so a
trie's cousin). Each runs at 10, 100 and 1,000 routes, static (`/api/section3/page13`) and parametrized
(`/api/section3/page13/{id:int}`), on hits spread evenly over the table (a list's cost depends on where the
route sits in it) and on misses that share a route's prefix. Before anything is timed, every router must give
the same answer for every path, so all four do the same job. Times are medians of several repeats of timeit,
per lookup, and include the cost of calling a Python function in a loop, which the table states. The
tradeoff: a microbenchmark runs in a hot cache with no request around it; the server chapter's wrk runs say
what the router costs in a real server.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display: chosen before pyplot is imported

import matplotlib.pyplot as plt
import werkzeug.exceptions
import werkzeug.routing

from bench.micro import REPEATS, TARGET_SECONDS, add_phase_option, seconds_per_call
from bench.report import markdown_table
from bench.results import add_publishing_options, document, harness_command, measured_on, save_and_publish
from tools.phases import REPO_ROOT

PUBLISHED_NAME = "router_micro"  # bench/results/router_micro.json: the results the docs show
TABLE = REPO_ROOT / "docs" / "generated" / "router_micro.md"
CHART = REPO_ROOT / "docs" / "assets" / "router_micro.svg"
ROUTE_COUNTS = (10, 100, 1000)
SAMPLES = 10  # hits and misses looked up per timed call, spread evenly over the table
ROUTERS = ("trie (ours)", "dict of exact paths", "regex list (Starlette, Django)", "werkzeug Map (Flask)")
TABLES = ("static", "parametrized")
OUTCOMES = ("hit", "miss")

# Same results in, same chart out: matplotlib otherwise draws random ids into an SVG.
matplotlib.rcParams.update({"svg.hashsalt": "router_micro", "font.size": 9})

Lookup = Callable[[str], object]  # a path in, the router's answer out (a hit, or a miss of its own kind)
Answer = tuple[str, dict[str, Any]] | None  # the answer in common form: (handler, params), or None for a miss


# ------------------------------------------------------------------------------------------- the routes


def patterns(table: str, count: int) -> list[str]:
    """`count` patterns in our syntax, under 10 sections that share the prefix /api, as an API's routes do."""
    suffix = "/{id:int}" if table == "parametrized" else ""
    return [f"/api/section{index % 10}/page{index}{suffix}" for index in range(count)]


def sample_paths(table: str, count: int, outcome: str) -> list[tuple[str, Answer]]:
    """SAMPLES paths spread evenly over the table, each with the answer every router must give."""
    paths: list[tuple[str, Answer]] = []
    for sample in range(SAMPLES):
        index = (2 * sample + 1) * count // (2 * SAMPLES)
        page = f"/api/section{index % 10}/page{index}"
        if table == "static":
            hit: tuple[str, Answer] = (page, (f"page{index}", {}))
            miss: tuple[str, Answer] = (f"/api/section{index % 10}/missing", None)
        else:
            hit = (f"{page}/{index + 1000}", (f"page{index}", {"id": index + 1000}))
            miss = (f"{page}/abc", None)  # the typed parameter does not match
        paths.append(hit if outcome == "hit" else miss)
    return paths


# ---------------------------------------------------------------------------------------------- routers


def trie_router(router: ModuleType, table: str, count: int) -> tuple[Lookup, Callable[[object], Answer]]:
    """Ours: router.py's Router, as the application uses it."""
    routes = router.Router()
    for index, pattern in enumerate(patterns(table, count)):
        routes.add("GET", pattern, f"page{index}")

    def answer(result: object) -> Answer:
        return (result.handler, result.params) if isinstance(result, router.Found) else None

    return functools.partial(routes.lookup, "GET"), answer


def dict_router(table: str, count: int) -> tuple[Lookup, Callable[[object], Answer]] | None:
    """A dict from exact path to {method: handler}: one hash and two lookups, but no parameters at all."""
    if table != "static":
        return None
    routes = {pattern: {"GET": f"page{index}"} for index, pattern in enumerate(patterns(table, count))}

    def lookup(path: str) -> object:
        methods = routes.get(path)
        return None if methods is None else methods.get("GET")

    def answer(result: object) -> Answer:
        return None if result is None else (str(result), {})

    return lookup, answer


PARAMETER = re.compile(r"\{(\w+)(?::int)?\}")


def regex_list_router(table: str, count: int) -> tuple[Lookup, Callable[[object], Answer]]:
    """One compiled expression per route, tried in order until one matches; then the method, then the
    parameters converted, as Starlette's Router and Django's URLResolver do."""
    compiled = []
    for index, pattern in enumerate(patterns(table, count)):
        regex = PARAMETER.sub(r"(?P<\1>[0-9]+)", pattern)
        converters = {name: int for name in PARAMETER.findall(pattern)}
        compiled.append((re.compile(regex), {"GET": f"page{index}"}, converters))

    def lookup(path: str) -> object:
        for regex, methods, converters in compiled:
            match = regex.fullmatch(path)
            if match is not None:
                params = {name: converters[name](value) for name, value in match.groupdict().items()}
                return methods.get("GET"), params
        return None

    def answer(result: object) -> Answer:
        return result  # type: ignore[return-value]  # lookup's own (handler, params) or None

    return lookup, answer


def werkzeug_router(table: str, count: int) -> tuple[Lookup, Callable[[object], Answer]]:
    """werkzeug's Map bound once, as Flask does per request; a miss is its NotFound exception, caught."""
    rules = [
        werkzeug.routing.Rule(PARAMETER.sub(r"<int:\1>", pattern), endpoint=f"page{index}", methods=["GET"])
        for index, pattern in enumerate(patterns(table, count))
    ]
    adapter = werkzeug.routing.Map(rules).bind("localhost")
    match = adapter.match

    def lookup(path: str) -> object:
        try:
            return match(path, method="GET")
        except werkzeug.exceptions.NotFound:
            return None

    def answer(result: object) -> Answer:
        return result  # type: ignore[return-value]  # match's (endpoint, arguments) or None

    return lookup, answer


# ------------------------------------------------------------------------------------------------ timing


def ns_per_lookup(lookup: Lookup, paths: list[str], repeats: int, target_seconds: float) -> float:
    def look_up_all() -> None:
        for path in paths:
            lookup(path)

    return seconds_per_call(look_up_all, repeats, target_seconds) * 1e9 / len(paths)


def do_nothing(path: str) -> object:
    return None


def run(router: ModuleType, repeats: int, target_seconds: float) -> dict[str, Any]:
    lookups = []
    for table in TABLES:
        for count in ROUTE_COUNTS:
            contenders = {
                ROUTERS[0]: trie_router(router, table, count),
                ROUTERS[1]: dict_router(table, count),
                ROUTERS[2]: regex_list_router(table, count),
                ROUTERS[3]: werkzeug_router(table, count),
            }
            for outcome in OUTCOMES:
                samples = sample_paths(table, count, outcome)
                paths = [path for path, _ in samples]
                for name, contender in contenders.items():
                    if contender is None:
                        continue
                    lookup, answer = contender
                    for path, expected in samples:  # the same job, or the times mean nothing
                        if answer(lookup(path)) != expected:
                            raise AssertionError(f"{name}: {path} gave {lookup(path)!r}, not {expected!r}")
                    lookups.append(
                        {
                            "table": table,
                            "routes": count,
                            "outcome": outcome,
                            "router": name,
                            "ns_per_lookup": ns_per_lookup(lookup, paths, repeats, target_seconds),
                        }
                    )
    overhead = ns_per_lookup(
        do_nothing, [path for path, _ in sample_paths("static", 10, "hit")], repeats, 0.05
    )
    return {"lookups": lookups, "call_overhead_ns": overhead}


# ------------------------------------------------------------------------------------------------ output


def ns_of(results: dict[str, Any], table: str, count: int, outcome: str, router: str) -> float | None:
    for row in results["lookups"]:
        if (row["table"], row["routes"], row["outcome"], row["router"]) == (table, count, outcome, router):
            return float(row["ns_per_lookup"])
    return None


def markdown(results: dict[str, Any]) -> str:
    """docs/generated/router_micro.md: one table, a row per route table, size and outcome."""
    machine, settings = results["machine"], results["settings"]
    lines = [
        f"<!-- generated by bench/router_micro.py; do not edit. Python {machine['python']}, "
        f"werkzeug {machine['werkzeug']}, CPUs {machine['cpu_affinity']}, "
        f"median of {settings['repeats']} repeats -->",
        "",
        f"**Nanoseconds per lookup** (median of {settings['repeats']} repeats; every figure includes "
        f"{results['call_overhead_ns']:.0f} ns for calling a Python function in a loop; "
        "a dict has no parameters, hence no parametrized rows)",
        "",
    ]
    rows = []
    for table in TABLES:
        for count in ROUTE_COUNTS:
            for outcome in OUTCOMES:
                cells = [ns_of(results, table, count, outcome, router) for router in ROUTERS]
                rows.append(
                    [table, f"{count:,}", outcome]
                    + ["n/a" if cell is None else f"{cell:,.0f}" for cell in cells]
                )
    lines += markdown_table(
        ["route table", "routes", "lookup", *ROUTERS],
        rows,
        ["---", "---:", "---", *(["---:"] * len(ROUTERS))],
    )
    lines += ["", measured_on(results, "make bench-router")]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any]) -> list[Path]:
    """docs/assets/router_micro.svg: ns per lookup against the number of routes, log-log, one panel per
    kind of route table; hits solid, misses dashed."""
    colours = dict(zip(ROUTERS, ("#d9534f", "#5cb85c", "#6c8ebf", "#f0ad4e"), strict=True))
    figure, panels = plt.subplots(1, len(TABLES), figsize=(9.0, 4.2), sharey=True)
    for axes, table in zip(panels, TABLES, strict=True):
        for router in ROUTERS:
            for outcome, style in zip(OUTCOMES, ("-", "--"), strict=True):
                points = [
                    (count, ns)
                    for count in ROUTE_COUNTS
                    if (ns := ns_of(results, table, count, outcome, router)) is not None
                ]
                if points:
                    axes.plot(
                        *zip(*points, strict=True),
                        style,
                        marker="o",
                        markersize=3,
                        color=colours[router],
                        label=f"{router}, {outcome}",
                    )
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xticks(ROUTE_COUNTS, [f"{count:,}" for count in ROUTE_COUNTS])
        axes.set_xlabel("routes in the table")
        axes.set_title(f"{table.capitalize()} routes", loc="left", fontsize=9, fontweight="bold")
        axes.grid(True, which="major", linewidth=0.3)
    panels[0].set_ylabel("ns per lookup (log scale)")
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, 0.12, 1, 1))  # room below the panels for the legend
    CHART.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(CHART, metadata={"Date": None})
    plt.close(figure)
    return [CHART]


# ---------------------------------------------------------------------------------------------- command


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.router_micro", description=__doc__.splitlines()[0])
    add_phase_option(parser, "router.py")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timeit repeats (default: %(default)s)")
    parser.add_argument(
        "--target-seconds",
        type=float,
        default=TARGET_SECONDS,
        help="seconds per repeat (default: %(default)s; a smaller value for a quick, noisy look)",
    )
    add_publishing_options(parser, PUBLISHED_NAME, "make bench-router")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)

    def measure(results_file: Path) -> dict[str, Any]:
        sys.path.insert(0, str(REPO_ROOT))
        router = importlib.import_module(f"{options.phase}.router")
        settings = dict(
            phase=options.phase,
            repeats=options.repeats,
            target_seconds=options.target_seconds,
            samples_per_call=SAMPLES,
        )
        figures = run(router, options.repeats, options.target_seconds)
        command = harness_command("bench.router_micro", argv)
        machine = {"werkzeug": importlib.metadata.version("werkzeug")}
        return document(PUBLISHED_NAME, PUBLISHED_NAME, command, machine, settings, **figures)

    return save_and_publish(
        options, PUBLISHED_NAME, measure, lambda contents, _: {TABLE: markdown(contents)}, chart
    )


if __name__ == "__main__":
    sys.exit(main())
