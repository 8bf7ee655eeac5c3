"""Where each microsecond goes: a phase's server CPU per request, split into the layers of a request.

    make bench-layers                                            # published: bench/results/layers.json
    .venv/bin/python -m bench.layers --duration 2 --runs 1       # a quick look: exploratory-layers-NAME.json
    .venv/bin/python -m bench.layers --before-dir DIR --before-label "before (7e20d5f)"   # side by side

For phase 6 (or --phase, or the copy in --phase-dir), one worker pinned as the bench pins it, in the
keep-alive, pipelined, churn, route, static file and browser scenarios. Two measurements, made apart:
- timed runs, made by bench/costs.py's code: the worker's user and system CPU per request, read from /proc
  around a wrk run; the targets take turns run by run, each run on a fresh server after a warm-up, a run that
  other processes disturbed is repeated, and the table has the median of the runs;
- one profiled run per phase and scenario, on the server of its first timed run, right after it: py-spy
  samples the worker RATE times a second with `--nonblocking` (the worker is never paused), and each sample,
  a Python stack with the line each frame is at, goes to one layer by the rules below.
The profile is a run of its own, as costs.py's strace run is, because py-spy runs on the client's CPU beside
wrk: its reading of the worker's memory takes that CPU from wrk, which then loads the server less, and would
count as other processes' use in the disturbance check. So the figures come from runs without it, the
proportions from the run with it.

A row of the table: the kernel is the measured system CPU per request; every other layer is the measured
user CPU per request times its share of the samples that are not on a system call. The rows therefore sum
to the measured total by construction: what is measured is the total and the proportions, not each layer by
itself. What is not by construction, and the page shows beside the table: the share of samples on a system
call next to the system CPU's share of the total (one quantity measured two ways), the samples behind each
column (with fewer than MIN_SAMPLES off system calls, the user time is not split), and nginx's and the
floor's system CPU per request, measured in the same runs: the kernel's work for a server written in C, and
for the least a Python server on our loop can do.

The tradeoffs. Sampling is statistical: a share p of n samples is known to about sqrt(p(1 - p) / n). py-spy
counts a worker that is runnable but waiting for its CPU as running, so on a busy machine samples pile up
where the worker was preempted (after a heartbeat woke the supervisor, say): the profile's share of time
spent waiting (samples beyond its CPU time) is shown, and a profile that waited longer than a disturbed
run's threshold (a quarter of the time) is repeated as a disturbed run is. Those waits land mostly on
system calls (a worker woken from epoll.poll waits there for its turn), which is why the samples on system
calls are a check only, never the kernel's figure; the user layers share what is left, and a preemption by
the clock's tick lands in proportion to the CPU time of each line. Not pausing the worker, py-spy may read a
stack while it changes: a torn stack goes by its innermost frame like any other. A system call's own user
time (parsing its arguments, releasing the GIL) is in the samples on its line, so it is spread over the user
layers; the garbage collector's time goes to the line whose allocation started it (py-spy sees Python frames
only).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import linecache
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import costs, cpu, flame, targets, wrk
from bench.report import EN_DASH, markdown_table, target_verdict, times, with_range
from bench.results import (
    Spread,
    add_publishing_options,
    document,
    harness_command,
    measured_on,
    save_and_publish,
)
from tools.phases import REPO_ROOT, pinned

PUBLISHED_NAME = "layers"
TABLE = REPO_ROOT / "docs" / "generated" / "layers.md"
SCENARIOS = ("keepalive-64", "pipeline-16", "close", "route-64", "static-64k", "browser")
PHASE = "phase6_perf"
PEERS = ("nginx", "floor")
RATE = 500  # samples per second: a second of a busy worker gives 500, a run of a few seconds enough
MIN_SAMPLES = 200  # off system calls: a layer's share is then known to 3.5 points at worst (one sigma)
SHOWN_PLACES = 3  # the functions (or system calls) named per layer, the largest first

# --8<-- [start:layers]
# The layers, in the table's order, with their rows' names.
KERNEL, LOOP, PARSING, ROUTING, HANDLER, RENDERING, SENDING, OTHER = (
    "kernel", "loop", "parsing", "routing", "handler", "rendering", "sending", "other",
)  # fmt: skip
LAYER_NAMES = {
    KERNEL: "kernel (system calls)",
    LOOP: "loop bookkeeping",
    PARSING: "parsing",
    ROUTING: "routing, response cache",
    HANDLER: "the handler",
    RENDERING: "rendering",
    SENDING: "sending",
    OTHER: "other (interpreter, GC)",
}

# A sample whose innermost frame is on a line that makes a system call is the kernel's, wherever it is: the
# socket methods that enter the kernel, the epoll object's, every function of the os module (thin wrappers of
# system calls: os.lstat under os.path.realpath, say) but its few pure ones, and the standard library's own
# lines under socket methods that are Python (accept() calls _accept(); close() calls _ss.close()). send,
# close and shutdown are the kernel's only on a socket: the server's own methods of those names are Python.
SYSTEM_CALL = re.compile(
    r"\b(?P<call>(?:sock|_ss)\.(?:send|recv|close|shutdown)"
    r"|os\.(?!fspath|fsencode|fsdecode|getenv)\w+"
    r"|\w+\.(?:recv_into|sendfile|accept|_accept|setsockopt|setblocking|poll|register|modify|unregister))\("
)

# Every other sample goes to the layer of its innermost frame in one of the phase's files (a frame of the
# standard library or of the interpreter is skipped: json.dumps is the handler's that called it), by that
# file's rule for the function as py-spy names it (Class.method), else by the file's rule for ANY function.
# A rule of None skips the frame too: an accessor, whose cost is its caller's. No frame of the phase at all
# (the interpreter starting, a stack py-spy could not read whole): other.
ANY = "*"
RULES: dict[str, dict[str, str | None]] = {
    "server.py": {
        "Server.send": SENDING,
        "Server.on_writable": SENDING,
        "Server.send_file": SENDING,
        "Server.begin_file": SENDING,
        ANY: LOOP,  # polling, accepting, the clocks, the batches, backpressure, closing
    },
    "workers.py": {ANY: LOOP},  # the heartbeat, and a worker's start
    "__main__.py": {ANY: LOOP},
    "protocol.py": {
        "render_response": RENDERING,
        "date_line": RENDERING,
        "format_http_date": RENDERING,
        "error_response": RENDERING,
        # The request's fields and the parser's state, read by the handler and the loop's clocks.
        "Request.header": None,
        "Request.is_head": None,
        "RequestParser.reading_head": None,
        "RequestParser.reading_body": None,
        "RequestParser.has_partial_request": None,
        ANY: PARSING,  # the parser and its receive buffer
    },
    "router.py": {ANY: ROUTING},
    "app.py": {
        # Its own lines: the response cache, which stands in for routing on a fixed route, and the dispatch.
        "Application.respond": ROUTING,
        "render": RENDERING,
        ANY: HANDLER,  # the handlers, StaticFiles and its helpers
    },
}
# --8<-- [end:layers]


class LayersError(Exception):
    """The profile could not be taken: the message says why."""


# --------------------------------------------------------------------------------------------- attribution


@dataclass(frozen=True)
class Frame:
    """One frame of a sampled stack, as py-spy names it: `Class.method`, the file's full path, the line."""

    function: str
    file: str
    line: int


