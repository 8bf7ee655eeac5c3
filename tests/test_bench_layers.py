"""bench/layers.py: the rules that give each sample its layer, the table's arithmetic, the page drawn from a
results file, a phase copied elsewhere started from its copy, and one short run for real.

They check the harness's shape, never how fast anything is.
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench import costs, flame, layers, results, targets
from bench.layers import HANDLER, KERNEL, LOOP, OTHER, PARSING, RENDERING, ROUTING, SENDING, Frame
from conftest import require_tool, skip_unless_ci
from tools.phases import REPO_ROOT, phase_capabilities

PHASE_DIR = Path("/repo/phase6_perf")
SOCKET_PY = "/usr/lib/python3.11/socket.py"
JSON_PY = "/usr/lib/python3.11/json/encoder.py"
POSIXPATH_PY = "/usr/lib/python3.11/posixpath.py"


def phase(function: str, file: str, line: int = 1) -> Frame:
    return Frame(function, str(PHASE_DIR / file), line)


# What every sample of a worker has under it: the interpreter starting the module, the worker, the loop.
BASE = [
    Frame("_run_module_as_main", "<frozen runpy>", 198),
    phase("<module>", "__main__.py", 201),
    phase("run_worker_process", "workers.py", 537),
    phase("serve", "server.py", 760),
    phase("Server.serve_forever", "server.py", 257),
]
ANSWERING = [
    *BASE,
    phase("Server.poll_once", "server.py", 283),
    phase("Server.on_readable", "server.py", 369),
    phase("Server.on_data", "server.py", 386),
    phase("Server.process_requests", "server.py", 431),
    phase("Server.answer_batch", "server.py", 452),
]
RESPONDING = [*ANSWERING, phase("Application.respond", "app.py", 109)]


def on_line(text: str) -> layers.SourceLine:
    """A source reader for which the innermost frame's line, whatever it is, reads `text`."""
    return lambda file, line: text


