"""The load: what each scenario asks of wrk, how wrk is run, and how its results are read.

Four scenarios ask every target for `GET /`, the hello world, and so measure the server's own costs: per
request on kept-alive connections (keepalive-64), per batch of pipelined requests (pipeline-16), per new
connection (close), and with many connections open (keepalive-1000). Three measure the work an application
asks for, with only the targets that serve the same bytes (bench/targets.py checks them before every run):
route-64, a parametrized route, `GET /users/123`, routed, handled and rendered as JSON; static-64k, a 64 KiB
file from the page cache; browser, a page load as a browser makes it, twelve paths in turn (the page, its
stylesheet, script and images, the data its script fetches), each request with the half kilobyte of headers
a browser sends (cookies, its User-Agent, an Accept line per kind of resource: bench/lua/browser.lua), so
header parsing, routing and files of several sizes at once.

wrk is one C thread (`-t1`) pinned to the client CPUs, so the load generator never competes with the server
for a core. Its results come from a Lua `done()` hook (bench/lua/report.lua) that prints one line of JSON,
because wrk's human-readable report rounds ("1.48k") and mixes units. The tradeoff: one wrk thread saturates
its core near 130k requests/s here, so for fast servers req/s measures wrk; bench/cpu.py measures the server.
"""

from __future__ import annotations

import json
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.targets import STATIC_URL_PATH
from tools.phases import pinned

LUA_DIR = Path(__file__).resolve().parent / "lua"
JSON_PREFIX = "wrk-json: "
REQUEST_TIMEOUT_SECONDS = 2  # wrk's default, written out: a response slower than this counts as a timeout
RUN_GRACE_SECONDS = 30  # wrk stops itself after --duration; this only catches a wrk that hangs


@dataclass(frozen=True)
class Scenario:
    """One way of loading a server: how many connections, and how they are used."""

    name: str
    title: str
    connections: int
    pipeline_depth: int = 1  # requests per write; above 1, latency is not measured meaningfully
    close: bool = False  # send `Connection: close`: every request pays for a new TCP connection
    path: str = "/"  # what every request asks for
    # What a target must serve beyond `GET /` to be measured here (phase capabilities, e.g. "routing"); the
    # targets that do not are listed as not measured, with the reason.
    needs: tuple[str, ...] = ()
    # If not empty: the paths asked for in turn, each with a browser's headers (browser.lua), not `path`.
    mix: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path the scenario asks for: each target must answer them all correctly to be measured."""
        return self.mix or (self.path,)

    @property
    def asks_for(self) -> str:
        """What the scenario asks for, in a sentence: `GET /users/123`, or the mix's paths."""
        if not self.mix:
            return f"`GET {self.path}`"
        return f"{len(self.mix)} paths in turn ({', '.join(f'`{path}`' for path in self.mix)})"


# --8<-- [start:scenarios]
# A page load as a browser makes it, in its order: the page, the stylesheet, script and images it links, then
# the data its script fetches. Sizes and kinds of the files: bench/targets.py, STATIC_FILES.
PAGE_LOAD = (
    "/",
    "/static/style.css",
    "/static/app.js",
    "/static/logo.svg",
    "/static/hero.jpg",
    "/static/avatar.png",
    "/json",
    "/users/1",
    "/users/42",
    "/users/123",
    "/users/2024",
    "/users/65536",
)


SCENARIOS = (
    Scenario("keepalive-64", "keep-alive, 64 connections", connections=64),
    Scenario("pipeline-16", "pipelined, 16 requests per write, 64 connections", 64, pipeline_depth=16),
    Scenario("close", "connection churn: Connection: close, 64 connections", 64, close=True),
    Scenario("keepalive-1000", "keep-alive, 1,000 connections", connections=1000),
    Scenario(
        "route-64",
        "a parametrized route, GET /users/123, keep-alive, 64 connections",
        64,
        path="/users/123",
        needs=("routing",),
    ),
    Scenario(
        "static-64k",
        f"a 64 KiB static file, GET {STATIC_URL_PATH}, keep-alive, 64 connections",
        64,
        path=STATIC_URL_PATH,
        needs=("static_files",),
    ),
    Scenario(
        "browser",
        f"a browser's page load: {len(PAGE_LOAD)} routes and files, keep-alive, 64 connections",
        64,
        needs=("routing", "static_files"),
        mix=PAGE_LOAD,
    ),
)
# --8<-- [end:scenarios]