RAW_FRAME = re.compile(r"(?P<function>.*?) \((?P<file>.*):(?P<line>\d+)\)")


def parse_raw(text: str) -> list[tuple[list[Frame], int]]:
    """py-spy's raw output (`--format raw`): a line per distinct stack, its frames outermost first, joined by
    `;`, then a space and the number of samples -> (frames, count) pairs."""
    stacks = []
    for line in text.splitlines():
        frames_text, _, count = line.rpartition(" ")
        if not frames_text or not count.isdigit():
            continue
        frames = []
        for frame_text in frames_text.split(";"):
            if (match := RAW_FRAME.fullmatch(frame_text)) is not None:
                frames.append(Frame(match["function"], match["file"], int(match["line"])))
            else:  # a frame without a place (py-spy's native or process frames): a name only
                frames.append(Frame(frame_text, "", 0))
        stacks.append((frames, int(count)))
    return stacks


SourceLine = Callable[[str, int], str]
FROZEN = re.compile(r"<frozen (?P<module>[\w.]+)>")
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def source_line(file: str, line: int) -> str:
    """The text of a sampled line. The modules the interpreter freezes into itself (os, posixpath, runpy...)
    are named `<frozen NAME>`; their lines are read from the standard library's source of this interpreter,
    which must then be the server's (it is: the bench starts every phase with it)."""
    if (frozen := FROZEN.fullmatch(file)) is not None:
        file = str(STDLIB / (frozen["module"].replace(".", "/") + ".py"))
    return linecache.getline(file, line)