@pytest.mark.parametrize(
    ("stack", "line", "expected"),
    [
        # The kernel: the innermost line makes a system call, wherever it is.
        (
            [*BASE, phase("Server.poll_once", "server.py", 266)],
            "events = self.epoll.poll(t)",
            (KERNEL, "epoll.poll"),
        ),
        (
            [*ANSWERING, phase("Server.send", "server.py", 505)],
            "sent = connection.sock.send(data)",
            (KERNEL, "sock.send"),
        ),
        (
            [*BASE, phase("Server.on_readable", "server.py", 367)],
            "n = connection.sock.recv_into(room)",
            (KERNEL, "sock.recv_into"),
        ),
        (
            [*BASE, phase("Server.send_file", "server.py", 558)],
            "sent = os.sendfile(c.fd, b.fd, 0, 9)",
            (KERNEL, "os.sendfile"),
        ),
        (
            [*BASE, phase("Server.update_interest", "server.py", 596)],
            "self.epoll.modify(fd, interest)",
            (KERNEL, "epoll.modify"),
        ),
        (
            [*BASE, phase("Server.linger", "server.py", 609)],
            "connection.sock.shutdown(socket.SHUT_WR)",
            (KERNEL, "sock.shutdown"),
        ),
        (
            [*BASE, phase("Server.accept_clients", "server.py", 324), Frame("socket.accept", SOCKET_PY, 294)],
            "fd, addr = self._accept()",
            (KERNEL, "self._accept"),
        ),
        (
            [
                *BASE,
                phase("Server.close", "server.py", 627),
                Frame("socket.close", SOCKET_PY, 501),
                Frame("socket._real_close", SOCKET_PY, 497),
            ],
            "_ss.close(self)",
            (KERNEL, "_ss.close"),
        ),
        (
            [
                *BASE,
                phase("Server.beat", "server.py", 307),
                phase("run_worker_process.<locals>.beat", "workers.py", 527),
            ],
            'os.write(ready_fd, b".")',
            (KERNEL, "os.write"),
        ),
        (
            [*RESPONDING, phase("StaticFiles.__call__", "app.py", 209), phase("open_beneath", "app.py", 270)],
            "return os.open(segments[-1], FILE_FLAGS, dir_fd=directory)",
            (KERNEL, "os.open"),
        ),
        (  # an older handler's os.path.realpath: the standard library's Python, then a system call
            [
                *RESPONDING,
                phase("StaticFiles.resolve", "app.py", 218),
                Frame("realpath", POSIXPATH_PY, 416),
                Frame("_joinrealpath", POSIXPATH_PY, 451),
            ],
            "st = os.lstat(newpath)",
            (KERNEL, "os.lstat"),
        ),
        # Elsewhere in the server: the loop, or sending.
        (
            [*BASE, phase("Server.poll_once", "server.py", 267)],
            "now = time.monotonic()",
            (LOOP, "Server.poll_once"),
        ),
        (
            [*BASE, phase("Server.accept_clients", "server.py", 324), Frame("socket.accept", SOCKET_PY, 295)],
            "sock = socket(self.family, self.type, self.proto, fileno=fd)",
            (LOOP, "Server.accept_clients"),
        ),
        (
            [*ANSWERING[:-1], phase("Server.answer_batch", "server.py", 475)],
            'self.send(connection, b"".join(responses))',
            (LOOP, "Server.answer_batch"),
        ),
        (
            [*ANSWERING, phase("Server.send", "server.py", 509)],
            "if sent == len(data):",
            (SENDING, "Server.send"),
        ),
        (
            [*BASE, phase("Server.on_writable", "server.py", 526)],
            "del connection.pending_output[:sent]",
            (SENDING, "Server.on_writable"),
        ),
        # An accessor is its caller's: the loop's clock asks the parser's state.
        (
            [
                *ANSWERING[:-2],
                phase("Server.time_request", "server.py", 414),
                phase("RequestParser.reading_body", "protocol.py", 256),
            ],
            "return FIXED_BODY <= self._state <= TRAILERS",
            (LOOP, "Server.time_request"),
        ),
        # Parsing, routing, the handler, rendering.
        (
            [
                *ANSWERING,
                phase("RequestParser.next_request", "protocol.py", 279),
                phase("RequestParser._read_head", "protocol.py", 365),
                phase("parse_head", "protocol.py", 524),
            ],
            "method, target, version = line.split(' ')",
            (PARSING, "parse_head"),
        ),
        (
            [
                *BASE,
                phase("Server.on_readable", "server.py", 366),
                phase("RequestParser.receive_buffer", "protocol.py", 211),
            ],
            "return memoryview(self._buffer)[self._end :]",
            (PARSING, "RequestParser.receive_buffer"),
        ),
        (
            [*RESPONDING[:-1], phase("Application.respond", "app.py", 101)],
            "rendered = self.rendered_responses.get(key)",
            (ROUTING, "Application.respond"),
        ),
        (
            [
                *RESPONDING,
                phase("Router.lookup", "router.py", 188),
                phase("match_segments", "router.py", 255),
            ],
            "if segment in node.children:",
            (ROUTING, "match_segments"),
        ),
        (
            [
                *RESPONDING,
                phase("Router.lookup", "router.py", 206),
                Frame("__create_fn__.<locals>.__init__", "<string>", 2),
            ],
            "self.handler = handler",
            (ROUTING, "Router.lookup"),
        ),
        (
            [
                *RESPONDING,
                phase("user", "app.py", 162),
                Frame("dumps", "/usr/lib/python3.11/json/__init__.py", 231),
                Frame("JSONEncoder.encode", JSON_PY, 200),
            ],
            "chunks = self.iterencode(o, _one_shot=True)",
            (HANDLER, "user"),
        ),
        (
            [
                *RESPONDING,
                phase("StaticFiles.__call__", "app.py", 216),
                phase("StaticFiles.file_response", "app.py", 229),
                phase("not_modified", "app.py", 282),
                phase("Request.header", "protocol.py", 95),
            ],
            "return self.headers.get(name)",
            (HANDLER, "not_modified"),
        ),
        (
            [*RESPONDING, phase("render", "app.py", 133), phase("render_response", "protocol.py", 795)],
            'lines.append(f"{name}: {value}\\r\\n")',
            (RENDERING, "render_response"),
        ),
        (
            [
                *RESPONDING[:-1],
                phase("Application.respond", "app.py", 100),
                phase("date_line", "protocol.py", 766),
            ],
            "now = int(time.time())",
            (RENDERING, "date_line"),
        ),
        # No frame of the measured phase: other. A file of the same name elsewhere is not the phase's.
        (
            [Frame("_run_module_as_main", "<frozen runpy>", 198), Frame("_run_code", "<frozen runpy>", 88)],
            "exec(code, run_globals)",
            (OTHER, "_run_code"),
        ),
        (
            [Frame("Server.poll_once", "/elsewhere/phase6_perf/server.py", 267)],
            "now = time.monotonic()",
            (OTHER, "Server.poll_once"),
        ),
        ([], "", (OTHER, "(no frame)")),
    ],
)
def test_each_sample_goes_to_one_layer_by_its_innermost_frame(
    stack: list[Frame], line: str, expected: tuple[str, str]
) -> None:
    assert layers.attribute(stack, PHASE_DIR, on_line(line)) == expected


