"""The bench harness: reading wrk's output, counting a process tree's CPU and memory, the results schema, the
reports, the interpreter the servers run on (its record, the peers' venv of it, --python), and one end-to-end
run of the real harness against a phase and a peer.

These tests check that the harness measures correctly, never how fast anything is.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Literal

import h11
import psutil
import pytest

from bench import __main__ as bench_main
from bench import (
    abuse,
    charts,
    costs,
    cpu,
    echo,
    flame,
    interpreters,
    parser_micro,
    report,
    results,
    router_micro,
    sendfile_micro,
    targets,
    tls_io,
    workers,
    wrk,
)
from bench.__main__ import parse_cpus
from conftest import Phase, require_tool
from tools.phases import REPO_ROOT, PhaseProcess, newest_phase_with

# Captured from `wrk -s bench/lua/report.lua` (wrk 4.1.0): its own report, then our hook's line.
WRK_JSON = {
    "duration_us": 1099961,
    "requests": 39770,
    "bytes": 4573550,
    "errors": {"connect": 0, "read": 39770, "write": 0, "status": 0, "timeout": 0},
    "latency_us": {
        "mean": 49.66,
        "stdev": 44.88,
        "max": 1074,
        "percentiles": {"50": 43, "90": 68, "99": 257, "99.9": 614},
    },
}
WRK_HUMAN_REPORT = """\
Running 1s test @ http://127.0.0.1:8099/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    49.66us   44.88us   1.07ms   96.52%
    Req/Sec    36.45k     3.14k   39.48k    81.82%
  39770 requests in 1.10s, 4.36MB read
  Socket errors: connect 0, read 39770, write 0, timeout 0
Requests/sec:  36155.83
Transfer/sec:      3.97MB
"""
WRK_OUTPUT = f"{WRK_HUMAN_REPORT}wrk-json: {json.dumps(WRK_JSON)}\n"

# --------------------------------------------------------------------------------------------- wrk


def test_parse_output_reads_the_lua_json_line() -> None:
    result = wrk.parse_output(WRK_OUTPUT)
    assert result.requests == 39770
    assert result.duration_s == pytest.approx(1.099961)
    assert result.bytes == 4573550
    assert result.errors == {"connect": 0, "read": 39770, "write": 0, "status": 0, "timeout": 0}
    assert result.latency_us == {
        "mean": 49.66,
        "stdev": 44.88,
        "max": 1074.0,
        "p50": 43.0,
        "p90": 68.0,
        "p99": 257.0,
        "p99.9": 614.0,
    }


def test_parse_output_without_the_json_line_says_what_wrk_printed() -> None:
    with pytest.raises(wrk.WrkError, match="Requests/sec"):
        wrk.parse_output(WRK_HUMAN_REPORT)


def test_command_pins_wrk_and_passes_each_scenario_its_options() -> None:
    by_name = {scenario.name: scenario for scenario in wrk.SCENARIOS}
    origin = "http://127.0.0.1:8080"
    url = origin + "/"

    keepalive = wrk.command(by_name["keepalive-64"], origin, 5, "0")
    assert keepalive[:4] == ["taskset", "--cpu-list", "0", "wrk"]
    assert keepalive[keepalive.index("--threads") + 1] == "1"
    assert keepalive[keepalive.index("--connections") + 1] == "64"
    assert keepalive[keepalive.index("--duration") + 1] == "5s"
    assert keepalive[keepalive.index("--script") + 1].endswith("report.lua")
    assert keepalive[-1] == url and "--header" not in keepalive

    pipelined = wrk.command(by_name["pipeline-16"], origin, 5, "0")
    assert pipelined[pipelined.index("--script") + 1].endswith("pipeline.lua")
    assert pipelined[-3:] == [url, "--", "16"]

    churn = wrk.command(by_name["close"], origin, 5, "0")
    assert churn[churn.index("--header") + 1] == "Connection: close"

    many = wrk.command(by_name["keepalive-1000"], origin, 5, "0")
    assert many[many.index("--connections") + 1] == "1000"

    assert wrk.command(by_name["route-64"], origin, 5, "0")[-1] == origin + "/users/123"
    assert wrk.command(by_name["static-64k"], origin, 5, "0")[-1] == origin + "/static/file64k.bin"

    browser = wrk.command(by_name["browser"], origin, 5, "0")
    assert browser[browser.index("--script") + 1].endswith("browser.lua")
    assert browser[browser.index(url) :] == [url, "--", *wrk.PAGE_LOAD]  # the mix: the script's arguments
    assert browser[browser.index("--connections") + 1] == "64" and "--header" not in browser


def test_the_page_load_mixes_routes_and_static_files_that_every_check_knows() -> None:
    """About a dozen paths, dynamic and static, the harness writes each static file, and the readiness check
    knows what every path of every scenario must answer."""
    mix = wrk.PAGE_LOAD
    static = [path for path in mix if path.startswith("/static/")]
    assert 10 <= len(mix) <= 15 and mix[0] == "/" and "/json" in mix
    assert len(static) >= 4 and sum(path.startswith("/users/") for path in mix) >= 3
    assert set(static) <= set(targets.STATIC_FILES_BY_PATH)
    assert len({targets.expected_answer(path).media_types for path in static}) == len(static)  # all kinds
    for scenario in wrk.SCENARIOS:
        for path in scenario.paths:
            targets.expected_answer(path)  # raises for a path no target is checked on
    assert targets.expected_answer("/users/123").body == b'{"id": 123}'  # json.dumps, as our phases send it
    with pytest.raises(ValueError, match="no target is expected to serve"):
        targets.expected_answer("/users/abc")


def test_the_lua_scripts_exist_where_the_commands_point() -> None:
    for scenario in wrk.SCENARIOS:
        command = wrk.command(scenario, "http://127.0.0.1:1", 1, "0")
        assert Path(command[command.index("--script") + 1]).is_file()


class RecordingHandler(BaseHTTPRequestHandler):
    """Answers every GET with a small 200, and keeps each request's path and headers for the test."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, list[tuple[str, str]]]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, list(self.headers.items())))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """A threaded HTTP server on a free port, answering with `handler`, for as long as the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


# What a browser accepts, by kind of resource: the start of its Accept line.
BROWSER_ACCEPTS = {
    "/": "text/html,",
    ".css": "text/css,",
    ".js": "*/*",
    ".svg": "image/",
    ".jpg": "image/",
    ".png": "image/",
    "data": "application/json",
}


def test_the_browser_script_asks_for_the_whole_mix_with_a_browsers_headers() -> None:
    require_tool("wrk")
    scenario = next(scenario for scenario in wrk.SCENARIOS if scenario.name == "browser")
    RecordingHandler.seen = []
    with serving(RecordingHandler) as port:
        command = wrk.command(scenario, f"http://127.0.0.1:{port}", 1, str(min(os.sched_getaffinity(0))))
        command[command.index("--connections") + 1] = "1"  # one connection: the mix in its order
        result, _ = wrk.run(command, 1)
    assert result.requests >= len(wrk.PAGE_LOAD) and not any(result.errors.values())
    seen = RecordingHandler.seen[: len(wrk.PAGE_LOAD)]
    assert sorted(path for path, _ in seen) == sorted(wrk.PAGE_LOAD)  # each once, wherever the cycle began
    for path, headers in seen:
        names = {name.lower(): value for name, value in headers}
        assert 10 <= len(headers) <= 15, (path, headers)
        assert "Firefox/" in names["user-agent"] and "session=" in names["cookie"]
        assert names["connection"] == "keep-alive" and names["sec-fetch-dest"]
        kind = path if path == "/" else Path(path).suffix or "data"
        assert names["accept"].startswith(BROWSER_ACCEPTS[kind]), (path, names["accept"])
        assert ("referer" in names) == (path != "/")  # the page is the Referer of everything it loads


# --------------------------------------------------------------------------------------------- cpu