def attribute(stack: list[Frame], phase_dir: Path, read_line: SourceLine = source_line) -> tuple[str, str]:
    """The layer a sample goes to, and where in it: the system call, or the function that decided. Only the
    files directly in `phase_dir` are the phase's; `read_line(file, line)` is that line's text."""
    if not stack:
        return OTHER, "(no frame)"
    innermost = stack[-1]
    if (call := SYSTEM_CALL.search(read_line(innermost.file, innermost.line))) is not None:
        return KERNEL, call["call"]
    for frame in reversed(stack):
        file = Path(frame.file)
        if file.parent != phase_dir or (rules := RULES.get(file.name)) is None:
            continue
        layer = rules.get(frame.function, rules[ANY])
        if layer is not None:
            return layer, frame.function
    return OTHER, innermost.function


def samples_by_layer(
    stacks: list[tuple[list[Frame], int]], phase_dir: Path, read_line: SourceLine = source_line
) -> dict[str, dict[str, int]]:
    """Every sample attributed: per layer, per place in it (a function or a system call), the count."""
    counts: dict[str, Counter[str]] = {layer: Counter() for layer in LAYER_NAMES}
    for stack, count in stacks:
        layer, place = attribute(stack, phase_dir, read_line)
        counts[layer][place] += count
    return {layer: dict(places.most_common()) for layer, places in counts.items()}


# --------------------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Profile:
    """One profiled run: the worker's samples by layer and place, and its CPU time while they were taken."""

    samples: dict[str, dict[str, int]]
    requests: int
    duration_s: float  # wrk's run, which the sampling covers
    worker_cpu_s: float  # user + system, during wrk's run
    rate: int
    errors: int  # stacks py-spy could not read (the worker moved on while it read)

    @property
    def total(self) -> int:
        return sum(sum(places.values()) for places in self.samples.values())

    @property
    def waiting_share(self) -> float:
        """The share of the run the worker was sampled as running beyond its CPU time: runnable, waiting for
        its CPU while other processes had it."""
        return max(0.0, self.total / self.rate - self.worker_cpu_s) / self.duration_s

    @property
    def other_cpu_share(self) -> float:
        """What cpu.quietest_of compares with a disturbed run's threshold: here, other processes' use of the
        worker's own CPU, as the profile saw it."""
        return self.waiting_share


def worker_cpu_seconds(server: targets.RunningTarget) -> float:
    user, system = costs.cpu_split(costs.serving_process(server))
    return user + system


def profile(server: targets.RunningTarget, load: list[str], seconds: int, phase_dir: Path) -> Profile:
    """py-spy sampling the worker while `load` (a wrk command) runs for `seconds`, each sample attributed."""
    py_spy = flame.py_spy_path()
    if py_spy is None:
        raise LayersError("py-spy is not installed (pip install '.[bench]')")
    worker = costs.serving_process(server)
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as output:
        record = [
            py_spy, "record", "--pid", str(worker.pid), "--nonblocking", "--full-filenames",
            "--format", "raw", "--rate", str(RATE), "--duration", str(seconds + 1), "--output", output.name,
        ]  # fmt: skip
        sampler = subprocess.Popen(
            pinned(costs.CLIENT_CPUS, record), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        time.sleep(0.5)  # attached before the load starts; without load the worker sleeps and is not sampled
        cpu_before = worker_cpu_seconds(server)
        result, _ = wrk.run(load, seconds)
        worker_cpu_s = worker_cpu_seconds(server) - cpu_before
        _, said = sampler.communicate(timeout=seconds + 30)
        if sampler.returncode != 0:
            raise LayersError(f"py-spy failed ({sampler.returncode}): {said.strip()[-1000:]}")
        stacks = parse_raw(output.read())
    errors = re.search(r"Errors: (\d+)", said)
    return Profile(
        samples_by_layer(stacks, phase_dir),
        result.requests,
        result.duration_s,
        worker_cpu_s,
        RATE,
        int(errors[1]) if errors else 0,
    )


def profile_summary(profile: Profile) -> str:
    kernel = sum(profile.samples[KERNEL].values())
    return (
        f"{profile.total:,} samples, {kernel / max(profile.total, 1):.0%} on system calls; the worker waited"
        f" for its CPU {profile.waiting_share:.0%} of the time"
    )


@dataclass(frozen=True)
class Measured:
    """A phase: its name in the table, where its package is, the target that starts it."""

    label: str
    phase_dir: Path
    target: targets.Target


def read_capabilities(phase_dir: Path) -> frozenset[str]:
    """A phase's CAPABILITIES, read from its __init__.py without importing it: an older copy of a phase has
    the package name of this repository's, and one process imports only one of the two."""
    for node in ast.parse((phase_dir / "__init__.py").read_text()).body:
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Call) or not node.value.args:
            continue
        if any(isinstance(name, ast.Name) and name.id == "CAPABILITIES" for name in node.targets):
            return frozenset(ast.literal_eval(node.value.args[0]))
    raise ValueError(f"{phase_dir}/__init__.py has no CAPABILITIES = frozenset({{...}})")