@pytest.mark.parametrize(
    "line",
    [
        "self.close(connection)",  # the server's own methods, in Python
        "self.send(connection, error_response(error))",
        "server.shutdown()",
        "sent = 0",
        "path = os.fspath(path)",  # pure Python, unlike the rest of the os module
        "# os.sendfile copies from the page cache to the socket inside the kernel",
    ],
)
def test_a_python_method_named_like_a_system_call_is_not_one(line: str) -> None:
    stack = [*BASE, phase("Server.on_stop_signal", "server.py", 700)]
    layer, _ = layers.attribute(stack, PHASE_DIR, on_line(line))
    assert layer == LOOP


def test_a_frozen_module_is_read_from_the_standard_library() -> None:
    """os.path.realpath's os.lstat is in `<frozen posixpath>` for py-spy: no file it could name."""
    source = (layers.STDLIB / "posixpath.py").read_text().splitlines()
    line = next(number for number, text in enumerate(source, 1) if text.strip() == "st = os.lstat(newpath)")
    assert layers.source_line("<frozen posixpath>", line).strip() == "st = os.lstat(newpath)"
    stack = [
        *RESPONDING,
        phase("StaticFiles.resolve", "app.py", 218),
        Frame("_joinrealpath", "<frozen posixpath>", line),
    ]
    assert layers.attribute(stack, PHASE_DIR) == (KERNEL, "os.lstat")


def test_every_function_the_rules_name_is_in_phase_6() -> None:
    """A rule for a function the phase renamed would quietly send its samples to its file's default."""
    for file, rules in layers.RULES.items():
        tree = ast.parse((REPO_ROOT / layers.PHASE / file).read_text())
        names = set()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.ClassDef):
                names |= {
                    f"{node.name}.{item.name}" for item in node.body if isinstance(item, ast.FunctionDef)
                }
        named = set(rules) - {layers.ANY}
        assert named <= names, (file, named - names)


def test_the_raw_format_reads_as_py_spy_writes_it() -> None:
    raw = (
        "_run_module_as_main (<frozen runpy>:198);<module> (/work/main/phase6_perf/__main__.py:201);"
        "Server.beat (/work/main/phase6_perf/server.py:307);"
        "run_worker_process.<locals>.beat (/work/main/phase6_perf/workers.py:527) 35\n"
        "\n"
        "render_response (/tmp/before (x)/phase6_perf/protocol.py:808) 1\n"
        "process 42:python;dumps (/usr/lib/python3.11/json/__init__.py:231) 2\n"
    )
    stacks = layers.parse_raw(raw)
    assert [count for _, count in stacks] == [35, 1, 2]
    first, _ = stacks[0]
    assert first[0] == Frame("_run_module_as_main", "<frozen runpy>", 198)
    assert first[-1] == Frame("run_worker_process.<locals>.beat", "/work/main/phase6_perf/workers.py", 527)
    assert stacks[1][0] == [Frame("render_response", "/tmp/before (x)/phase6_perf/protocol.py", 808)]
    assert stacks[2][0][0] == Frame("process 42:python", "", 0)