BURNER = """
import os, sys, time
def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
if os.fork() == 0:  # the grandchild burns, then waits to be counted alive
    burn(0.3)
    print("burnt", flush=True)
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


def test_tree_cpu_seconds_counts_a_live_grandchild() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", BURNER], stdout=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == "burnt\n"
            assert len(cpu.tree(process.pid)) == 2
            # At least the 0.3 s the grandchild burnt (minus a 10 ms clock tick of rounding), wherever it ran.
            assert cpu.tree_cpu_seconds(process.pid) >= 0.3 - 0.01
            # Two Python interpreters: each holds megabytes.
            assert cpu.tree_rss_bytes(process.pid) > 2 * 2**20
            assert cpu.tree_peak_rss_bytes(process.pid) >= cpu.tree_rss_bytes(process.pid) * 0.9
        finally:
            os.killpg(process.pid, 9)


def test_a_tree_that_has_exited_counts_nothing() -> None:
    gone = 2**22 + 1  # above the kernel's largest pid_max: no such process, ever
    assert cpu.tree(gone) == [] and cpu.tree_cpu_seconds(gone) == 0.0 and cpu.tree_rss_bytes(gone) == 0


def test_machine_cpu_seconds_only_grows() -> None:
    before = cpu.machine_cpu_seconds()
    sum(range(3_000_000))  # a few tens of milliseconds of this process's CPU
    assert cpu.machine_cpu_seconds() >= before > 0


# --------------------------------------------------------------------------------------------- schema


LATENCY_PERCENTILES = {"p50": 800.0, "p90": 1000.0, "p99": 2000.0, "p99.9": 5000.0}
RUN_FIELDS = ["requests", "duration_s", "bytes", "errors", "latency_us"]
RUN_FIELDS += ["server_cpu_s", "client_cpu_s", "machine_cpu_s"]


def _run(requests: int = 50_000, server_cpu_s: float = 2.5, other_cpu_s: float = 0.1) -> results.Run:
    return results.Run(
        requests=requests,
        duration_s=5.0,
        bytes=requests * 100,
        errors={"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
        latency_us={"mean": 900.0, "stdev": 100.0, "max": 9000.0, **LATENCY_PERCENTILES},
        server_cpu_s=server_cpu_s,
        client_cpu_s=4.9,
        machine_cpu_s=server_cpu_s + 4.9 + other_cpu_s,
    )


def _results() -> results.Results:
    scenario = wrk.SCENARIOS[0]
    return results.Results(
        name="test",
        created="2026-01-01T00:00:00+00:00",
        machine={
            "cpu_model": "Test CPU",
            "cores": 2,
            "kernel": "6.1",
            "python": "3.11.7",
            "wrk": "wrk 4.1.0",
        },
        settings=results.Settings(
            runs=3, duration_s=5, warmup_s=2, server_cpus="1", client_cpus="0", idle_connections=1000
        ),
        command=["python", "-m", "bench"],
        targets=[
            results.TargetInfo("phase3_http_parse", "phase", "ours"),
            results.TargetInfo("nginx", "peer", "nginx"),
        ],
        scenarios=[scenario],
        skipped={"hyper": "cargo is not installed"},
        measurements=[
            results.Measurement(
                "phase3_http_parse",
                scenario.name,
                ["python", "-m", "phase3_http_parse"],
                ["wrk"],
                [_run(40_000), _run(50_000), _run(45_000)],
                30 * 2**20,
            ),
            results.Measurement("nginx", scenario.name, ["nginx"], ["wrk"], [_run(400_000, 1.0)], 2**20),
        ],
        idle=[
            results.IdleMemory("phase3_http_parse", ["python"], 1000, 1000, 10 * 2**20, 12 * 2**20, 0.5),
            results.IdleMemory("nginx", ["nginx"], 1000, 400, 2**20, 2**20, 0.5, "held only 400"),
        ],
    )


def test_run_derives_its_figures_from_the_raw_ones() -> None:
    run = _run(requests=50_000, server_cpu_s=2.5)
    assert run.requests_per_s == 10_000
    assert run.requests_per_server_cpu_s == 20_000
    assert run.server_cpu_us_per_request == pytest.approx(50.0)
    assert run.server_cpu_share == 0.5
    assert run.client_cpu_share == pytest.approx(0.98)
    assert run.other_cpu_s == pytest.approx(0.1)
    assert _run(server_cpu_s=0.0).requests_per_server_cpu_s is None


def test_a_measurement_is_noisy_when_most_runs_were_disturbed() -> None:
    quiet, disturbed = _run(other_cpu_s=0.1), _run(other_cpu_s=2.0)  # 2 % and 40 % of a core
    assert not quiet.noisy and disturbed.noisy
    measurement = results.Measurement("nginx", "keepalive-64", [], [], [quiet, disturbed, disturbed], None)
    assert measurement.noisy
    assert not dataclasses.replace(measurement, runs=[quiet, quiet, disturbed]).noisy

    noisy_results = dataclasses.replace(_results(), measurements=[measurement])
    text = report.markdown(noisy_results, ["nginx"], "test.json")
    assert f"| nginx{report.NOISY_MARK} |" in text
    assert f"{report.NOISY_MARK} Other processes used more than 25% of a core" in text


def test_spread_is_median_min_max_over_runs() -> None:
    measurement = _results().measurements[0]
    assert measurement.spread("requests_per_s") == results.Spread(9_000, 8_000, 10_000)


def test_results_survive_a_round_trip_through_json(tmp_path: Path) -> None:
    original = _results()
    path = tmp_path / "bench" / "results" / "test.json"
    results.write(original, path)
    assert results.load(path) == original


def test_results_json_has_the_documented_shape(tmp_path: Path) -> None:
    path = tmp_path / "test.json"
    results.write(_results(), path)
    document = json.loads(path.read_text())
    assert document["schema_version"] == results.SCHEMA_VERSION
    assert {
        "machine",
        "settings",
        "command",
        "targets",
        "scenarios",
        "skipped",
        "measurements",
        "idle",
    } <= set(document)
    measurement = document["measurements"][0]
    assert {"server_command", "wrk_command", "runs", "peak_rss_bytes", "failure", "summary"} <= set(
        measurement
    )
    assert set(measurement["runs"][0]) == set(RUN_FIELDS)
    assert measurement["summary"]["requests_per_s"] == {"median": 9000.0, "low": 8000.0, "high": 10000.0}
    assert document["idle"][0]["bytes_per_connection"] == 2 * 2**20 / 1000
    assert document["idle"][1]["bytes_per_connection"] is None  # it failed: no figure


def test_a_scenario_from_an_older_file_needs_what_it_needed() -> None:
    """Files from before a scenario could need more than one thing wrote `needs` as one name, or null."""
    document = _results().to_json()
    both = ("routing", "static_files")
    for written, read in (("routing", ("routing",)), (None, ()), (list(both), both)):
        document["scenarios"][0]["needs"] = written
        (scenario,) = results.from_json(document).scenarios
        assert scenario.needs == read and scenario.mix == ()


def test_loading_rejects_another_schema_version_and_missing_fields() -> None:
    document = _results().to_json()
    with pytest.raises(results.SchemaError, match="schema_version"):
        results.from_json({**document, "schema_version": 0})
    del document["measurements"][0]["runs"][0]["server_cpu_s"]
    with pytest.raises(results.SchemaError, match="server_cpu_s"):
        results.from_json(document)


# --------------------------------------------------------------------------------------------- reports


def test_markdown_tables_put_the_fastest_first_and_our_phases_in_bold() -> None:
    text = report.markdown(_results(), ["phase3_http_parse", "nginx", "hyper"], "bench/results/test.json")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    dash = report.EN_DASH
    assert rows[1].startswith(f"| nginx | 80k (80k{dash}80k) |")
    assert rows[2].startswith(f"| **phase3_http_parse** | 9k (8k{dash}10k) |")
    assert "- hyper: cargo is not installed" in text
    assert "held only 400" in text
    assert "http" not in text.replace("phase3_http_parse", "")  # tables only: no links


def _with_a_routed_phase() -> results.Results:
    """_results() plus phase4_routing, 10 % dearer per request than phase 3, and a scenario only it serves."""
    base = _results()
    keepalive = base.measurements[0]
    dearer = [dataclasses.replace(run, server_cpu_s=run.server_cpu_s * 1.1) for run in keepalive.runs]
    route = wrk.Scenario("route-64", "a route", 64, 1, False, "/users/123", ("routing",))
    phase4_keepalive = dataclasses.replace(keepalive, target="phase4_routing", runs=dearer)
    phase4_route = dataclasses.replace(phase4_keepalive, scenario="route-64")
    not_served = [
        results.Measurement("phase3_http_parse", "route-64", [], [], [], None, not_served="no 'routing'"),
        results.Measurement("nginx", "route-64", [], [], [], None, not_served="set up for GET / only"),
    ]
    return dataclasses.replace(
        base,
        targets=[*base.targets[:1], results.TargetInfo("phase4_routing", "phase", "ours"), *base.targets[1:]],
        scenarios=[*base.scenarios, route],
        measurements=[*base.measurements, phase4_keepalive, phase4_route, *not_served],
    )


def test_the_summary_says_what_each_phase_costs_over_the_one_before() -> None:
    measured = _with_a_routed_phase()
    text = report.markdown(measured, ["phase3_http_parse", "phase4_routing", "nginx"], "test.json")
    (line,) = [line for line in text.splitlines() if line.startswith("- phase4_routing vs phase3_http_parse")]
    # Server CPU per request: 2.5 s / 45,000 requests, then 10 % more; the runs' ranges overlap.
    assert "keep-alive, 64 connections: +10.0% server CPU per request (61.1 µs against 55.6 µs" in line
    assert line.endswith("the two ranges of runs overlap)")
    assert "route" not in line  # a scenario phase 3 does not serve is not compared
    # The later phase's own page, beside the peers only, says it too; phase 3's, the first, does not.
    assert line in report.markdown(measured, ["phase4_routing", "nginx"], "test.json")
    assert "phase4_routing vs" not in report.markdown(measured, ["phase3_http_parse", "nginx"], "test.json")


def test_interleaved_runs_give_each_ratio_run_by_run_with_its_spread() -> None:
    """With the targets taking turns, a ratio pairs run i with run i: its median is not the ratio of the
    medians, and its range is the spread of those pairs. Older results files keep their tables as before."""
    times = "\N{MULTIPLICATION SIGN}"
    base = _with_a_routed_phase()
    nginx_runs = [_run(160_000, 1.0), _run(100_000, 1.0), _run(180_000, 1.0)]
    measurements = [
        dataclasses.replace(m, runs=nginx_runs) if m.target == "nginx" and m.runs else m
        for m in base.measurements
    ]
    settings = dataclasses.replace(base.settings, interleaved=True)
    interleaved = dataclasses.replace(base, settings=settings, measurements=measurements)
    pages = ["phase3_http_parse", "phase4_routing", "nginx"]
    lines = report.markdown(interleaved, pages, "test.json").splitlines()
    assert any("a fresh server per run, the targets taking turns run by run" in line for line in lines)
    header = next(line for line in lines if line.startswith("| server | req/s"))
    assert header.endswith(f"| req per server CPU-second, {times} nginx |")
    # Requests per server CPU-second: 16k, 20k, 18k against nginx's 160k, 100k, 180k.
    phase3 = next(line for line in lines if line.startswith("| **phase3_http_parse** |"))
    assert phase3.endswith(f"| 0.10{times} (0.10{times}{report.EN_DASH}0.20{times}) |")
    (cost,) = [line for line in lines if line.startswith("- phase4_routing vs phase3_http_parse")]
    assert cost.endswith(
        "server CPU per request +10.0%, the median of the changes run by run (+10.0% to +10.0%);"
        " the medians of runs: 61.1 µs against 55.6 µs"
    )
    # The phase against each peer, run i over run i: the same ratios, a row per peer, a column per scenario.
    against = lines[lines.index("#### phase3_http_parse against each peer") :]
    nginx_row = next(line for line in against if line.startswith("| nginx |"))
    assert nginx_row.startswith(f"| nginx | 0.10{times} (0.10{times}{report.EN_DASH}0.20{times}) |")
    # And against itself in the first scenario: a ratio of 1.00 there by definition.
    itself = next(line for line in against if line.startswith("| itself, keepalive-64 |"))
    assert itself.startswith(
        f"| itself, keepalive-64 | 1.00{times} (1.00{times}{report.EN_DASH}1.00{times}) |"
    )
    old = dataclasses.replace(interleaved, settings=base.settings)
    assert f"{times} nginx" not in report.markdown(old, pages, "test.json")


def test_a_phases_targets_get_their_verdict_from_the_ratios_run_by_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Met where every pair of runs met the target, missed where none did, inside the noise where the runs
    fall on both sides; a target whose peer was not in the run says so. Ratios here: 0.10, 0.20, 0.10."""
    times = "\N{MULTIPLICATION SIGN}"
    base = _with_a_routed_phase()
    nginx_runs = [_run(160_000, 1.0), _run(100_000, 1.0), _run(180_000, 1.0)]
    measurements = [
        dataclasses.replace(m, runs=nginx_runs) if m.target == "nginx" and m.runs else m
        for m in base.measurements
    ]
    measured = dataclasses.replace(base, measurements=measurements)
    goals = (
        ("one", "keepalive-64", "nginx", 0.05),
        ("one", "keepalive-64", "nginx", 0.5),
        ("two", "keepalive-64", "nginx", 0.15),
        ("two", "keepalive-64", "granian", 1.0),
        ("two", "keepalive-64", "itself", 1.0),
    )
    monkeypatch.setattr(report, "PHASE_TARGETS", {"phase3_http_parse": goals})
    lines = report.markdown(measured, ["phase3_http_parse", "nginx"], "test.json").splitlines()
    section = lines[lines.index("#### phase3_http_parse's targets") :]
    rows = [line for line in section if line.startswith(("| one | keepalive-64 |", "| two | keepalive-64 |"))]
    spread = f"0.10{times} (0.10{times}{report.EN_DASH}0.20{times})"
    itself = f"1.00{times} (1.00{times}{report.EN_DASH}1.00{times})"
    noise = "inside the noise: the runs fall on both sides"
    assert rows == [
        f"| one | keepalive-64 | ≥ 0.05{times} nginx | {spread} | met |",
        f"| one | keepalive-64 | ≥ 0.50{times} nginx | {spread} | missed, by 80% of the target |",
        f"| two | keepalive-64 | ≥ 0.15{times} nginx | {spread} | {noise} |",
        f"| two | keepalive-64 | ≥ 1.00{times} granian | — | not measured in this run |",
        f"| two | keepalive-64 | ≥ 1.00{times} itself | {itself} | met |",
    ]
    # A phase without targets has no such section.
    assert "targets" not in report.markdown(measured, ["phase4_routing", "nginx"], "test.json")