def phase_in(phase_dir: Path, label: str) -> Measured:
    """The phase package at `phase_dir`, shown as `label`: a phase of this repository, started as the bench
    starts it, or a copy of one (an older commit's, from git archive), started the same way but from the
    copy's parent directory, so that `python -m NAME`, in the supervisor and in the workers it starts,
    imports the copy. The tradeoff: a copy takes the options this repository's phase of its name is given
    (--static-dir and --workers, by that phase's CAPABILITIES); it serves what its own CAPABILITIES say."""
    phase_dir = phase_dir.resolve()
    here = {phase.name: phase for phase in targets.discover_phases()}
    if phase_dir.name not in here:
        raise ValueError(f"{phase_dir} is no phase of this repository, nor a copy of one (by its name)")
    target = dataclasses.replace(here[phase_dir.name], name=label)
    if phase_dir.parent == REPO_ROOT:
        return Measured(label, phase_dir, target)
    in_repository = target.command

    def command(port: int, scratch: Path, static_dir: Path, workers: int) -> list[str]:
        return ["env", "-C", str(phase_dir.parent), *in_repository(port, scratch, static_dir, workers)]

    capabilities = read_capabilities(phase_dir)
    description = f"{phase_dir.name} from {phase_dir.parent}"
    return Measured(
        label,
        phase_dir,
        dataclasses.replace(
            target, description=description, command=command, serves=capabilities & targets.SERVABLE
        ),
    )


def measure_run(
    target: targets.Target,
    scenario: wrk.Scenario,
    seconds: int,
    scratch: Path,
    static_dir: Path,
    *,
    repeats: cpu.RepeatBudget,
    profile_of: Path | None,
) -> tuple[costs.Split, list[costs.Split], tuple[Profile, list[Profile]] | None]:
    """One timed run of a target on a fresh server, after the bench's check of its answers and a warm-up
    (repeated while disturbed); with `profile_of` (the phase's directory), then a profiled run on it."""
    server = targets.start(target, costs.SERVER_CPUS, scratch, static_dir)
    try:
        if (wrong := targets.check_answers(server.port, scenario.paths)) is not None:
            raise targets.TargetFailed(f"{target.name}: {wrong}")
        load = wrk.command(scenario, server.origin, seconds, costs.CLIENT_CPUS)
        wrk.run(wrk.command(scenario, server.origin, 1, costs.CLIENT_CPUS), 1)  # warm-up

        def say_again(share: float) -> None:
            print(f"{target.name} {scenario.name}: other processes used {share:.0%} of a core; again")

        def waited(share: float) -> None:
            print(
                f"{target.name} {scenario.name}: profiled while waiting for its CPU {share:.0%} of the time;"
                " again"
            )

        kept, discarded = cpu.quietest_of(
            lambda: costs.timed_split(server, load, seconds), repeats, say_again
        )
        profiled = None
        if profile_of is not None:
            profiled = cpu.quietest_of(lambda: profile(server, load, seconds, profile_of), repeats, waited)
    finally:
        server.stop()
    return kept, discarded, profiled


def empty_row(target: targets.Target, scenario: wrk.Scenario) -> dict[str, Any]:
    """A target's row in a scenario before any run (costs.py's), or why the target does not serve it."""
    row = costs.empty_row(target.name, scenario.name)
    if (reason := target.not_served(scenario.needs)) is not None:
        row["not_served"] = reason
    return row