# --------------------------------------------------------------------------------------------- the table


def profile(samples: dict[str, dict[str, int]]) -> dict[str, Any]:
    every = {layer: samples.get(layer, {}) for layer in layers.LAYER_NAMES}
    return {
        "samples": every,
        "requests": 1000,
        "duration_s": 2.0,
        "worker_cpu_s": 1.5,
        "rate": 500,
        "errors": 0,
    }


def phase_row(
    label: str, scenario: str, user: float, system: float, samples: dict[str, dict[str, int]]
) -> dict[str, Any]:
    run = {
        "requests": 1000,
        "user_us_per_request": user,
        "system_us_per_request": system,
        "other_cpu_share": 0.0,
    }
    return {
        "target": label,
        "scenario": scenario,
        "requests": 1000,
        "runs": [run],
        "discarded_runs": [],
        "user_us_per_request": user,
        "system_us_per_request": system,
        "profile": profile(samples),
        "discarded_profiles": [],
    }


SAMPLES = {
    KERNEL: {"epoll.poll": 300, "sock.send": 200},
    LOOP: {"Server.poll_once": 100},
    PARSING: {"parse_head": 120, "RequestParser._read_head": 30},
    OTHER: {"_run_code": 50},
}


def test_the_rows_share_out_the_user_time_and_sum_to_the_measured_total() -> None:
    row = phase_row("after", "keepalive-64", user=30.0, system=10.0, samples=SAMPLES)
    split = layers.layer_split(row, min_samples=200)
    assert split is not None
    assert split[KERNEL] == 10.0  # the system CPU, not the samples on system calls (500 of 800)
    assert (split[LOOP], split[PARSING], split[OTHER]) == (10.0, 15.0, 5.0)  # 30 µs over 300 samples
    assert split[ROUTING] == split[HANDLER] == split[RENDERING] == split[SENDING] == 0.0
    assert sum(split.values()) == pytest.approx(layers.total_us(row)) == 40.0
    assert layers.layer_split(row, min_samples=301) is None  # 300 off system calls: too few to split
    assert layers.layer_split({**row, "profile": {}}) is None


def contents_with(rows: list[dict[str, Any]], command: list[str] | None = None) -> dict[str, Any]:
    settings = {
        "duration_s": 2,
        "runs": 1,
        "rate": 500,
        "min_samples": 200,
        "scenarios": ["keepalive-64", "route-64"],
        "server_cpus": "1",
        "client_cpus": "0",
    }
    phases = [
        {"label": "before (7e20d5f)", "phase_dir": "/tmp/b/phase6_perf"},
        {"label": "after", "phase_dir": "x"},
    ]
    typed = command if command is not None else [".venv/bin/python", "-m", "bench.layers", "--runs", "1"]
    return results.document(
        "layers", "layers", typed, {}, settings, phases=phases, peers=["nginx", "floor"], rows=rows
    )


def peer_row(name: str, scenario: str, user: float, system: float) -> dict[str, Any]:
    row = phase_row(name, scenario, user, system, {})
    del row["profile"], row["discarded_profiles"]
    return row