def test_a_scenario_a_target_does_not_serve_says_so_instead_of_leaving_a_hole(tmp_path: Path) -> None:
    measured = _with_a_routed_phase()
    text = report.markdown(measured, ["phase3_http_parse", "phase4_routing", "nginx"], "test.json")
    section = text[text.index("#### A route") :].split("\n#### ")[0]  # up to the next section
    assert section.count("| **phase4_routing** |") == 2  # both tables
    assert "| nginx |" not in section and "| **phase3_http_parse** |" not in section
    assert (
        "Not measured in this scenario, which asks for `GET /users/123`: phase3_http_parse (no 'routing');"
        " nginx (set up for GET / only)." in section
    )
    # A page where nothing serves the scenario leaves it out; the terminal says n/a.
    assert "#### A route" not in report.markdown(measured, ["phase3_http_parse", "nginx"], "test.json")
    assert "n/a" in report.terminal_summary(measured)
    assert "phase4_routing" in (charts.write_charts(measured, tmp_path)[0]).read_text()


def test_write_markdown_gives_each_phase_its_page_beside_the_peers(tmp_path: Path) -> None:
    written = report.write_markdown(_results(), tmp_path, "bench/results/test.json")
    assert sorted(path.name for path in written) == ["phase3_http_parse.md", "summary.md"]
    assert "nginx" in (tmp_path / "phase3_http_parse.md").read_text()


def test_charts_are_byte_for_byte_reproducible(tmp_path: Path) -> None:
    first = charts.write_charts(_results(), tmp_path / "first")
    second = charts.write_charts(_results(), tmp_path / "second")
    assert [path.name for path in first] == [path.name for path in second]
    assert {path.suffix for path in first} == {".svg", ".png"}
    for one, other in zip(first, second, strict=True):
        assert one.read_bytes() == other.read_bytes(), one.name


def test_the_throughput_chart_hatches_the_bars_where_wrk_was_the_limit(tmp_path: Path) -> None:
    measured = _results()  # wrk used 98 % of its core in every run: nginx and phase 3 alike
    scenario = measured.scenarios[0].name
    assert charts.wrk_limited(measured, "nginx", scenario)
    spare = [
        dataclasses.replace(run, client_cpu_s=run.duration_s * 0.5) for run in measured.measurements[0].runs
    ]
    measured.measurements[0] = dataclasses.replace(measured.measurements[0], runs=spare)
    assert not charts.wrk_limited(measured, "phase3_http_parse", scenario)
    assert not charts.wrk_limited(measured, "hyper", scenario)  # not measured: nothing to mark
    charts.write_charts(measured, tmp_path)
    throughput = (tmp_path / "throughput.svg").read_text()
    assert throughput.count("(wrk-limited)") == 1 and "hatched: wrk used &gt;= 95 % of its core" in throughput
    assert "(wrk-limited)" not in (tmp_path / "cpu_efficiency.svg").read_text()


def test_terminal_summary_fits_one_screen() -> None:
    lines = report.terminal_summary(_results()).splitlines()
    assert len(lines) < 25 and max(map(len, lines)) < 160
    assert lines[0].split()[0] == "target"


def test_how_long_a_run_takes_is_said_in_seconds_under_a_minute() -> None:
    assert [report.how_long(seconds) for seconds in (7, 59.4, 59.6, 75, 1467)] == [
        "7 s",
        "59 s",
        "1 min",
        "1 min",
        "24 min",
    ]
    assert "The whole run took 7 s." in report.conditions(dataclasses.replace(_results(), elapsed_s=7))
    assert "The whole run took 24 min." in report.conditions(dataclasses.replace(_results(), elapsed_s=1467))

    # A quick look at one target in one scenario took 3 s here: announced as seconds, not as "about 1 min".
    stdlib = next(target for target in targets.PEERS if target.name == "stdlib")
    quick = bench_main.Plan(
        settings=results.Settings(
            runs=1, duration_s=1, warmup_s=0, server_cpus="1", client_cpus="0", idle_connections=1000
        ),
        targets=[stdlib],
        scenarios=[wrk.SCENARIOS[0]],
        with_idle=False,
        skipped={},
    )
    assert report.how_long(quick.seconds) == "2 s"
    with_memory_test = dataclasses.replace(
        quick, settings=dataclasses.replace(quick.settings, idle_connections=10_000), with_idle=True
    )
    assert with_memory_test.seconds == quick.seconds + 10  # 10,000 idle connections took 8 to 14 s here