def peer_targets(names: list[str]) -> list[targets.Target]:
    """The peers named that can run here; each of the others is skipped, with the reason."""
    known = {peer.name: peer for peer in targets.PEERS}
    chosen = []
    for name in names:
        if (reason := known[name].missing()) is not None:
            print(f"skipping {name}: {reason}", file=sys.stderr)
        else:
            chosen.append(known[name])
    return chosen


def measure_all(
    options: argparse.Namespace, phases: list[Measured], argv: list[str] | None
) -> dict[str, Any]:
    scenarios = [scenario for scenario in wrk.SCENARIOS if scenario.name in options.scenarios]
    phase_dirs = {phase.label: phase.phase_dir for phase in phases}
    chosen = [*(phase.target for phase in phases), *peer_targets(options.peers)]
    rows = {
        (target.name, scenario.name): empty_row(target, scenario)
        for scenario in scenarios
        for target in chosen
    }
    measured = [key for key, row in rows.items() if "not_served" not in row]
    repeats = cpu.RepeatBudget.for_runs(len(measured) * options.runs + len(phases) * len(scenarios))
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(costs.CLIENT_CPUS)})  # the harness stays off the server's CPU
    with (
        tempfile.TemporaryDirectory(prefix="bench-layers-") as scratch,
        tempfile.TemporaryDirectory(prefix="bench-layers-static-") as static,
    ):
        static_dir = targets.write_static_files(Path(static))
        try:
            # Run by run, every target in turn: the machine's drift lands on all of them alike.
            for scenario, number, target in itertools.product(scenarios, range(options.runs), chosen):
                row = rows[target.name, scenario.name]
                if "not_served" in row or "failure" in row:
                    continue
                profile_of = phase_dirs.get(target.name) if number == 0 else None
                step = f"{scenario.name} run {number + 1}/{options.runs} {target.name}"
                try:
                    kept, discarded, profiled = measure_run(
                        target,
                        scenario,
                        options.duration,
                        Path(scratch) / target.name,
                        static_dir,
                        repeats=repeats,
                        profile_of=profile_of,
                    )
                except (targets.TargetFailed, wrk.WrkError, LayersError, OSError) as error:
                    row["failure"] = str(error)  # the target's later runs in this scenario are not made
                    print(f"{step}: failed: {error}", flush=True)
                    continue
                costs.add_run(row, kept, discarded, None)
                print(f"{step}: {costs.run_summary(kept)}", flush=True)
                if profiled is not None:
                    row["profile"] = dataclasses.asdict(profiled[0])
                    row["discarded_profiles"] = [dataclasses.asdict(other) for other in profiled[1]]
                    print(f"{step}: profiled: {profile_summary(profiled[0])}", flush=True)
        finally:
            os.sched_setaffinity(0, previous)
    settings = {
        "duration_s": options.duration,
        "runs": options.runs,
        "rate": RATE,
        "min_samples": MIN_SAMPLES,
        "scenarios": [scenario.name for scenario in scenarios],
        "server_cpus": costs.SERVER_CPUS,
        "client_cpus": costs.CLIENT_CPUS,
    }
    machine = {"py_spy": py_spy_version()}
    command = harness_command("bench.layers", argv)
    return document(
        PUBLISHED_NAME,
        PUBLISHED_NAME,
        command,
        machine,
        settings,
        phases=[{"label": phase.label, "phase_dir": str(phase.phase_dir)} for phase in phases],
        peers=[target.name for target in chosen if target.kind == "peer"],
        rows=list(rows.values()),
    )


def py_spy_version() -> str | None:
    py_spy = flame.py_spy_path()
    if py_spy is None:
        return None
    said = subprocess.run([py_spy, "--version"], capture_output=True, text=True, check=False)
    return said.stdout.strip() or None


# --------------------------------------------------------------------------------------------- the table


def layer_split(row: dict[str, Any], min_samples: int = MIN_SAMPLES) -> dict[str, float] | None:
    """A phase's µs per request by layer: the kernel's is the system CPU; every other layer's is the user CPU
    times the layer's share of the samples not on a system call, so that they sum to the total. None without
    a profile of at least `min_samples` samples off system calls."""
    samples = {
        layer: sum(places.values()) for layer, places in row.get("profile", {}).get("samples", {}).items()
    }
    off_calls = sum(count for layer, count in samples.items() if layer != KERNEL)
    if off_calls < min_samples or "user_us_per_request" not in row:
        return None
    split = {KERNEL: row["system_us_per_request"]}
    for layer in LAYER_NAMES:
        if layer != KERNEL:
            split[layer] = row["user_us_per_request"] * samples.get(layer, 0) / off_calls
    return split