def test_the_page_puts_before_and_after_side_by_side_with_the_peers_system_time() -> None:
    route_after = {**SAMPLES, ROUTING: {"match_segments": 40}, HANDLER: {"user": 10}}
    contents = contents_with(
        [
            phase_row("before (7e20d5f)", "keepalive-64", 34.0, 14.0, SAMPLES),
            phase_row("after", "keepalive-64", 30.0, 10.0, SAMPLES),
            peer_row("nginx", "keepalive-64", 5.0, 9.5),
            peer_row("floor", "keepalive-64", 8.0, 12.0),
            phase_row(
                "before (7e20d5f)", "route-64", 50.0, 10.0, {KERNEL: {"epoll.poll": 400}, LOOP: {"x": 100}}
            ),
            phase_row("after", "route-64", 40.0, 10.0, route_after),
            peer_row("nginx", "route-64", 5.0, 9.0),
            {**costs.empty_row("floor", "route-64"), "not_served": "set up here to serve GET / only"},
        ]
    )
    page = layers.markdown(contents, "bench/results/layers.json")
    assert page.startswith("<!-- Generated by bench/layers.py from bench/results/layers.json.")
    assert "rerun: `.venv/bin/python -m bench.layers --runs 1`." in page
    keepalive, route = page.split("#### Keep-alive, 64 connections")[1].split("#### A parametrized route")
    times, dash = "\N{MULTIPLICATION SIGN}", "\N{EN DASH}"
    assert "| layer | before (7e20d5f) | % | after | % | mostly in (after) |" in keepalive
    assert (
        f"| kernel (system calls) | 14.0 µs (14.0{dash}14.0) | 29% | 10.0 µs (10.0{dash}10.0) | 25% |"
        " epoll.poll 60%, sock.send 40% |" in keepalive
    )
    assert (
        "| parsing | 17.0 µs | 35% | 15.0 µs | 38% | parse_head 80%, RequestParser._read_head 20% |"
        in keepalive
    )
    assert "| other (interpreter, GC) | 5.7 µs | 12% | 5.0 µs | 12% | _run_code 100% |" in keepalive
    assert (
        f"| total (measured) | 48.0 µs (48.0{dash}48.0) | 100% | 40.0 µs (40.0{dash}40.0) | 100% |  |"
        in keepalive
    )
    assert "(before (7e20d5f): 48.0 µs of 48.0 µs; after: 40.0 µs of 40.0 µs), by construction" in keepalive
    assert "after: 800 samples, 62% on system calls (system CPU: 25% of the total)" in keepalive
    assert "System CPU per request in the same runs: nginx 9.5 µs (user 5.0 µs); floor 12.0 µs" in keepalive
    # Before, 100 samples off system calls: its user time is not split, and the page says why.
    assert "| parsing | not split |  | 17.1 µs | 34% | parse_head 80%" in route
    assert (
        f"| kernel (system calls) | 10.0 µs (10.0{dash}10.0) | 17% | 10.0 µs (10.0{dash}10.0) | 20% |"
        in route
    )
    assert "only 100 off system calls, fewer than 200: its user CPU is not split" in route
    assert "floor: not measured (set up here to serve GET / only)" in route
    # Requests per server CPU-second of the phase as it is, run i over run i: 14.5 µs of nginx's over its
    # 40 µs, 20 µs of the floor's; on the route, against nginx's and against its own keep-alive GET /.
    assert (
        "Requests per server CPU-second of after over each of these, run i over run i, median (lowest to"
        f" highest): nginx 0.36{times} (0.36{times}{dash}0.36{times}); floor 0.50{times}"
    ) in keepalive
    assert f"nginx 0.28{times}" in route and f"itself in keepalive-64 0.80{times}" in route
    # The targets of round two, from the same ratios: met where every pair met it, missed where none did.
    targets = page.split("#### Round two's targets")[1]
    assert (
        f"| keepalive-64 | ≥ 0.70{times} floor | 0.50{times} (0.50{times}{dash}0.50{times}) |"
        " missed, by 29% of the target |"
    ) in targets
    assert f"| route-64 | ≥ 0.70{times} itself in keepalive-64 | 0.80{times} " in targets
    assert targets.count("| met |") == 1 and targets.count("| — | not measured in this run |") == 3
    shown = results.for_terminal(page)
    assert "<!--" not in shown and "\n\n\n" not in shown


def test_a_published_page_says_rerun_with_make() -> None:
    command = [".venv/bin/python", "-m", "bench.layers", "--publish"]
    page = layers.markdown(contents_with([], command), "bench/results/layers.json")
    assert "rerun: `make bench-layers`." in page


# --------------------------------------------------------------------------------------------- the phases


