"""A flamegraph of a phase under load: where its CPU time goes, function by function.

    make flame PHASE=phase3_http_parse          # published: docs/assets/flame/phase3_http_parse.svg
    .venv/bin/python -m bench.flame --phase phase3_http_parse --scenario pipeline-16 --duration 15

Only with --publish (`make flame`) does it write the docs' flamegraph, docs/assets/flame/PHASE.svg; any other
run is exploratory and writes flame-PHASE-SCENARIO.svg in the temporary directory (or --output), so looking
never changes what the docs show.

The phase is started exactly as the bench starts it (pinned to the server CPUs), wrk loads it from the client
CPUs, and py-spy, on the client CPUs too, samples the interpreter's own pid (the server is started with
sys.executable, never through the `python3` shim script, which would be profiled instead). The
tradeoff: py-spy pauses the process for each sample, so the server runs a little slower while profiled; the
proportions between functions, which is what a flamegraph shows, are what we want from it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import targets, wrk
from tools.phases import REPO_ROOT, pinned

FLAME_DIR = REPO_ROOT / "docs" / "assets" / "flame"  # the published flamegraphs, one per phase


class FlameError(Exception):
    """The profile could not be taken: the message says why."""


def py_spy_path() -> str | None:
    # Installed in the venv beside the interpreter, which need not be on PATH.
    beside_python = Path(sys.executable).parent / "py-spy"
    return str(beside_python) if beside_python.exists() else shutil.which("py-spy")


def find_phase(name: str) -> targets.Target:
    http_phases = targets.discover_phases()
    for phase in http_phases:
        if phase.name == name:
            return phase
    known = ", ".join(phase.name for phase in http_phases) or "none yet"
    if (REPO_ROOT / name / "__init__.py").is_file():
        raise FlameError(f"{name} does not serve HTTP (no 'http' in its CAPABILITIES); HTTP phases: {known}")
    raise FlameError(f"no phase named {name}; HTTP phases: {known}")


def profile(phase: targets.Target, scenario: wrk.Scenario, options: argparse.Namespace, output: Path) -> None:
    py_spy = py_spy_path()
    if py_spy is None:
        raise FlameError("py-spy is not installed (pip install '.[bench]')")
    output.parent.mkdir(parents=True, exist_ok=True)
    # py-spy starts just after wrk and stops a second before it: every sample is taken under load.
    sampling_s = max(1, options.duration - 1)
    if (reason := phase.not_served(scenario.needs)) is not None:
        raise FlameError(f"{phase.name} does not serve {scenario.name}: {reason}")
    with (
        tempfile.TemporaryDirectory(prefix="flame-") as scratch,
        tempfile.TemporaryDirectory(prefix="flame-static-") as static,
    ):
        static_dir = targets.write_static_files(Path(static))
        server = targets.start(phase, options.server_cpus, Path(scratch), static_dir)
        try:
            load = wrk.command(scenario, server.origin, options.duration, options.client_cpus)
            record = [
                py_spy, "record", "--pid", str(server.pid), "--subprocesses",
                "--duration", str(sampling_s), "--rate", str(options.rate),
                "--format", "flamegraph", "--output", str(output),
            ]  # fmt: skip
            print(f"profiling {phase.name} (pid {server.pid}) under {scenario.name} for {sampling_s} s")
            loader = subprocess.Popen(load, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            sampled = subprocess.run(
                pinned(options.client_cpus, record),
                capture_output=True,
                text=True,
                timeout=options.duration + 30,
                check=False,
            )
            loaded, load_errors = loader.communicate(timeout=options.duration + 30)
            if sampled.returncode != 0 or not output.exists():
                raise FlameError(f"py-spy failed ({sampled.returncode}): {sampled.stderr.strip()[-1000:]}")
            if loader.returncode != 0:
                raise FlameError(f"wrk failed ({loader.returncode}): {load_errors.strip()[-1000:]}")
            result = wrk.parse_output(loaded)
            rate = result.requests / result.duration_s
            print(f"{result.requests:,} requests in {result.duration_s:.0f} s, {rate:,.0f}/s while sampled")
        finally:
            server.stop()


def default_output(phase: str, scenario: str, *, publish: bool) -> Path:
    """The docs' flamegraph of the phase when publishing; otherwise a file in the temporary directory."""
    if publish:
        return FLAME_DIR / f"{phase}.svg"
    return Path(tempfile.gettempdir()) / f"flame-{phase}-{scenario}.svg"


def main(argv: list[str] | None = None) -> int:
    scenarios = {scenario.name: scenario for scenario in wrk.SCENARIOS}
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m bench.flame",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--phase", required=True, help="the phase package to profile, e.g. phase3_http_parse")
    parser.add_argument(
        "--scenario", default="keepalive-64", choices=scenarios, help="the wrk load (default keepalive-64)"
    )
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds of sampling under load (default 10)"
    )
    parser.add_argument("--rate", type=int, default=250, help="samples per second (default 250)")
    parser.add_argument("--server-cpus", default="1", help="CPUs for the phase (default 1)")
    parser.add_argument("--client-cpus", default="0", help="CPUs for wrk and py-spy (default 0)")
    parser.add_argument(
        "--publish",
        action="store_true",
        help=f"write the docs' flamegraph, {FLAME_DIR.relative_to(REPO_ROOT)}/PHASE.svg (make flame)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"the SVG to write (default: {tempfile.gettempdir()}/flame-PHASE-SCENARIO.svg; with --publish,"
        f" {FLAME_DIR.relative_to(REPO_ROOT)}/PHASE.svg)",
    )
    options = parser.parse_args(argv)
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    try:
        if missing:
            raise FlameError(f"{', '.join(missing)} not installed (Debian: apt-get install wrk util-linux)")
        phase = find_phase(options.phase)
        output = options.output or default_output(phase.name, options.scenario, publish=options.publish)
        profile(phase, scenarios[options.scenario], options, output)
    except (FlameError, targets.TargetFailed, wrk.WrkError) as error:
        print(f"no flamegraph: {error}", file=sys.stderr)
        return 2
    print(f"wrote {output} (open it in a browser: it is interactive)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