def total_us(row: dict[str, Any]) -> float:
    """The measured total: the median user CPU per request plus the median system CPU per request."""
    return float(row["user_us_per_request"] + row["system_us_per_request"])


def places_shown(row: dict[str, Any], layer: str) -> str:
    """The largest places of a layer in a row's profile, with their share of the layer's samples."""
    places = row.get("profile", {}).get("samples", {}).get(layer, {})
    count = sum(places.values())
    ranked = sorted(places.items(), key=lambda item: -item[1])[:SHOWN_PLACES]
    return ", ".join(f"{place} {number / count:.0%}" for place, number in ranked)


def column_cells(row: dict[str, Any] | None, layer: str | None, min_samples: int) -> list[str]:
    """A phase's two cells in one row of the table: µs per request and its share of the total."""
    if row is None or "user_us_per_request" not in row:
        return ["not measured", ""]
    total = total_us(row)
    if layer is None:  # the total, with its lowest and highest run: what this run can tell apart
        return [f"{total:.1f} µs{run_range(row, 'user_us_per_request', 'system_us_per_request')}", "100%"]
    split = layer_split(row, min_samples)
    if split is None and layer != KERNEL:
        return ["not split", ""]
    value = row["system_us_per_request"] if split is None else split[layer]
    shown = f"{value:.1f} µs"
    if layer == KERNEL:  # measured run by run too, unlike the rows that share out the user CPU
        shown += run_range(row, "system_us_per_request")
    return [shown, f"{value / total:.0%}" if total else ""]


def run_range(row: dict[str, Any], *figures: str) -> str:
    """ " (LOW to HIGH)", an en dash between: the sum of `figures`, lowest and highest over a row's runs;
    "" for a row without runs."""
    values = [sum(run[figure] for figure in figures) for run in row.get("runs", [])]
    return f" ({min(values):.1f}{EN_DASH}{max(values):.1f})" if values else ""


def samples_sentence(label: str, row: dict[str, Any] | None, min_samples: int) -> str:
    """What stands behind one column: why it is not there, or its samples and the two checks."""
    if row is None:
        return f"{label}: not measured"
    if "not_served" in row:
        return f"{label}: not measured ({row['not_served']})"
    if "failure" in row:
        return f"{label}: failed ({row['failure'].splitlines()[0]})"
    if "profile" not in row:
        return f"{label}: not profiled"
    profile = Profile(**row["profile"])
    kernel = sum(profile.samples[KERNEL].values())
    off_calls = profile.total - kernel
    system_share = row["system_us_per_request"] / total_us(row) if total_us(row) else 0.0
    sentence = (
        f"{label}: {profile.total:,} samples, {kernel / max(profile.total, 1):.0%} on system calls (system"
        f" CPU: {system_share:.0%} of the total); the worker waited for its CPU {profile.waiting_share:.0%}"
        " of the sampled time"
    )
    if off_calls < min_samples:
        sentence += (
            f"; only {off_calls} off system calls, fewer than {min_samples}: its user CPU is not split"
        )
    return sentence


def peer_sentence(contents: dict[str, Any], scenario: str) -> str | None:
    rows = {row["target"]: row for row in contents["rows"] if row["scenario"] == scenario}
    parts = []
    for peer in contents["peers"]:
        row = rows.get(peer)
        if row is None or "not_served" in row:
            parts.append(f"{peer}: not measured ({row['not_served'] if row else 'not run'})")
        elif "failure" in row:
            parts.append(f"{peer}: failed ({row['failure'].splitlines()[0]})")
        else:
            parts.append(
                f"{peer} {row['system_us_per_request']:.1f} µs (user {row['user_us_per_request']:.1f} µs)"
            )
    return f"System CPU per request in the same runs: {'; '.join(parts)}." if parts else None


def run_ratios(row: dict[str, Any], reference: dict[str, Any]) -> Spread | None:
    """Requests per server CPU-second of `row` over `reference`'s, run i over run i: the reference's server
    CPU per request over the row's (the targets took turns run by run, so pair i saw one state of the
    machine)."""
    pairs = zip(row.get("runs", []), reference.get("runs", []), strict=False)
    return Spread.of(
        [
            (theirs["user_us_per_request"] + theirs["system_us_per_request"])
            / (ours["user_us_per_request"] + ours["system_us_per_request"])
            for ours, theirs in pairs
        ]
    )