def test_a_phase_copied_elsewhere_is_started_from_its_copy(tmp_path: Path) -> None:
    """An older commit's phase 6 has the package name of this repository's: started from the repository's
    root, `python -m phase6_perf` would measure this one instead, in the supervisor and in its workers."""
    require_tool("taskset")
    copy = tmp_path / "old" / layers.PHASE
    shutil.copytree(REPO_ROOT / layers.PHASE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert layers.read_capabilities(copy) == phase_capabilities(REPO_ROOT / layers.PHASE)
    measured = layers.phase_in(copy, "before")
    assert measured.target.name == "before" and measured.phase_dir == copy.resolve()
    assert measured.target.serves == {"routing", "static_files"}
    server = targets.start(measured.target, "0-1", tmp_path / "scratch", tmp_path)
    try:
        worker = costs.serving_process(server)
        assert worker.pid != server.pid  # the supervisor's worker, started the same way
        assert Path(worker.cwd()) == copy.parent.resolve()
        assert Path(psutil.Process(server.pid).cwd()) == copy.parent.resolve()
    finally:
        server.stop()
    here = layers.phase_in(REPO_ROOT / layers.PHASE, "after")
    assert (
        here.target.command(0, tmp_path, tmp_path, 1)[0] != "env"
    )  # this repository's, as the bench runs it


def test_the_options_name_the_columns(tmp_path: Path) -> None:
    assert layers.parse_arguments([]).label == "phase6_perf"
    options = layers.parse_arguments(["--before-dir", str(REPO_ROOT / "phase5_concurrency")])
    assert (options.before_label, options.label) == ("before", "after")
    assert options.scenarios == list(layers.SCENARIOS) and options.peers == ["nginx", "floor"]
    assert layers.parse_arguments(["--peers", "", "--scenarios", "close"]).peers == []
    with pytest.raises(SystemExit):
        layers.parse_arguments(
            ["--before-dir", str(REPO_ROOT / "phase5_concurrency"), "--before-label", "after"]
        )
    with pytest.raises(SystemExit):
        layers.parse_arguments(["--scenarios", "keepalive-1000"])
    stranger = tmp_path / "my_server"  # started as which phase? Its copy would get another phase's options
    stranger.mkdir()
    (stranger / "__init__.py").write_text("CAPABILITIES = frozenset({'http'})\n")
    with pytest.raises(SystemExit):
        layers.parse_arguments(["--phase-dir", str(stranger)])


# --------------------------------------------------------------------------------------------- for real


def test_a_short_run_profiles_the_route_and_renders_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One scenario, one run of a second: the floor does not serve it, so phase 6 alone is started."""
    require_tool("wrk")
    require_tool("taskset")
    if flame.py_spy_path() is None:
        skip_unless_ci("py-spy is not installed (pip install '.[bench]')")
    scope = Path("/proc/sys/kernel/yama/ptrace_scope")
    if os.geteuid() != 0 and scope.exists() and scope.read_text().strip() != "0":
        skip_unless_ci("py-spy may not read another process's memory here (kernel.yama.ptrace_scope)")
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path)  # never the published file, nor bench/results/
    arguments = ["--duration", "1", "--runs", "1", "--scenarios", "route-64", "--peers", "floor"]
    assert layers.main([*arguments, "--name", "test"]) == 0
    measured_output = capsys.readouterr().out
    path = tmp_path / "exploratory-layers-test.json"
    contents = results.read_document(path, "layers")

    phase_row, floor_row = contents["rows"]
    assert (phase_row["target"], floor_row["target"]) == (layers.PHASE, "floor")
    assert floor_row["not_served"] == "set up here to serve GET / only" and not floor_row["runs"]
    assert phase_row["requests"] > 0 and phase_row["user_us_per_request"] > 0
    samples = phase_row["profile"]["samples"]
    assert list(samples) == list(layers.LAYER_NAMES) and sum(samples[KERNEL].values()) > 0
    named = {name for file_rules in layers.RULES.values() for name in file_rules}
    for layer in (LOOP, PARSING, ROUTING, HANDLER, RENDERING, SENDING):
        # Each place is one of the phase's functions (a rule's, or one its file's default covers).
        assert all("." in place or place in named or place.islower() for place in samples[layer]), samples

    page = layers.markdown(contents, str(path))
    assert "#### A parametrized route, GET /users/123" in page and "| total (measured) |" in page
    assert results.for_terminal(page) in measured_output
    assert layers.main(["--from-results", str(path)]) == 0
    assert capsys.readouterr().out == results.for_terminal(page) + "\n"
