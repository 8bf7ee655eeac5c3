"""A flamegraph of a phase under load: where its CPU time goes, function by function.

    make flame PHASE=phase3_http_parse          # published: docs/assets/flame/phase3_http_parse.svg
    .venv/bin/python -m bench.flame --phase phase3_http_parse --scenario pipeline-16 --duration 15
    .venv/bin/python -m bench.flame --rewrite docs/assets/flame/*.svg   # redo the paths and title (below)

Only with --publish (`make flame`) does it write the docs' flamegraph, docs/assets/flame/PHASE.svg; any other
run is exploratory and writes flame-PHASE-SCENARIO.svg in the temporary directory (or --output), so looking
never changes what the docs show.

The phase is started exactly as the bench starts it (pinned to the server CPUs), wrk loads it from the client
CPUs, and py-spy, on the client CPUs too, samples the interpreter's own pid (the server is started with
sys.executable, never through the `python3` shim script, which would be profiled instead). The
tradeoff: py-spy pauses the process for each sample, so the server runs a little slower while profiled; the
proportions between functions, which is what a flamegraph shows, are what we want from it.

What py-spy writes names the machine it ran on: its title is its own command line, absolute paths included
and wider than the drawing, and the frame of each process is the server's command line, the interpreter's
absolute path first. Every SVG written here is rewritten before it is kept (`publishable`): paths relative to
the repository (`.venv/bin/python`, `phase6_perf/server.py`), the interpreter's own files under `<stdlib>/`,
`<site-packages>/` or `<python>/`, the scratch directory as `<tmp>/`, and a title that fits, built from what
py-spy's said. `--rewrite` applies the same to SVGs already written, without a load run.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from bench import targets, wrk
from tools.phases import REPO_ROOT, pinned

FLAME_DIR = REPO_ROOT / "docs" / "assets" / "flame"  # the published flamegraphs, one per phase
DEFAULT_SCENARIO = "keepalive-64"  # what `make flame` publishes

# py-spy's title: `<text id="title" ...>/abs/path/py-spy record --pid 8039 ... --output /abs/path.svg</text>`.
TITLE = re.compile(r'(<text id="title"[^>]*>)([^<]*)(</text>)')
# The first process's frame, `process 8039:"/abs/path/python -m phase6_perf ..."`, names the phase.
PROFILED_MODULE = re.compile(r"<title>process \d+:&quot;\S+ -m (\w+)")
# Python's directories on a machine other than this one, where their exact paths are unknown.
OTHER_SITE_PACKAGES = re.compile(r"(?<![\w./-])/(?:[\w.+-]+/)*lib/python3\.\d+/site-packages/")
OTHER_STDLIB = re.compile(r"(?<![\w./-])/(?:[\w.+-]+/)*lib/python3\.\d+/")


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
            output.write_text(publishable(output.read_text(), scenario.name))
            if loader.returncode != 0:
                raise FlameError(f"wrk failed ({loader.returncode}): {load_errors.strip()[-1000:]}")
            result = wrk.parse_output(loaded)
            rate = result.requests / result.duration_s
            print(f"{result.requests:,} requests in {result.duration_s:.0f} s, {rate:,.0f}/s while sampled")
        finally:
            server.stop()


def flame_title(phase: str, scenario: str, sampling: str) -> str:
    """The title drawn above the flamegraph: under 70 characters, so that it fits the page's column."""
    return f"{phase} under {scenario}: {sampling} (py-spy)"


def machine_paths(repo_root: Path) -> list[tuple[str, str]]:
    """The absolute directories a drawing may name, each with what the published SVG says instead: longest
    first, since the virtualenv's site-packages lie inside the repository and must keep their own name."""
    python_paths = sysconfig.get_paths()
    named = {
        tempfile.gettempdir(): "<tmp>",
        sys.base_prefix: "<python>",
        python_paths["stdlib"]: "<stdlib>",
        python_paths["purelib"]: "<site-packages>",
        python_paths["platlib"]: "<site-packages>",
        str(repo_root): "",  # relative to the repository: what a reader types from its root
    }
    return sorted(named.items(), key=lambda item: len(item[0]), reverse=True)


def relative_paths(svg: str, repo_root: Path = REPO_ROOT) -> str:
    """`svg` with every absolute path of this machine's repository, Python and scratch directory rewritten
    (see the module's docstring). The SVG's text is XML, hence the `&lt;tmp&gt;` for `<tmp>`."""
    for directory, name in machine_paths(repo_root):
        # Only a whole path: `/tmp/` inside `/var/tmp/` is not the scratch directory.
        whole = re.compile(r"(?<![\w./-])" + re.escape(directory.rstrip("/") + "/"))
        svg = whole.sub(html.escape(f"{name}/" if name else ""), svg)  # no backslash to expand in it
    svg = OTHER_SITE_PACKAGES.sub(html.escape("<site-packages>/"), svg)
    return OTHER_STDLIB.sub(html.escape("<stdlib>/"), svg)


def publishable(svg: str, scenario: str, repo_root: Path = REPO_ROOT) -> str:
    """py-spy's flamegraph as the docs show it: machine paths rewritten, and py-spy's title (its command line,
    wider than the drawing, so clipped at both ends) replaced by what it says, in a line that fits. A title
    already rewritten is kept: rewriting twice changes nothing."""
    title = TITLE.search(svg)
    if title is not None and re.search(r"py-spy\S* record ", title[2]):
        rate = re.search(r"--rate (\d+)", title[2])
        seconds = re.search(r"--duration (\d+)", title[2])
        module = PROFILED_MODULE.search(svg)
        new_title = flame_title(
            module[1] if module else "the server",
            scenario,
            f"{rate[1]} samples/s for {seconds[1]} s" if rate and seconds else "sampled",
        )
        svg = svg[: title.start(2)] + html.escape(new_title) + svg[title.end(2) :]
    return relative_paths(svg, repo_root)


def rewrite(paths: list[Path], scenario: str) -> None:
    """Rewrite SVGs in place as `profile` rewrites each it draws: for flamegraphs drawn before it did."""
    for path in paths:
        path.write_text(publishable(path.read_text(), scenario))
        print(f"rewrote {path}")


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
    parser.add_argument("--phase", help="the phase package to profile, e.g. phase3_http_parse")
    parser.add_argument(
        "--scenario",
        default=DEFAULT_SCENARIO,
        choices=scenarios,
        help=f"the wrk load (default {DEFAULT_SCENARIO}); with --rewrite, the one the title names",
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
    parser.add_argument(
        "--rewrite",
        nargs="+",
        type=Path,
        metavar="SVG",
        help="no load run: rewrite flamegraphs already drawn, in place, as a new one is (paths, title)",
    )
    options = parser.parse_args(argv)
    if options.rewrite:
        rewrite(options.rewrite, options.scenario)
        return 0
    if options.phase is None:
        parser.error("--phase is required (or --rewrite)")
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
