"""Charts from a results file, as SVG and PNG under docs/assets/bench/, byte-for-byte reproducible.

Same results in, same files out: the Agg backend (no display), a fixed SVG hash salt (matplotlib otherwise
draws random ids), and no date in the metadata. So regenerating the charts from a committed results file
shows no diff, and a diff in a chart always means a change in the numbers. Bars are medians; the whiskers
span the lowest and highest run. Our phases are drawn in the accent colour, peers in grey-blue. In the
throughput chart, a bar whose wrk used at least WRK_LIMITED_SHARE of its core is hatched and labelled
"(wrk-limited)": that bar is the client's limit, not the server's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display: chosen before pyplot is imported

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from bench.report import microseconds, si
from bench.results import Results
from bench.wrk import Scenario

PHASE_COLOUR = "#d9534f"
PEER_COLOUR = "#6c8ebf"
LATENCY_MARKERS = {
    "p50": ("#9ecae1", "o"),
    "p90": ("#6baed6", "s"),
    "p99": ("#3182bd", "D"),
    "p99.9": ("#08519c", "^"),
}
BAR_HEIGHT_INCHES = 0.32
NOTE_HEIGHT_INCHES = 0.3
# A median wrk CPU share at or above this: wrk, one thread on one core, was the bottleneck, not the server.
WRK_LIMITED_SHARE = 0.95
WRK_LIMITED_LABEL = " (wrk-limited)"
WRK_LIMITED_NOTE = (
    "bars: median of runs; whiskers: lowest to highest run; "
    f"hatched: wrk used >= {WRK_LIMITED_SHARE * 100:.0f} % of its core, so the bar is wrk's limit"
)
FIGURE_WIDTH_INCHES = 9.0

matplotlib.rcParams.update(
    {
        "svg.hashsalt": "http-from-first-principles",
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)


def _colour(results: Results, target: str) -> str:
    return PHASE_COLOUR if results.is_phase(target) else PEER_COLOUR


def _sentence(title: str) -> str:
    return title[0].upper() + title[1:]


def _figure(panels: int, bars: float) -> tuple[Figure, list[Axes]]:
    height = panels * (bars * BAR_HEIGHT_INCHES + 0.9) + 0.4
    figure, axes = plt.subplots(panels, 1, figsize=(FIGURE_WIDTH_INCHES, height), squeeze=False)
    return figure, [row[0] for row in axes]


def wrk_limited(results: Results, target: str, scenario: str) -> bool:
    """Whether wrk's median CPU share in this measurement reached WRK_LIMITED_SHARE of its core."""
    measurement = results.measurement(target, scenario)
    share = measurement.spread("client_cpu_share") if measurement else None
    return share is not None and share.median >= WRK_LIMITED_SHARE