def ratio_sentence(contents: dict[str, Any], scenario: str) -> str | None:
    """The last phase's requests per server CPU-second against each peer's, and against its own in the
    first scenario (keep-alive `GET /`, which phase 6 answers from its cache)."""
    label = contents["phases"][-1]["label"]
    rows = {(row["target"], row["scenario"]): row for row in contents["rows"] if row.get("runs")}
    ours = rows.get((label, scenario))
    if ours is None:
        return None
    first = contents["settings"]["scenarios"][0]
    references = [(peer, rows.get((peer, scenario))) for peer in contents["peers"]]
    if scenario != first:
        references.append((f"itself in {first}", rows.get((label, first))))
    parts = [
        f"{name} {with_range(spread, times)}"
        for name, reference in references
        if reference is not None and (spread := run_ratios(ours, reference)) is not None
    ]
    if not parts:
        return None
    return (
        f"Requests per server CPU-second of {label} over each of these, run i over run i, median (lowest to"
        f" highest): {'; '.join(parts)}."
    )


# --8<-- [start:targets]
# Chapter 6's round two set these targets, in requests per server CPU-second: phase 6 over a reference
# measured in the same runs (a peer, or itself in keepalive-64, the cached GET /), at least this much.
# The targets against the Python peers, and with 1,000 connections, are make bench's to measure.
TARGETS = (
    ("keepalive-64", "floor", 0.70),
    ("pipeline-16", "floor", 0.25),
    ("close", "floor", 0.85),
    ("static-64k", "nginx", 0.80),
    ("route-64", "itself in keepalive-64", 0.70),
)
# --8<-- [end:targets]


def target_rows(contents: dict[str, Any]) -> list[list[str]]:
    """A row per target: the scenario, the target, the ratio measured (run i over run i) and the verdict:
    met if every pair of runs met it, missed if none did, else inside this run's noise."""
    label = contents["phases"][-1]["label"]
    rows = {(row["target"], row["scenario"]): row for row in contents["rows"] if row.get("runs")}
    first = contents["settings"]["scenarios"][0]
    table = []
    for scenario, reference, target in TARGETS:
        ours = rows.get((label, scenario))
        theirs = rows.get((label, first) if reference.startswith("itself") else (reference, scenario))
        spread = run_ratios(ours, theirs) if ours is not None and theirs is not None else None
        verdict = target_verdict(spread, target)
        table.append([scenario, f"≥ {times(target)} {reference}", with_range(spread, times), verdict])
    return table


def scenario_section(contents: dict[str, Any], scenario: wrk.Scenario) -> list[str]:
    min_samples = contents["settings"]["min_samples"]
    labels = [phase["label"] for phase in contents["phases"]]
    rows = {row["target"]: row for row in contents["rows"] if row["scenario"] == scenario.name}
    columns = [rows.get(label) for label in labels]
    last = columns[-1]
    header = ["layer", *(cell for label in labels for cell in (label, "%")), f"mostly in ({labels[-1]})"]
    table = []
    for layer, name in LAYER_NAMES.items():
        cells = [cell for row in columns for cell in column_cells(row, layer, min_samples)]
        split = layer_split(last, min_samples) if last is not None else None
        where = (
            places_shown(last, layer) if last is not None and (split is not None or layer == KERNEL) else ""
        )
        table.append([name, *cells, where])
    table.append(
        ["total (measured)", *(cell for row in columns for cell in column_cells(row, None, min_samples)), ""]
    )
    sums = []
    for label, row in zip(labels, columns, strict=True):
        split = layer_split(row, min_samples) if row is not None else None
        if split is not None and row is not None:
            sums.append(f"{label}: {sum(split.values()):.1f} µs of {total_us(row):.1f} µs")
    lines = [
        "",
        f"#### {scenario.title[0].upper()}{scenario.title[1:]}",
        "",
        *markdown_table(header, table, ["---", *["--:"] * (2 * len(labels)), "---"]),
        "",
    ]
    if sums:
        lines += [
            f"Check: the rows sum to the measured total ({'; '.join(sums)}), by construction: the user"
            " rows share out the measured user CPU. Measured apart, so a check: the share of samples on"
            " system calls, beside the system CPU's share of the total (time the worker spent waiting for its"
            " CPU is sampled too, mostly on system calls, and makes the first the larger).",
            "",
        ]
    lines += [
        f"{samples_sentence(label, row, min_samples)}." for label, row in zip(labels, columns, strict=True)
    ]
    if (peers := peer_sentence(contents, scenario.name)) is not None:
        lines += ["", peers]
    if (ratios := ratio_sentence(contents, scenario.name)) is not None:
        lines += ["", ratios]
    return lines