# --------------------------------------------------------------------------------------------- published


def test_the_published_tables_are_what_the_committed_results_files_give() -> None:
    """Every generated table in docs/ is redrawn, byte for byte, from the results file it names."""
    generated = REPO_ROOT / "docs" / "generated"
    latest = results.load(REPO_ROOT / "bench" / "results" / "latest.json")
    assert (generated / "bench" / "summary.md").read_text() == report.markdown(
        latest,
        [info.name for info in latest.targets] + list(latest.skipped),
        "bench/results/latest.json",
    )
    echo_results = results.read_document(REPO_ROOT / "bench" / "results" / "echo.json", "echo")
    for name, text in report.echo_markdown(echo_results).items():
        assert (generated / "echo" / name).read_text() == text, name
    for parser_results_path in (REPO_ROOT / "bench" / "results").glob("parser_micro-*.json"):
        parser_results = results.read_document(parser_results_path, "parser_micro")
        table = generated / f"{parser_results_path.stem}.md"
        assert table.read_text() == report.parser_micro_markdown(parser_results)
    abuse_results = results.read_document(REPO_ROOT / "bench" / "results" / "abuse.json", "abuse")
    assert (generated / "abuse.md").read_text() == abuse.markdown(abuse_results)
    costs_results = results.read_document(REPO_ROOT / "bench" / "results" / "costs.json", "costs")
    assert (generated / "costs.md").read_text() == costs.markdown(costs_results, "bench/results/costs.json")
    router_path = REPO_ROOT / "bench" / "results" / "router_micro.json"
    router_results = results.read_document(router_path, "router_micro")
    assert (generated / "router_micro.md").read_text() == router_micro.markdown(router_results)


def test_only_published_figures_say_rerun_with_a_make_target() -> None:
    """Every harness that says how to rerun it names its make target under published figures only; under an
    exploratory run's, its own command line, which redoes that run (the make target would publish another)."""
    pages: dict[str, Callable[[dict[str, Any]], str]] = {
        "costs": lambda contents: costs.markdown(contents, "costs.json"),
        "abuse": abuse.markdown,
        "router_micro": router_micro.markdown,
        "sendfile_micro": sendfile_micro.markdown,
        "parser_micro-phase3_http_parse": report.parser_micro_markdown,
        "echo": lambda contents: "".join(report.echo_markdown(contents).values()),
    }
    typed = [str(REPO_ROOT / ".venv" / "bin" / "python"), "-m", "bench.router_micro", "--name", "my try"]
    for name, page in pages.items():
        published = json.loads((REPO_ROOT / "bench" / "results" / f"{name}.json").read_text())
        assert "`make bench-" in page(published), name
        exploratory = page({**published, "command": typed})
        assert "make bench-" not in exploratory, name
        assert "`.venv/bin/python -m bench.router_micro --name 'my try'`" in exploratory, name


def test_the_workers_page_prints_plain_and_gives_a_command_that_measures_its_phase() -> None:
    contents = results.read_document(REPO_ROOT / "bench" / "results" / "workers.json", "workers")
    contents["settings"]["phase"] = "phase6_perf"
    page = workers.markdown(contents, "workers.json")
    shown = results.for_terminal(page)
    for machinery in ("<!--", "--8<--", "{#workers-"):  # the docs build reads them; a reader never sees them
        assert machinery in page and machinery not in shown
    assert "\n### The trap: closing one SO_REUSEPORT listener\n\nTwo listeners" in shown
    assert "\n\n\n" not in shown

    found = re.search(r"on a machine with 16 CPUs: `([^`]+)`", shown)
    assert found is not None
    command = shlex.split(found.group(1))
    assert command[:3] == [".venv/bin/python", "-m", "bench.workers"]
    options = workers.parse_arguments(command[3:])
    assert (options.phase, options.server_cpus, options.client_cpus) == ("phase6_perf", "0-7", "8-15")
    assert (options.workers, options.wrk_threads) == ("1,2,4,8", 8)


def test_the_abuse_table_has_an_attack_per_row_and_a_label_per_column() -> None:
    contents = results.document(
        "abuse",
        "abuse",
        [],
        {},
        {},
        labels={
            "before (abc1234)": {"figures": {"attack one": "dead", "attack two": "0"}},
            "after": {"figures": {"attack one": "serving", "attack three": "1.0 s"}},
        },
    )
    lines = abuse.markdown(contents).splitlines()
    assert lines[:2] == ["| attack | before (abc1234) | after |", "|:--|--:|--:|"]
    assert lines[2:5] == [
        "| attack one | dead | serving |",
        "| attack two | 0 | not measured |",
        "| attack three | not measured | 1.0 s |",
    ]
    assert abuse.parse_arguments(["--label", "after"]).phase_dir == REPO_ROOT / "phase3_http_parse"
    with pytest.raises(SystemExit):
        abuse.parse_arguments([])  # a run needs a label


def test_every_harness_writes_the_same_envelope(tmp_path: Path) -> None:
    contents = results.document("echo", "echo", ["python"], {"pinned": True}, {"runs": 1}, results=[])
    assert list(contents)[:7] == [
        "schema_version",
        "harness",
        "name",
        "created",
        "command",
        "machine",
        "settings",
    ]
    assert {"cpu_model", "cores", "kernel", "python", "interpreter", "pinned"} <= set(contents["machine"])
    path = tmp_path / "echo.json"
    results.write_document(contents, path)
    assert results.read_document(path, "echo") == contents
    with pytest.raises(results.SchemaError, match="written by the 'echo' harness"):
        results.read_document(path, "parser_micro")
    assert _results().to_json()["harness"] == "http"


def test_a_small_harness_saves_an_exploratory_run_apart_and_publishes_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    page = tmp_path / "docs" / "toy.md"
    parser = argparse.ArgumentParser()
    results.add_publishing_options(parser, "toy_micro", "make bench-toy")

    def measure(results_file: Path) -> dict[str, Any]:
        return results.document("toy_micro", "toy_micro", ["toy"], {}, {}, figure=7)

    head = "<!-- --8<-- [start:toy] -->\n### Toy {#toy}\n\n"  # what only the docs build reads

    def pages(contents: dict[str, Any], source: str) -> dict[Path, str]:
        return {page: f"{head}figure {contents['figure']}, from {source}\n"}

    assert results.save_and_publish(parser.parse_args(["--name", "try"]), "toy_micro", measure, pages) == 0
    saved = tmp_path / "results" / "exploratory-toy_micro-try.json"
    assert saved.is_file() and not page.exists()  # exploratory: the results file, nothing the docs show
    # The terminal shows the page as the docs render it: no snippet marker, no anchor.
    assert f"wrote {saved}\n### Toy\n\nfigure 7, from {saved}\n\n" == capsys.readouterr().out

    def measure_nothing(results_file: Path) -> dict[str, Any]:
        raise AssertionError("--from-results measures nothing")

    options = parser.parse_args(["--from-results", str(saved), "--publish"])
    results.save_and_publish(options, "toy_micro", measure_nothing, pages)
    assert page.read_text() == f"{head}figure 7, from {saved}\n"
    assert [path.name for path in (tmp_path / "results").iterdir()] == [saved.name]


# --------------------------------------------------------------------------------------------- disturbed runs


@dataclasses.dataclass
class _Attempt:
    other_cpu_share: float


def test_a_disturbed_run_is_repeated_and_the_quietest_kept() -> None:
    shares = iter([0.9, 0.5, 0.3])
    said: list[float] = []
    kept, discarded = cpu.quietest_of(lambda: _Attempt(next(shares)), cpu.RepeatBudget(10), said.append)
    assert kept.other_cpu_share == 0.3 and [a.other_cpu_share for a in discarded] == [0.9, 0.5]
    assert said == [0.9, 0.5]  # at most NOISY_REPEATS repeats, each announced

    budget = cpu.RepeatBudget(0)  # a busy machine has used up the bench's repeats: keep what we have
    kept, discarded = cpu.quietest_of(lambda: _Attempt(0.9), budget, said.append)
    assert kept.other_cpu_share == 0.9 and discarded == []
    quiet, _ = cpu.quietest_of(lambda: _Attempt(0.01), cpu.RepeatBudget(10), said.append)
    assert quiet.other_cpu_share == 0.01 and len(said) == 2


def test_echo_runs_measure_the_cpu_of_the_rest_of_the_machine() -> None:
    figures = echo.RunFigures(1, 1, 1, 0, 10, 1.0, 10.0, None, None, None, None, None)
    assert figures.other_cpu_share == 0.0  # measured by nothing: never counted as disturbed
    disturbed = dataclasses.replace(
        figures, wall_s=2.0, server_cpu_s=0.5, client_cpu_s=0.5, machine_cpu_s=2.0
    )
    assert disturbed.other_cpu_share == 0.5