def _bars(
    axes: Axes,
    results: Results,
    scenario: Scenario,
    figure_name: str,
    show: Callable[[float], str],
    *,
    mark_wrk_limited: bool = False,
) -> None:
    """Horizontal bars, one per target in the results' order, for one figure of one scenario; with
    `mark_wrk_limited`, the bars that measure wrk rather than the server are hatched and say so."""
    names, medians, lows, highs, colours, hatches = [], [], [], [], [], []
    for info in results.targets:
        measurement = results.measurement(info.name, scenario.name)
        spread = measurement.spread(figure_name) if measurement else None
        if spread is None:
            continue
        limited = mark_wrk_limited and wrk_limited(results, info.name, scenario.name)
        names.append(info.name + (WRK_LIMITED_LABEL if limited else ""))
        medians.append(spread.median)
        lows.append(spread.median - spread.low)
        highs.append(spread.high - spread.median)
        colours.append(_colour(results, info.name))
        hatches.append("////" if limited else "")
    positions = range(len(names))
    bars = axes.barh(
        positions, medians, xerr=[lows, highs], color=colours, capsize=2, error_kw={"linewidth": 0.8}
    )
    for bar, hatch in zip(bars, hatches, strict=True):
        if hatch:
            bar.set_hatch(hatch)
            bar.set_edgecolor("white")
    axes.set_yticks(list(positions), names)
    axes.invert_yaxis()
    axes.set_title(_sentence(scenario.title), loc="left", fontsize=9, fontweight="bold")
    axes.xaxis.set_major_formatter(lambda value, _position: si(value))
    for position, value, above in zip(positions, medians, highs, strict=True):
        # Written past the whisker, so the label never hides the spread.
        axes.annotate(
            show(value),
            (value + above, position),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    axes.margins(x=0.15)


def _save(figure: Figure, directory: Path, stem: str, note: str | None = None) -> list[Path]:
    if note is None:
        figure.tight_layout()
    else:  # below the panels, in room kept free for it
        height = figure.get_figheight()
        figure.text(0.01, 0.1 / height, note, ha="left", va="bottom", fontsize=8, color="#555555")
        figure.tight_layout(rect=(0, NOTE_HEIGHT_INCHES / height, 1, 1))
    svg, png = directory / f"{stem}.svg", directory / f"{stem}.png"
    figure.savefig(svg, metadata={"Date": None})
    figure.savefig(png, dpi=110, metadata={"Software": None})
    plt.close(figure)
    return [svg, png]


def per_scenario_chart(
    results: Results,
    directory: Path,
    *,
    stem: str,
    figure_name: str,
    label: str,
    show: Callable[[float], str],
    mark_wrk_limited: bool = False,
) -> list[Path]:
    scenarios = results.scenarios
    figure, axes = _figure(len(scenarios), len(results.targets))
    if mark_wrk_limited:
        figure.set_figheight(figure.get_figheight() + NOTE_HEIGHT_INCHES)
    for axis, scenario in zip(axes, scenarios, strict=True):
        _bars(axis, results, scenario, figure_name, show, mark_wrk_limited=mark_wrk_limited)
    axes[-1].set_xlabel(label)
    figure.suptitle(_sentence(label), x=0.01, ha="left", fontweight="bold")
    return _save(figure, directory, stem, WRK_LIMITED_NOTE if mark_wrk_limited else None)


def latency_chart(results: Results, directory: Path) -> list[Path]:
    """p50 to p99.9 per target as points on a log scale (bars would start at an arbitrary axis minimum), for
    the scenarios where wrk's latency means something."""
    scenarios = [scenario for scenario in results.scenarios if scenario.pipeline_depth == 1]
    figure, axes = _figure(len(scenarios), len(results.targets))
    for axis, scenario in zip(axes, scenarios, strict=True):
        names = [  # a target that does not serve the scenario has no row, rather than an empty one
            info.name
            for info in results.targets
            if (m := results.measurement(info.name, scenario.name)) is None or m.not_served is None
        ]
        for row, name in enumerate(names):
            measurement = results.measurement(name, scenario.name)
            points = [
                (percentile, spread.median)
                for percentile in LATENCY_MARKERS
                if measurement and (spread := measurement.spread(f"{percentile}_us")) and spread.median > 0
            ]
            if not points:
                continue
            axis.plot(
                [value for _, value in points], [row] * len(points), color="#cccccc", linewidth=1, zorder=1
            )
            for percentile, value in points:
                colour, marker = LATENCY_MARKERS[percentile]
                axis.scatter([value], [row], color=colour, marker=marker, s=28, zorder=2, label=percentile)
        axis.set_xscale("log")
        # Whole decades, each labelled: a panel spanning less than one would otherwise get only matplotlib's
        # minor-tick labels, in scientific notation.
        low, high = axis.get_xlim()
        axis.set_xlim(10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high)))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_yticks(list(range(len(names))), names)
        axis.set_ylim(len(names) - 0.5, -0.5)
        axis.set_title(_sentence(scenario.title), loc="left", fontsize=9, fontweight="bold")
        axis.xaxis.set_major_formatter(lambda value, _position: microseconds(value))
        axis.grid(axis="x", which="major", color="#eeeeee", zorder=0)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one legend entry per percentile, not per target
    figure.legend(unique.values(), unique.keys(), loc="upper right", ncols=4, fontsize=8, frameon=False)
    axes[-1].set_xlabel("latency (log scale), median of runs")
    figure.suptitle("Latency percentiles", x=0.01, ha="left", fontweight="bold")
    return _save(figure, directory, "latency")


def memory_chart(results: Results, directory: Path) -> list[Path]:
    held = [(idle.target, per) for idle in results.idle if (per := idle.bytes_per_connection) is not None]
    figure, (axis,) = _figure(1, max(len(held), 1))
    axis.barh(
        range(len(held)),
        [per / 1024 for _, per in held],
        color=[_colour(results, name) for name, _ in held],
    )
    axis.set_yticks(list(range(len(held))), [name for name, _ in held])
    axis.invert_yaxis()
    for position, (_, per) in enumerate(held):
        axis.annotate(
            f"{per / 1024:.1f} KiB", (per / 1024, position), xytext=(4, 0), textcoords="offset points"
        )
    axis.margins(x=0.15)
    connections = results.settings.idle_connections
    axis.set_xlabel(f"KiB of server RSS per connection, {connections:,} idle keep-alive connections held")
    figure.suptitle("Memory per idle connection", x=0.01, ha="left", fontweight="bold")
    return _save(figure, directory, "memory")


def write_charts(results: Results, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = per_scenario_chart(
        results,
        directory,
        stem="throughput",
        figure_name="requests_per_s",
        label="requests per second",
        show=si,
        mark_wrk_limited=True,
    )
    written += per_scenario_chart(
        results,
        directory,
        stem="cpu_efficiency",
        figure_name="requests_per_server_cpu_s",
        label="requests per second of server CPU time",
        show=si,
    )
    if any(scenario.pipeline_depth == 1 for scenario in results.scenarios):
        written += latency_chart(results, directory)
    if results.idle:
        written += memory_chart(results, directory)
    return written
