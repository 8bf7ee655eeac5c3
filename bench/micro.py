"""What the parser and router microbenchmarks share: the phase they measure, and how a call is timed.

A call is timed by timeit, as the median over several repeats of a loop long enough for the timer's
resolution. The tradeoff: a microbenchmark runs in a hot cache with no socket or request around it; the
server chapters' wrk runs say what the code is worth in a real server.
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable

from tools.phases import REPO_ROOT, newest_phase_with

REPEATS = 7
TARGET_SECONDS = 0.2  # per repeat: long enough for timer resolution, short enough for a quick run


def add_phase_option(parser: argparse.ArgumentParser, file_name: str) -> None:
    """--phase: a phase directory of this repository that holds `file_name`, by default the newest."""

    def phase_with_file(name: str) -> str:
        if not (REPO_ROOT / name / file_name).is_file():
            raise argparse.ArgumentTypeError(f"no phase named {name!r} with a {file_name}")
        return name

    newest = newest_phase_with(REPO_ROOT, file_name)
    parser.add_argument(
        "--phase",
        type=phase_with_file,
        default=newest.name if newest else "",  # a string default goes through `type` too
        help=f"the phase whose {file_name} to measure (default: the newest phase with one, %(default)s)",
    )


def seconds_per_call(
    function: Callable[[], object], repeats: int = REPEATS, target_seconds: float = TARGET_SECONDS
) -> float:
    """The median over `repeats` of the time of one call, each repeat running about `target_seconds`."""
    timer = timeit.Timer(function)
    number, elapsed = timer.autorange()
    number = max(1, int(number * target_seconds / elapsed))
    return statistics.median(timer.repeat(repeat=repeats, number=number)) / number