def test_echo_notes_say_how_many_runs_were_repeated() -> None:
    source = "bench/results/echo.json"
    echo_results = results.read_document(REPO_ROOT / source, "echo")
    for cell in echo_results["results"]:
        cell["discarded_runs"] = []
    assert "discarded and repeated" not in report.method_note(echo_results, source)
    echo_results["results"][0]["discarded_runs"] = [{}, {}]
    assert "2 run(s) disturbed by other processes (more than 25% of a core)" in report.method_note(
        echo_results, source
    )


# --------------------------------------------------------------------------------------------- parser


def test_parser_micro_measures_the_newest_phase_with_a_protocol_unless_told() -> None:
    newest = newest_phase_with(REPO_ROOT, "protocol.py")
    assert newest is not None
    assert parser_micro.parse_arguments([]).phase == newest.name
    assert parser_micro.parse_arguments(["--phase", "phase3_http_parse"]).phase == "phase3_http_parse"
    with pytest.raises(SystemExit):
        parser_micro.parse_arguments(["--phase", "phase1_blocking_echo"])  # it has no protocol.py


def test_the_micro_harnesses_time_every_variant_their_tables_show(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each function timed is called once, not timed (a microsecond each), so this checks what is measured and
    tabulated, never how fast."""

    def call_once(function: Callable[[], object], repeats: int = 1, target_seconds: float = 0.0) -> float:
        function()
        return 1e-6

    monkeypatch.setattr(parser_micro, "seconds_per_call", call_once)
    monkeypatch.setattr(router_micro, "seconds_per_call", call_once)
    parser_micro.load_protocol("phase3_http_parse")
    figures = parser_micro.run()
    rows = {key: len(figures[key]) for key in figures}
    assert rows == {"end_to_end": 4 * 3, "head_extraction": 2 * 4, "responses": 3, "byte_at_a_time": 3 * 2}
    settings = {"phase": "phase3_http_parse", "repeats": 1, "target_seconds": 0.0}
    contents = results.document("parser_micro", "test", [], {}, settings, **figures)
    assert "| browser GET | memoryview fields (zero-copy) | 1.00 |" in report.parser_micro_markdown(contents)

    router = importlib.import_module("phase4_routing.router")
    # Every router must give the same answers before it is timed: run() raises otherwise.
    lookups = router_micro.run(router, repeats=1, target_seconds=0.0)
    assert len(lookups["lookups"]) == 2 * 3 * 2 * 4 - 3 * 2  # no dict router for parametrized routes
    contents = results.document("router_micro", "test", [], {"werkzeug": "test"}, {"repeats": 1}, **lookups)
    assert "| parametrized | 1,000 | miss | 100 | n/a | 100 | 100 |" in router_micro.markdown(
        contents
    )  # 1 µs / 10


# --------------------------------------------------------------------------------------------- sendfile


def test_sendfile_micro_sends_every_byte_both_ways_and_tabulates_them() -> None:
    """A few files each way: the reader counts every byte (run() raises otherwise); the pinning is undone."""
    cpus = sorted(os.sched_getaffinity(0))
    methods = sendfile_micro.run(files=20, repeats=2, sender_cpu=cpus[-1], reader_cpu=cpus[0])
    assert os.sched_getaffinity(0) == set(cpus)
    assert [method["method"] for method in methods] == [sendfile_micro.SENDFILE, sendfile_micro.READ_AND_SEND]
    assert [method["bytes_through_user_space_per_file"] for method in methods] == [0, 64 * 1024]
    for method in methods:
        assert len(method["repeats"]) == 2
        for repeat in method["repeats"]:
            assert repeat["bytes_received"] == 20 * 64 * 1024
            assert repeat["user_s"] >= 0 and repeat["system_s"] >= 0
    settings = {"files": 20, "repeats": 2, "file_bytes": 64 * 1024, "sender_cpu": 1, "reader_cpu": 0}
    table = sendfile_micro.markdown(
        results.document("sendfile_micro", "test", [], {}, settings, methods=methods)
    )
    assert (
        "| `os.sendfile` | 0 |" in table
        and "| `os.preadv into a buffer + socket.sendall` | 65,536 |" in table
    )


# --------------------------------------------------------------------------------------------- TLS


def test_tls_io_answers_every_request_through_both_engines_and_counts_their_system_calls() -> None:
    """A few requests each way and mode: the server counts every answer (run() raises otherwise), and the
    traced repeat sees each engine's own calls: OpenSSL's read and write on the descriptor for the SSLSocket,
    our recvfrom and sendto for the SSLObject."""
    require_tool("strace")
    cpus = sorted(os.sched_getaffinity(0))
    engines = tls_io.run(requests=64, repeats=1, server_cpu=cpus[-1], client_cpu=cpus[0])
    assert [(entry["engine"], entry["depth"]) for entry in engines] == [
        (tls_io.SSLSOCKET, 1),
        (tls_io.SSLOBJECT, 1),
        (tls_io.SSLSOCKET, 16),
        (tls_io.SSLOBJECT, 16),
    ]
    for entry in engines:
        (repeat,) = entry["repeats"]
        assert repeat["requests"] == 64 and repeat["user_s"] >= 0 and repeat["system_s"] >= 0
        calls = entry["traced"]["system_calls"]
        ours = {"recvfrom", "sendto"} if entry["engine"] == tls_io.SSLOBJECT else {"read", "write"}
        assert ours <= set(calls), (entry["engine"], calls)
    settings = {"requests": 64, "repeats": 1, "server_cpu": 1, "client_cpu": 0}
    table = tls_io.markdown(
        results.document("tls_io", "test", [], {}, settings, engines=engines, tls="TLS 1.3")
    )
    assert table.count("| keep-alive |") == 2 and table.count("| pipelined, 16 per write |") == 2


# --------------------------------------------------------------------------------------------- options


def test_parse_cpus_reads_taskset_lists() -> None:
    assert parse_cpus("1") == {1}
    assert parse_cpus("0-2,5") == {0, 1, 2, 5}


def test_select_expands_groups_and_rejects_unknown_names() -> None:
    phase = targets.Target("phase9_test", "phase", "test", lambda port, scratch, static_dir, workers: [])
    assert [t.name for t in targets.select(["phases", "stdlib"], [phase])] == ["phase9_test", "stdlib"]
    assert len(targets.select(["all"], [phase])) == len(targets.PEERS) + 1
    with pytest.raises(ValueError, match="unknown target 'nope'"):
        targets.select(["nope"], [phase])


# The peers' command lines with `--workers 1`, STATIC standing for the static files' directory.
UVICORN = (
    f"{sys.executable} -m uvicorn --host 127.0.0.1 --port 0 --loop uvloop --http httptools --lifespan off"
    " --no-access-log --log-level warning --backlog 2048 --timeout-keep-alive 75"
)
ONE_WORKER_PEER_COMMANDS = {
    "hyper": f"{targets.HYPER_BINARY} --host 127.0.0.1 --port 0 --static-dir STATIC",
    "granian": f"{sys.executable} -m granian --interface rsgi --host 127.0.0.1 --port 0 --http 1 --no-ws"
    " --workers 1 --runtime-mode st --runtime-threads 1 --loop uvloop --backlog 2048 --backpressure 16384"
    " --no-access-log --log-level warning --static-path-route /static --static-path-mount STATIC"
    " bench.peers.rsgi_app:app",
    "uvicorn": f"{UVICORN} bench.peers.asgi_app:app",
    "starlette": f"env BENCH_STATIC_DIR=STATIC {UVICORN} bench.peers.starlette_app:app",
    "aiohttp": f"{sys.executable} -m bench.peers.aiohttp_app --host 127.0.0.1 --port 0 --static-dir STATIC",
    "gunicorn": f"{sys.executable} -m gunicorn --bind 127.0.0.1:0 --worker-class gthread --workers 1"
    " --threads 4 --worker-connections 16384 --keep-alive 75 --backlog 2048 --log-level warning"
    " bench.peers.wsgi_app:app",
    "stdlib": f"{sys.executable} -m bench.peers.stdlib_app --host 127.0.0.1 --port 0",
    "floor": f"{sys.executable} -m bench.peers.floor --host 127.0.0.1 --port 0",
}
# What the peers without `--workers 1` in their command line are told for 2 workers, at its end.
TWO_WORKERS_ADDED = {
    "hyper": "--threads 2",
    "uvicorn": "--workers 2",
    "starlette": "--workers 2",
    "floor": "--workers 2",
}


def test_workers_reach_every_target_that_can_run_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(targets, "nginx_path", lambda: "/usr/sbin/nginx")
    static = tmp_path / "static"
    phases = targets.discover_phases()
    for peer in targets.PEERS:
        one, two = (
            " ".join(peer.command(0, tmp_path, static, workers)).replace(str(static), "STATIC")
            for workers in (1, 2)
        )
        if peer.name == "nginx":
            assert one == two == f"/usr/sbin/nginx -p {tmp_path} -c nginx.conf -e {tmp_path}/error.log"
            peer.command(0, tmp_path, static, 2)
            assert "\nworker_processes 2;\n" in (tmp_path / "nginx.conf").read_text()
            peer.command(0, tmp_path, static, 1)
            assert "\nworker_processes 1;\n" in (tmp_path / "nginx.conf").read_text()
            continue
        assert one == ONE_WORKER_PEER_COMMANDS[peer.name]
        if peer.one_process is None:
            assert two != one
            assert two in (
                one.replace("--workers 1", "--workers 2"),
                f"{one} {TWO_WORKERS_ADDED.get(peer.name)}",
            )
        else:  # not measured with 2 workers: the harness skips it with this reason
            assert peer.name in {"aiohttp", "stdlib"} and two == one
    for phase in phases:
        with_one, with_two = (phase.command(0, tmp_path, static, workers) for workers in (1, 2))
        static_option = ["--static-dir", str(static)] if "static_files" in phase.serves else []
        old = [sys.executable, "-m", phase.name, "--host", "127.0.0.1", "--port", "0", *static_option]
        if phase.one_process is None:  # phase 5 on: told the count even when it is 1
            assert (with_one, with_two) == ([*old, "--workers", "1"], [*old, "--workers", "2"])
        else:
            assert with_one == with_two == old
    by_name = {target.name: target for target in [*phases, *targets.PEERS]}
    assert by_name["phase3_http_parse"].one_process and by_name["phase5_concurrency"].one_process is None


def test_with_more_than_one_worker_a_one_process_target_is_skipped_with_the_reason() -> None:
    require_tool("wrk")
    require_tool("taskset")
    cpu = str(min(os.sched_getaffinity(0)))
    options = ["--targets", "aiohttp,floor", "--server-cpus", cpu, "--client-cpus", cpu]
    two = bench_main.plan(bench_main.parse_arguments([*options, "--workers", "2"]))
    assert [target.name for target in two.targets] == ["floor"] and two.settings.workers == 2
    assert two.skipped == {
        "aiohttp": "runs one worker, not --workers 2: aiohttp's web.run_app serves from one process"
    }
    one = bench_main.plan(bench_main.parse_arguments(options))
    assert [target.name for target in one.targets] == ["aiohttp", "floor"] and one.settings.workers == 1


def test_the_runs_are_interleaved_target_by_target_within_each_scenario() -> None:
    def target(name: str, serves: frozenset[str]) -> targets.Target:
        return targets.Target(
            name, "peer", name, lambda port, scratch, static_dir, workers: [], serves=serves
        )

    routed, plain = target("routed", frozenset({"routing"})), target("plain", frozenset())
    by_name = {scenario.name: scenario for scenario in wrk.SCENARIOS}
    order = bench_main.schedule([routed, plain], [by_name["keepalive-64"], by_name["route-64"]], 2)
    assert [(scenario.name, number, target.name) for scenario, number, target in order] == [
        ("keepalive-64", 1, "routed"),
        ("keepalive-64", 1, "plain"),
        ("keepalive-64", 2, "routed"),
        ("keepalive-64", 2, "plain"),
        ("route-64", 1, "routed"),  # plain does not serve the route: not run at all
        ("route-64", 2, "routed"),
    ]


PYTHON_PEERS = {"granian", "uvicorn", "starlette", "aiohttp", "gunicorn", "stdlib", "floor"}


def test_a_scenario_that_needs_two_things_measures_the_targets_that_serve_both() -> None:
    browser = next(scenario for scenario in wrk.SCENARIOS if scenario.name == "browser")
    assert set(browser.needs) == {"routing", "static_files"}

    def target(kind: Literal["phase", "peer"], serves: set[str]) -> targets.Target:
        return targets.Target(
            "t", kind, "t", lambda port, scratch, static_dir, workers: [], serves=frozenset(serves)
        )

    assert (
        target("phase", set()).not_served(browser.needs)
        == "its CAPABILITIES have no 'routing', 'static_files'"
    )
    assert target("phase", {"routing"}).not_served(browser.needs) == "its CAPABILITIES have no 'static_files'"
    assert target("peer", {"routing"}).not_served(browser.needs) == "set up here without 'static_files'"
    assert target("peer", set()).not_served(browser.needs) == "set up here to serve GET / only"
    assert target("peer", set(targets.SERVABLE)).not_served(browser.needs) is None
    # Every scenario has nginx and at least one Python peer to compare with.
    peers = {peer.name: peer for peer in targets.PEERS}
    for scenario in wrk.SCENARIOS:
        serving = {name for name, peer in peers.items() if peer.not_served(scenario.needs) is None}
        assert "nginx" in serving and serving & PYTHON_PEERS, scenario.name


class ScriptedHandler(BaseHTTPRequestHandler):
    """Answers each path as `answers` says (status, Content-Type, body); a 404 for any other."""

    protocol_version = "HTTP/1.1"
    answers: ClassVar[dict[str, tuple[int, str, bytes]]] = {}

    def do_GET(self) -> None:
        status, content_type, body = self.answers.get(self.path, (404, "text/plain", b"Not Found\n"))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_check_refuses_a_target_that_answers_a_request_of_its_scenario_wrongly() -> None:
    """Before a run, a target must answer every request of the scenario with the bench's status, type and
    bytes: a body that differs by a space, a wrong type, a file with one wrong byte are all refused."""
    static = targets.STATIC_FILE
    right = {
        "/": (200, "text/plain; charset=utf-8", b"Hello, World!"),
        "/users/123": (200, "application/json", b'{"id": 123}'),
        static.url_path: (200, "application/octet-stream", static.content()),
    }
    one_byte_off = static.content()[:-1] + b"?"
    wrong = {
        "/users/123": [
            ((200, "application/json", b'{"id":123}'), "body b'{\"id\":123}'"),  # JSONResponse's
            ((200, "text/plain", b'{"id": 123}'), "Content-Type 'text/plain'"),
            ((404, "text/plain", b"Not Found\n"), "answered 404"),
        ],
        static.url_path: [((200, "application/octet-stream", one_byte_off), "its 65,536 bytes")],
    }
    ScriptedHandler.answers = dict(right)
    with serving(ScriptedHandler) as port:
        assert targets.check_answers(port, list(right)) is None
        assert targets.check_hello(port) is None
        for path, answers in wrong.items():
            for answer, said in answers:
                ScriptedHandler.answers = {**right, path: answer}
                problem = targets.check_answers(port, list(right))
                assert problem is not None and problem.startswith(f"GET {path} answered") and said in problem


def test_the_floor_answers_the_hello_world_and_16_pipelined_requests() -> None:
    """The floor passes the harness's readiness check, with the headers our phases send, answers each of 16
    pipelined requests sent at once (exactly 16 responses, nothing more), and closes when asked to."""
    floor = PhaseProcess("bench.peers.floor", root=REPO_ROOT)  # started as the harness starts it
    try:
        assert targets.check_hello(floor.port) is None
        with socket.create_connection(floor.address, timeout=10) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n" * 16)
            parser = h11.Connection(h11.CLIENT)
            for _ in range(16):
                parser.send(h11.Request(method="GET", target="/", headers=[("Host", "test")]))
                parser.send(h11.EndOfMessage())
                status, header_names, body = next_response(parser, client)
                assert (status, header_names, body) == (
                    200,
                    [b"date", b"content-type", b"content-length"],
                    targets.EXPECTED_BODY,
                )
                parser.start_next_cycle()
            assert parser.trailing_data == (b"", False)
            client.settimeout(0.2)
            with pytest.raises(TimeoutError):  # no 17th response on its way
                client.recv(1)
        with socket.create_connection(floor.address, timeout=10) as client:  # the churn scenario's request
            client.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            parser = h11.Connection(h11.CLIENT)
            parser.send(
                h11.Request(method="GET", target="/", headers=[("Host", "test"), ("Connection", "close")])
            )
            parser.send(h11.EndOfMessage())
            status, header_names, body = next_response(parser, client)
            assert (status, header_names[-1], body) == (200, b"connection", targets.EXPECTED_BODY)
            assert client.recv(1) == b""  # then closed
    finally:
        floor.stop()


def next_response(parser: h11.Connection, client: socket.socket) -> tuple[int, list[bytes], bytes]:
    """The status, header names and body of the next response `parser` reads from `client`."""
    status, header_names, body = 0, [], b""
    while not isinstance(event := parser.next_event(), h11.EndOfMessage):
        if event is h11.NEED_DATA:
            parser.receive_data(client.recv(65536))
        elif isinstance(event, h11.Response):
            status, header_names = event.status_code, [name for name, _ in event.headers]
        elif isinstance(event, h11.Data):
            body += event.data
    return status, header_names, body


def test_only_a_published_flamegraph_goes_into_the_docs() -> None:
    published = flame.default_output("phase3_http_parse", "keepalive-64", publish=True)
    assert published == REPO_ROOT / "docs" / "assets" / "flame" / "phase3_http_parse.svg"
    exploratory = flame.default_output("phase3_http_parse", "keepalive-64", publish=False)
    assert not exploratory.is_relative_to(REPO_ROOT / "docs")


# --------------------------------------------------------------------------------------------- end to end


@pytest.mark.needs("http")
def test_the_real_harness_measures_a_phase_and_a_peer(phase: Phase, tmp_path: Path) -> None:
    """`python -m bench` for about a second against this phase and the standard library's server: an
    exploratory run, which writes its own results file and nothing the docs show; then --publish on it."""
    require_tool("wrk")
    require_tool("taskset")
    if phase.root != REPO_ROOT:
        pytest.skip("the bench measures the phases of this repository (it starts them from its root)")
    command = [
        sys.executable, "-m", "bench", "--targets", f"{phase.name},stdlib",
        "--scenarios", "keepalive-64,static-64k,browser,idle",
        "--runs", "1", "--duration", "1", "--warmup", "0", "--idle-connections", "200",
        "--name", "smoke", "--output-root", str(tmp_path),
    ]  # fmt: skip
    finished = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=100, check=False
    )
    assert finished.returncode == 0, finished.stderr
    written = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_file())
    assert written == ["bench/results/exploratory-smoke.json"]  # no latest.json, nothing under docs/
    measured = results.load(tmp_path / "bench" / "results" / "exploratory-smoke.json")

    assert [target.name for target in measured.targets] == [phase.name, "stdlib"]
    for name in (phase.name, "stdlib"):
        measurement = measured.measurement(name, "keepalive-64")
        assert measurement is not None and measurement.failure is None, measurement
        (run,) = measurement.runs
        assert run.requests > 0 and run.error_count == 0
        assert run.server_cpu_s > 0 and run.client_cpu_s > 0
        assert set(run.latency_us) >= {"p50", "p90", "p99", "p99.9"}
        assert measurement.peak_rss_bytes and measurement.wrk_command[:3] == ["taskset", "--cpu-list", "0"]
        idle = measured.idle_for(name)
        assert idle is not None and idle.failure is None, idle
        assert idle.connections_held == 200
    static = measured.measurement(phase.name, "static-64k")
    assert static is not None
    if "static_files" in phase.capabilities:  # served from the harness's directory, checked byte for byte
        assert static.failure is None and static.not_served is None, static
        assert static.runs[0].bytes >= static.runs[0].requests * targets.STATIC_FILE_BYTES
    else:
        assert static.not_served and not static.runs and not static.server_command
    browser = measured.measurement(phase.name, "browser")
    assert browser is not None
    if {"routing", "static_files"} <= phase.capabilities:  # every path of the mix checked, then measured
        assert browser.failure is None and browser.not_served is None, browser
        assert browser.runs[0].requests > 0 and browser.runs[0].error_count == 0
        assert browser.wrk_command[-len(wrk.PAGE_LOAD) :] == list(wrk.PAGE_LOAD)
    else:
        assert browser.not_served and not browser.runs
    for scenario in ("static-64k", "browser"):
        stdlib = measured.measurement("stdlib", scenario)
        assert stdlib is not None and stdlib.not_served == "set up here to serve GET / only"
    assert measured.machine["wrk"] and measured.settings.runs == 1
    assert phase.name in finished.stdout  # the one-screen summary

    exploratory = tmp_path / "bench" / "results" / "exploratory-smoke.json"
    redraw = [sys.executable, "-m", "bench", "--from-results", str(exploratory), "--publish"]
    subprocess.run(
        [*redraw, "--output-root", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, timeout=100, check=True
    )
    tables = tmp_path / "docs" / "generated" / "bench"
    assert phase.name in (tables / "summary.md").read_text()
    assert "bench/results/exploratory-smoke.json" in (tables / "summary.md").read_text()
    assert "stdlib" in (tables / f"{phase.name}.md").read_text()
    assert (tmp_path / "docs" / "assets" / "bench" / "throughput.svg").is_file()


def test_an_exploratory_run_cannot_write_the_published_files() -> None:
    """Whatever the name asked for, a run without --publish writes bench/results/exploratory-*.json only."""
    options = bench_main.parse_arguments(["--targets", "stdlib", "--name", "latest", "--output-root", "x"])
    assert not options.publish
    name = results.result_file_name(bench_main.PUBLISHED_NAME, options.name, publish=options.publish)
    assert name == "exploratory-latest"
    with pytest.raises(SystemExit):
        bench_main.parse_arguments(["--quick", "--publish"])


# --------------------------------------------------------------------------------------------- interpreters


def test_an_interpreter_record_says_what_it_is_and_how_it_was_built() -> None:
    record = targets.interpreter_record(sys.executable)
    assert record["executable"] == sys.executable and record["version"] == platform.python_version()
    assert record["implementation"] == "CPython" and record["compiler"]
    assert {"CONFIG_ARGS", "PY_CFLAGS_NODIST", "PY_LDFLAGS_NODIST", "Py_ENABLE_SHARED"} <= set(
        record["sysconfig"]
    )
    assert record["pgo"] in {"yes", "no", "unknown"} and record["lto"] in {"yes", "no", "unknown"}
    assert record["build_source"]
    assert results.host_facts()["interpreter"] == record  # in every results file
    with pytest.raises(targets.InterpreterError, match="/nowhere/python"):
        targets.interpreter_record("/nowhere/python")


SHARED = {"Py_ENABLE_SHARED": 1, "INSTSONAME": "libpython3.11.so.1.0"}
LOADED = ["/opt/python/lib/libpython3.11.so.1.0"]


def test_pgo_and_lto_are_read_from_config_args_and_never_claimed_for_another_build() -> None:
    def build(config_args: str, loaded: list[str] = LOADED, **variables: object) -> tuple[str, str]:
        read = targets.build_of({**SHARED, "CONFIG_ARGS": config_args, **variables}, loaded)
        return read["pgo"], read["lto"]

    assert build("'--prefix=/opt/python' '--enable-shared'") == ("no", "no")  # pyenv's, here
    assert build("'--enable-shared' '--enable-optimizations' '--with-lto'") == ("yes", "yes")  # Docker's
    assert build("'--enable-optimizations' '--with-lto=thin'") == ("yes", "yes")
    assert build("'--enable-optimizations=no' '--with-lto=no'") == ("no", "no")
    assert build("'--with-lto'", [], Py_ENABLE_SHARED=0) == ("no", "yes")  # linked statically: no libpython
    assert build("", PY_LDFLAGS_NODIST="-flto -fuse-linker-plugin") == ("no", "yes")  # what --with-lto adds
    # Debian's /usr/bin/python3.X: its sysconfig is the shared libpython's, which it does not load.
    debian = targets.build_of({**SHARED, "CONFIG_ARGS": "'--enable-shared' '--with-lto'"}, [])
    assert (debian["pgo"], debian["lto"]) == ("unknown", "unknown")
    assert "libpython3.11.so.1.0, which this executable does not load" in debian["build_source"]


def test_the_python_peers_packages_are_the_bench_extras_pins() -> None:
    modules = {module for peer in targets.PEERS for module in peer.python_modules}
    assert {"granian", "uvicorn", "uvloop", "httptools", "starlette", "aiohttp", "gunicorn"} == modules
    pins = targets.peer_requirements(modules)
    assert len(pins) == len(modules) and all(re.fullmatch(r"[a-z]+==[\d.]+", pin) for pin in pins)
    assert targets.peer_requirements(["uvloop"]) == [pin for pin in pins if pin.startswith("uvloop==")]
    with pytest.raises(ValueError, match="pins no numpy"):
        targets.peer_requirements(["numpy"])
    assert not any(peer.python_modules for peer in targets.PEERS if peer.name in {"nginx", "hyper", "stdlib"})


def another_interpreter() -> str:
    """An interpreter other than this one (Debian's /usr/bin/python3.11 here), or skip."""
    others = interpreters.found_here([])[1:]
    if not others:
        pytest.skip("no Python interpreter here besides this one (pyenv's, or /usr/bin/python3.X from 3.11)")
    return others[-1]


def test_python_runs_the_phases_and_the_peers_from_a_venv_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A venv made once and reused (without pip when nothing is to be installed: ensurepip alone takes
    half a minute on a busy machine); a Python peer started from it; the phases on the interpreter itself."""
    require_tool("taskset")
    other = another_interpreter()
    venv_python = targets.peer_venv(other, [], tmp_path)
    record = targets.interpreter_record(other)
    assert venv_python == str(tmp_path / targets.venv_name(record) / "bin" / "python")
    assert record["version"] in targets.venv_name(record)
    made = (tmp_path / targets.venv_name(record) / "pyvenv.cfg").stat().st_mtime_ns
    assert targets.peer_venv(other, [], tmp_path) == venv_python  # reused, not made again
    assert (tmp_path / targets.venv_name(record) / "pyvenv.cfg").stat().st_mtime_ns == made

    stdlib = targets.run_on(next(peer for peer in targets.PEERS if peer.name == "stdlib"), venv_python)
    cpu = str(min(os.sched_getaffinity(0)))
    server = targets.start(stdlib, cpu, tmp_path / "scratch", tmp_path)
    try:
        assert psutil.Process(server.pid).cmdline()[:3] == [venv_python, "-m", "bench.peers.stdlib_app"]
        assert os.path.realpath(f"/proc/{server.pid}/exe") == os.path.realpath(other)
        assert targets.check_hello(server.port) is None
    finally:
        server.stop()

    # --python: the phases and the peers that import nothing else on it; the others on its venv.
    asked: list[list[str]] = []

    def venv(python: str, requirements: list[str], root: Path = tmp_path) -> str:
        asked.append(requirements)
        return venv_python

    monkeypatch.setattr(targets, "peer_venv", venv)
    chosen = targets.select(["phase6_perf", "nginx", "stdlib", "uvicorn"], targets.discover_phases())
    moved, made_venv = targets.on_interpreter(chosen, other)
    assert made_venv == venv_python and asked == [
        targets.peer_requirements(["uvicorn", "uvloop", "httptools"])
    ]
    static = tmp_path / "static"
    first_words = {target.name: target.command(0, tmp_path, static, 1)[0] for target in moved}
    assert (
        first_words["phase6_perf"] == first_words["stdlib"] == other and first_words["uvicorn"] == venv_python
    )
    assert first_words["nginx"] == chosen[1].command(0, tmp_path, static, 1)[0]  # not Python: as it was
    uvicorn = moved[3].missing()  # looked for in the venv, which holds nothing here
    assert uvicorn is not None and "uvicorn" in uvicorn and venv_python in uvicorn


def test_the_bench_runs_on_the_python_asked_for_and_records_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool("wrk")
    require_tool("taskset")
    other = another_interpreter()
    cpu = str(min(os.sched_getaffinity(0)))
    options = ["--targets", "phase6_perf,stdlib", "--server-cpus", cpu, "--client-cpus", cpu]
    plan = bench_main.plan(bench_main.parse_arguments([*options, "--python", other]))
    assert plan.interpreter is not None and plan.interpreter["executable"] == other
    assert plan.interpreter["peer_venv"] is None  # neither imports a package: no venv needed
    assert all(target.command(0, tmp_path, tmp_path, 1)[0] == other for target in plan.targets)
    assert bench_main.plan(bench_main.parse_arguments(options)).interpreter is None  # this one, as before

    # --python fastest: the interpreter that the published comparison names.
    published = tmp_path / "interpreters.json"
    monkeypatch.setattr(bench_main, "INTERPRETERS_RESULTS", published)
    # None measured yet, or the fastest measured elsewhere: this interpreter, and the run says why.
    assert bench_main.interpreter_asked("fastest") == (sys.executable, None)
    elsewhere = {"executable": "/nowhere/python"}
    results.write_document(results.document("interpreters", "x", [], {}, {}, fastest=elsewhere), published)
    assert bench_main.interpreter_asked("fastest") == (sys.executable, None)
    results.write_document(
        results.document("interpreters", "x", [], {}, {}, fastest={"executable": other}), published
    )
    python, chosen_as = bench_main.interpreter_asked("fastest")
    assert python == other and chosen_as is not None and "the fastest build in" in chosen_as
    with pytest.raises(bench_main.UsageError, match="no such interpreter"):
        bench_main.interpreter_asked("/nowhere/python")


VENV_RECORD = {
    "name": "venv 3.11.7",
    "executable": str(REPO_ROOT / ".venv" / "bin" / "python"),
    "real_executable": "/root/.pyenv/versions/3.11.7/bin/python3.11",
    "version": "3.11.7",
    "implementation": "CPython",
    "pgo": "no",
    "lto": "no",
    "build_source": "read from its sysconfig: CONFIG_ARGS and the compiler flags",
}
DEBIAN_RECORD = {
    **VENV_RECORD,
    "name": "/usr/bin 3.11.2",
    "executable": "/usr/bin/python3.11",
    "real_executable": "/usr/bin/python3.11",
    "version": "3.11.2",
    "pgo": "unknown",
    "lto": "unknown",
    "build_source": "its sysconfig describes a build with a shared libpython3.11.so.1.0, which this"
    " executable does not load: its own build is not on record",
}


def test_the_interpreters_page_compares_each_build_with_the_venvs_run_by_run() -> None:
    scenarios = [scenario for scenario in wrk.SCENARIOS if scenario.name in {"keepalive-64", "route-64"}]
    runs = {"venv 3.11.7": [_run(50_000), _run(40_000)], "/usr/bin 3.11.2": [_run(60_000), _run(50_000)]}
    measured = dataclasses.replace(
        _results(),
        machine={**_results().machine, "interpreter": None},
        settings=dataclasses.replace(_results().settings, runs=2, interleaved=True),
        targets=[results.TargetInfo(name, "phase", "phase6_perf on it") for name in runs],
        scenarios=scenarios,
        skipped={},
        measurements=[
            results.Measurement(name, scenario.name, ["python"], ["wrk"], figures, None)
            for scenario in scenarios
            for name, figures in runs.items()
        ],
        idle=[],
    )
    records = [VENV_RECORD, DEBIAN_RECORD]
    best = interpreters.fastest(measured, records)
    assert best is not None and best["executable"] == "/usr/bin/python3.11"
    assert best["against_reference"] == pytest.approx(1.225)  # run by run: 1.2 and 1.25, the median
    contents = results.document(
        "interpreters", "test", [], {}, {}, interpreters=records, fastest=best, http=measured.to_json()
    )
    page = interpreters.markdown(contents, "interpreters.json")
    rows = [line for line in page.splitlines() if line.startswith("| ")]
    assert rows[0] == "| interpreter | version | PGO | LTO | keepalive-64 | route-64 |"
    ratio, same = "1.23\N{MULTIPLICATION SIGN}", "1.00\N{MULTIPLICATION SIGN}"
    debian_ratios = f"{ratio} (1.20\N{MULTIPLICATION SIGN}{report.EN_DASH}1.25\N{MULTIPLICATION SIGN})"
    venv_ratios = f"{same} ({same}{report.EN_DASH}{same})"
    assert (
        rows[1]
        == f"| `/usr/bin/python3.11` | 3.11.2 | unknown | unknown | {debian_ratios} | {debian_ratios} |"
    )
    assert rows[2] == f"| `.venv/bin/python` | 3.11.7 | no | no | {venv_ratios} | {venv_ratios} |"
    figures = f"22k (20k{report.EN_DASH}24k)"  # requests per server CPU-second
    assert f"| `/usr/bin/python3.11` | {figures} | {figures} |" in page
    fastest = "Fastest: `/usr/bin/python3.11`, CPython 3.11.2 (PGO unknown, LTO unknown)"
    assert f"{fastest}, {ratio} the reference" in page
    assert (
        "- `/usr/bin/python3.11`: its sysconfig describes a build with a shared libpython3.11.so.1.0" in page
    )
    assert (
        "`.venv/bin/python` (CPython 3.11.7, a link to `/root/.pyenv/versions/3.11.7/bin/python3.11`" in page
    )
    assert "Linux 6.1, wrk 4.1.0." in page and "Interpreter:" not in page  # the table says which served

    # A bench page says which interpreter served, under "Measured", instead of the harness's Python.
    served = dataclasses.replace(_results(), machine={**_results().machine, "interpreter": DEBIAN_RECORD})
    bench_page = report.markdown(served, ["phase3_http_parse", "nginx"], "test.json")
    assert "Linux 6.1, wrk 4.1.0." in bench_page
    interpreter = "\nInterpreter: CPython 3.11.2, `/usr/bin/python3.11`; PGO unknown, LTO unknown (its"
    assert f"{interpreter} sysconfig describes a build" in bench_page
    assert "Linux 6.1, Python 3.11.7, wrk 4.1.0." in report.markdown(_results(), ["nginx"], "test.json")


def test_a_page_names_an_interpreter_the_same_way_in_every_clone() -> None:
    """A results file records the interpreter's absolute path, in the clone that measured; the page drawn from
    it must be the same in every clone (the published-tables test redraws them), so a path through a
    repository's venv is shown from the repository's root, whichever clone that was."""
    here = REPO_ROOT / ".venv" / "bin" / "python"
    assert results.in_repository(str(here)) == ".venv/bin/python"
    assert results.in_repository("/elsewhere/clone/.venv/bin/python") == ".venv/bin/python"
    assert (
        results.in_repository("/elsewhere/clone/.bench-venvs/3.11/bin/python")
        == ".bench-venvs/3.11/bin/python"
    )
    assert results.in_repository("/usr/bin/python3.11") == "/usr/bin/python3.11"