class WrkError(Exception):
    """wrk failed, or printed no result line: the message holds what it printed."""


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run reports. Latencies in microseconds, as wrk measures them."""

    duration_s: float
    requests: int
    bytes: int
    errors: dict[str, int]  # connect, read, write, status (responses with status >= 400), timeout
    latency_us: dict[str, float]  # mean, stdev, max, p50, p90, p99, p99.9


def command(scenario: Scenario, origin: str, duration_s: int, cpus: str) -> list[str]:
    """The exact wrk command line for a scenario against `origin` (`http://HOST:PORT`), recorded in the
    results so anyone can rerun it."""
    if scenario.mix:
        script = LUA_DIR / "browser.lua"
    else:
        script = LUA_DIR / ("pipeline.lua" if scenario.pipeline_depth > 1 else "report.lua")
    wrk = [
        "wrk",
        "--threads", "1",
        "--connections", str(scenario.connections),
        "--duration", f"{duration_s}s",
        "--timeout", f"{REQUEST_TIMEOUT_SECONDS}s",
        "--script", str(script),
    ]  # fmt: skip
    if scenario.close:
        wrk += ["--header", "Connection: close"]
    wrk.append(origin + scenario.path)
    if scenario.pipeline_depth > 1:
        wrk += ["--", str(scenario.pipeline_depth)]  # the script's argument: requests per write
    if scenario.mix:
        wrk += ["--", *scenario.mix]  # the script's arguments: the paths, asked for in turn
    return pinned(cpus, wrk)


def parse_output(stdout: str) -> WrkResult:
    """Read the JSON line printed by report.lua's done() hook; WrkError if there is none."""
    for line in stdout.splitlines():
        if line.startswith(JSON_PREFIX):
            return _from_json(json.loads(line.removeprefix(JSON_PREFIX)))
    raise WrkError(f"wrk printed no {JSON_PREFIX!r} line; its output was:\n{stdout[-2000:]}")


def _from_json(raw: dict[str, Any]) -> WrkResult:
    latency = raw["latency_us"]
    percentiles = {f"p{name}": float(value) for name, value in latency["percentiles"].items()}
    return WrkResult(
        duration_s=raw["duration_us"] / 1e6,
        requests=int(raw["requests"]),
        bytes=int(raw["bytes"]),
        errors={name: int(count) for name, count in raw["errors"].items()},
        latency_us={
            "mean": float(latency["mean"]),
            "stdev": float(latency["stdev"]),
            "max": float(latency["max"]),
            **percentiles,
        },
    )


def children_cpu_seconds() -> float:
    """User + system CPU of this process's waited-for children. Across one wrk run, the only child reaped is
    wrk itself (servers are reaped when stopped, between runs), so the difference is wrk's CPU time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(wrk_command: list[str], duration_s: int) -> tuple[WrkResult, float]:
    """Run wrk to completion; return its result and the CPU seconds wrk itself used."""
    cpu_before = children_cpu_seconds()
    try:
        finished = subprocess.run(
            wrk_command,
            capture_output=True,
            text=True,
            timeout=duration_s + RUN_GRACE_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as timeout:
        raise WrkError(f"wrk did not finish within {duration_s + RUN_GRACE_SECONDS} s") from timeout
    client_cpu_s = children_cpu_seconds() - cpu_before
    if finished.returncode != 0:
        raise WrkError(f"wrk exited with status {finished.returncode}: {finished.stderr.strip()[-2000:]}")
    return parse_output(finished.stdout), client_cpu_s