def markdown(contents: dict[str, Any], source: str) -> str:
    settings = contents["settings"]
    scenarios = [scenario for scenario in wrk.SCENARIOS if scenario.name in settings["scenarios"]]
    lines = [
        f"<!-- Generated by bench/layers.py from {source}. Do not edit by hand. -->",
        "",
        f"Server CPU per request, layer by layer: the median of {settings['runs']} run(s) of"
        f" {settings['duration_s']} s per target,",
        f"the targets taking turns run by run; one worker on CPU {settings['server_cpus']}, wrk on CPU"
        f" {settings['client_cpus']}. The kernel's row",
        "is the system CPU per request; every other row is the user CPU per request times its share of the",
        f"samples that py-spy took ({settings['rate']} a second, in one more run per phase) off system calls."
        " The last",
        "column: the functions (or system calls) with the most of the layer's samples. The total and the",
        "kernel, measured run by run, have their lowest and highest run in brackets: where two phases'",
        "ranges overlap, this run cannot tell them apart.",
        measured_on(contents, "make bench-layers"),
    ]
    for scenario in scenarios:
        lines += scenario_section(contents, scenario)
    header = ["scenario", "target", f"{contents['phases'][-1]['label']}, run i over run i", "verdict"]
    lines += [
        "",
        "#### Round two's targets",
        "",
        *markdown_table(header, target_rows(contents), ["---", "---", "--:", "---"]),
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- the command


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m bench.layers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per run (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per target (default: %(default)s)")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from: {', '.join(SCENARIOS)} (default: all)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--phase", default=PHASE, help="a phase of this repository (default: %(default)s)")
    which.add_argument("--phase-dir", type=Path, help="a phase package elsewhere, e.g. from git archive")
    parser.add_argument(
        "--label", help="its column's name (default: after, with --before-dir; else its name)"
    )
    parser.add_argument("--before-dir", type=Path, help="a phase package measured too, in the column before")
    parser.add_argument("--before-label", default="before", help="its column's name (default: %(default)s)")
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated, whose system CPU is shown beside, from: {', '.join(PEERS)}; '' for none"
        " (default: all)",
    )
    add_publishing_options(parser, PUBLISHED_NAME, "make bench-layers")
    options = parser.parse_args(argv)
    options.scenarios = [name for name in options.scenarios.split(",") if name]
    options.peers = [name for name in options.peers.split(",") if name]
    if unknown := sorted(set(options.scenarios) - set(SCENARIOS)) + sorted(set(options.peers) - set(PEERS)):
        parser.error(f"unknown scenario or peer: {', '.join(unknown)}")
    if options.phase_dir is None:
        options.phase_dir = REPO_ROOT / options.phase
    if options.label is None:
        options.label = "after" if options.before_dir is not None else options.phase_dir.name
    if options.before_dir is not None and options.before_label == options.label:
        parser.error(f"--before-label and --label are both {options.label!r}: each column needs its own")
    for directory in (options.phase_dir, options.before_dir):
        if directory is None:
            continue
        if not (directory / "__init__.py").is_file():
            parser.error(f"{directory} is not a phase package (no __init__.py)")
        if not (REPO_ROOT / directory.name / "__init__.py").is_file():
            parser.error(f"{directory} is no phase of this repository, nor a copy of one with its name")
    if options.duration < 1 or options.runs < 1:
        parser.error("--duration and --runs must be at least 1")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    if options.from_results is None and flame.py_spy_path() is None:
        print("cannot profile: py-spy is not installed (pip install '.[bench]')")
        return 2

    def measure(results_file: Path) -> dict[str, Any]:
        phases = [phase_in(options.phase_dir, options.label)]
        if options.before_dir is not None:
            phases.insert(0, phase_in(options.before_dir, options.before_label))
        return measure_all(options, phases, argv)

    return save_and_publish(
        options, PUBLISHED_NAME, measure, lambda contents, source: {TABLE: markdown(contents, source)}
    )


if __name__ == "__main__":
    sys.exit(main())
