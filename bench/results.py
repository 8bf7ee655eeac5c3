"""The results files, bench/results/<name>.json: every run's raw figures, the machine, the exact commands.

Every harness (the HTTP bench; bench/echo.py, parser_micro.py, router_micro.py, sendfile_micro.py, abuse.py)
writes the same envelope, built by `document()` and read back by `read_document()`: `schema_version`,
`harness`, `name`, `created` (UTC, ISO 8601), `command` (how the harness was invoked), `machine`
(`host_facts()` and the harness's own facts) and `settings`, then the harness's own figures. The HTTP bench's
figures are typed below; for it, only raw figures are stored per run (requests, seconds, CPU seconds,
latencies); everything the docs show is derived from them here, by one set of functions, so a table can always
be traced back to its runs. The other harnesses save, print and publish through one tail,
`save_and_publish()`, behind the same three options (`add_publishing_options()`), and print their pages as the
docs render them (`for_terminal()`); a page's "rerun" names the make target under published figures only
(`rerun_command()`). Each measurement also carries a `summary` (median, min, max) for readers of the JSON;
loading ignores it and recomputes. The tradeoff: the schema is plain dataclasses checked by hand, not a
schema library, so it stays readable; `SCHEMA_VERSION` changes whenever a field changes or a required one is
added. A new field with a default that says what older files meant (a scenario's `path` is "/", its `mix`
empty) keeps the version: older files still load; so does a field that widens, read back as it was written
(a scenario's `needs`, once one name or null, now a list of names). The interpreter the servers ran on, and
its build, is part of `machine` (`interpreter`), and a generated page says it (`interpreter_line()`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.targets import interpreter_record
from bench.wrk import Scenario, WrkResult
from tools.phases import REPO_ROOT

# 2: every harness writes the same envelope (harness, name, created, command, machine, settings).
SCHEMA_VERSION = 2
# A run during which other processes used more than this share of a core is noisy: the bench repeats it.
NOISY_OTHER_SHARE = 0.25
PEER_PACKAGES = (
    "aiohttp",
    "granian",
    "gunicorn",
    "httptools",
    "starlette",
    "uvicorn",
    "uvloop",
    "matplotlib",
    "py-spy",
)


EXPLORATORY_PREFIX = "exploratory-"
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def add_publishing_options(
    parser: argparse.ArgumentParser, published: str, make_target: str, exploratory: str | None = None
) -> None:
    """--publish, --name and --from-results, the options every harness takes: `published` names its
    published results file (bench/results/PUBLISHED.json), which only --publish writes; any other run writes
    `exploratory` (default: exploratory-HARNESS-NAME, HARNESS the part of `published` before any dash)."""
    stem = published.split("-", maxsplit=1)[0]
    parser.add_argument(
        "--publish",
        action="store_true",
        help=f"write bench/results/{published}.json and what the docs show of it ({make_target})",
    )
    parser.add_argument(
        "--name",
        default=datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S"),  # runs never overwrite
        help=f"without --publish: bench/results/{exploratory or f'{EXPLORATORY_PREFIX}{stem}-NAME'}.json"
        " (default: the UTC time)",
    )
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="JSON",
        help="measure nothing: print what a results file shows; with --publish, rewrite the docs from it",
    )


def result_file_name(published_name: str, name: str, *, publish: bool) -> str:
    """The stem of a harness's results file under bench/results/: the published one, which the docs are drawn
    from, only when asked to publish; `exploratory-NAME` otherwise, a name no published file has."""
    return published_name if publish else EXPLORATORY_PREFIX + name


def shown(path: Path, root: Path = REPO_ROOT) -> str:
    """A results file as the generated pages name it: relative to the repository when it is inside."""
    resolved, root = path.resolve(), root.resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(path)


def harness_command(module: str, argv: list[str] | None) -> list[str]:
    """How a harness was invoked, for its results file: `python -m MODULE ARGUMENTS`."""
    return [sys.executable, "-m", module, *(sys.argv[1:] if argv is None else argv)]


def save_and_publish(
    options: argparse.Namespace,
    published: str,
    measure: Callable[[Path], dict[str, Any]],
    pages: Callable[[dict[str, Any], str], dict[Path, str]],
    draw: Callable[[dict[str, Any]], list[Path]] | None = None,
) -> int:
    """The tail every harness but the HTTP bench shares. With --from-results, read that file; otherwise
    `measure` (given the results file it will go to) and write the file. Then print the generated markdown
    `pages` (given the contents and the file they come from), and with --publish write them into docs/ and
    `draw` the charts."""
    harness = published.split("-", maxsplit=1)[0]
    if options.from_results is not None:
        source = options.from_results
        contents = read_document(source, harness)
    else:
        name = result_file_name(published, f"{harness}-{options.name}", publish=options.publish)
        source = RESULTS_DIR / f"{name}.json"
        contents = measure(source)
        write_document(contents, source)
        print(f"wrote {source}")
    texts = pages(contents, shown(source))
    print("\n\n".join(for_terminal(text) for text in texts.values()))
    if options.publish:
        for path, text in texts.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        written = [*texts, *(draw(contents) if draw else [])]
        print("\n".join(f"wrote {path}" for path in written))
    return 0


# What the rendered docs do not show, so neither does the terminal: HTML comments (the "generated by" notes
# and the snippet markers a chapter includes a section by), and a heading's attribute list (its anchor).
HIDDEN_LINE = re.compile(r"^\s*<!--.*-->\s*$")
HEADING_ATTRIBUTES = re.compile(r"\s*\{:?\s*#[^}]*\}\s*$")


def for_terminal(markdown: str) -> str:
    """A generated page as a reader's terminal shows it: its text and tables, without the Markdown machinery
    that only the docs build reads, and never two blank lines in a row where a hidden line was."""
    lines: list[str] = []
    for line in markdown.splitlines():
        if HIDDEN_LINE.match(line):
            continue
        shown_line = HEADING_ATTRIBUTES.sub("", line) if line.startswith("#") else line
        if shown_line.strip() or (lines and lines[-1].strip()):
            lines.append(shown_line)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines) + "\n"


class SchemaError(ValueError):
    """A results file that does not have the shape this code writes."""


@dataclass(frozen=True)
class Run(WrkResult):
    """One timed wrk run against one server: what wrk reported, and the CPU time read around it; raw figures
    only."""

    server_cpu_s: float  # user + system of the server's process tree during the run
    client_cpu_s: float  # the same for wrk
    machine_cpu_s: float  # the same for every process on the machine, from /proc/stat

    @property
    def other_cpu_s(self) -> float:
        """CPU time used during the run by neither the server nor wrk: noise from the rest of the machine."""
        return max(0.0, self.machine_cpu_s - self.server_cpu_s - self.client_cpu_s)

    @property
    def other_cpu_share(self) -> float:
        return self.other_cpu_s / self.duration_s

    @property
    def noisy(self) -> bool:
        return self.other_cpu_share > NOISY_OTHER_SHARE

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s

    @property
    def requests_per_server_cpu_s(self) -> float | None:
        return self.requests / self.server_cpu_s if self.server_cpu_s > 0 else None

    @property
    def server_cpu_us_per_request(self) -> float | None:
        return self.server_cpu_s * 1e6 / self.requests if self.requests else None

    @property
    def server_cpu_share(self) -> float:
        """How busy the server's CPU was: 1.0 is one core fully used."""
        return self.server_cpu_s / self.duration_s

    @property
    def client_cpu_share(self) -> float:
        """How busy wrk was: near 1.0, the client, not the server, limited the throughput."""
        return self.client_cpu_s / self.duration_s

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True)
class Spread:
    """The median of several runs, and their extremes: the noise is part of the result."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float | None]) -> Spread | None:
        present = [value for value in values if value is not None]
        if not present:
            return None
        return cls(statistics.median(present), min(present), max(present))


# The figures summarized over runs, by name: the tables and charts pick from these.
FIGURES: dict[str, Callable[[Run], float | None]] = {
    "requests_per_s": lambda run: run.requests_per_s,
    "requests_per_server_cpu_s": lambda run: run.requests_per_server_cpu_s,
    "server_cpu_us_per_request": lambda run: run.server_cpu_us_per_request,
    "server_cpu_share": lambda run: run.server_cpu_share,
    "client_cpu_share": lambda run: run.client_cpu_share,
    "p50_us": lambda run: run.latency_us.get("p50"),
    "p90_us": lambda run: run.latency_us.get("p90"),
    "p99_us": lambda run: run.latency_us.get("p99"),
    "p99.9_us": lambda run: run.latency_us.get("p99.9"),
    "errors": lambda run: float(run.error_count),
}


@dataclass(frozen=True)
class Measurement:
    """One target under one scenario: its `runs`, each on a fresh server after a warm-up (in older files, one
    server and one warm-up for all of them)."""

    target: str
    scenario: str
    server_command: list[str]
    wrk_command: list[str]
    runs: list[Run]
    peak_rss_bytes: (
        int | None
    )  # sum of VmHWM over the server's process tree, warm-up included; of the runs', the highest
    failure: str | None = None  # why the measurement stopped early, if it did
    discarded_runs: list[Run] = field(default_factory=list)  # noisy runs that were repeated
    not_served: str | None = None  # why the target was not measured: it does not serve what the scenario asks

    @property
    def noisy(self) -> bool:
        """Most of its kept runs were noisy still, after the repeats."""
        return sum(run.noisy for run in self.runs) * 2 > len(self.runs)

    def spread(self, figure: str) -> Spread | None:
        return Spread.of([FIGURES[figure](run) for run in self.runs])

    def ratio(self, reference: Measurement, figure: str) -> Spread | None:
        """`figure` over the reference's, run i over run i: with the targets taking turns run by run, each
        pair of runs saw the same state of the machine, so the ratio drifts less than either figure."""
        ratios: list[float | None] = []
        for run, reference_run in zip(self.runs, reference.runs, strict=False):
            value, reference_value = FIGURES[figure](run), FIGURES[figure](reference_run)
            ratios.append(value / reference_value if value is not None and reference_value else None)
        return Spread.of(ratios)

    def summary(self) -> dict[str, dict[str, float] | None]:
        return {
            name: dataclasses.asdict(spread) if (spread := self.spread(name)) else None for name in FIGURES
        }


@dataclass(frozen=True)
class IdleMemory:
    """Memory held by a server with many idle keep-alive connections open."""

    target: str
    server_command: list[str]
    connections_requested: int
    connections_held: int  # ESTABLISHED connections to the server's port held by its tree
    rss_before_bytes: int
    rss_after_bytes: int
    seconds_to_open: float
    failure: str | None = None

    @property
    def bytes_per_connection(self) -> float | None:
        if self.failure is not None or self.connections_held <= 0:
            return None
        return (self.rss_after_bytes - self.rss_before_bytes) / self.connections_held


@dataclass(frozen=True)
class TargetInfo:
    name: str
    kind: Literal["phase", "peer"]
    description: str


@dataclass(frozen=True)
class Settings:
    runs: int
    duration_s: int
    warmup_s: int
    server_cpus: str
    client_cpus: str
    idle_connections: int
    workers: int = 1  # every target's workers: processes, or hyper's threads
    # True: the targets took turns run by run, a fresh server each run. Older files: one server per target and
    # scenario, its runs one after another.
    interleaved: bool = False


@dataclass(frozen=True)
class Results:
    name: str
    created: str  # UTC, ISO 8601
    machine: dict[str, Any]
    settings: Settings
    command: list[str]  # how the harness itself was invoked
    targets: list[TargetInfo]
    scenarios: list[Scenario]
    skipped: dict[str, str]  # target name -> why it was not measured
    measurements: list[Measurement]
    idle: list[IdleMemory]
    elapsed_s: float | None = None  # how long the whole bench took
    schema_version: int = SCHEMA_VERSION
    harness: str = "http"

    def measurement(self, target: str, scenario: str) -> Measurement | None:
        found = (m for m in self.measurements if m.target == target and m.scenario == scenario)
        return next(found, None)

    def is_phase(self, target: str) -> bool:
        """One of our phases, not a peer (nor a target skipped before it was described)."""
        return any(info.name == target and info.kind == "phase" for info in self.targets)

    def idle_for(self, target: str) -> IdleMemory | None:
        return next((idle for idle in self.idle if idle.target == target), None)

    def to_json(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        for raw, measurement in zip(document["measurements"], self.measurements, strict=True):
            raw["summary"] = measurement.summary()
        for raw, idle in zip(document["idle"], self.idle, strict=True):
            raw["bytes_per_connection"] = idle.bytes_per_connection
        return document


def measured_on(contents: dict[str, Any], published_with: str) -> str:
    """The sentence under a generated table: when and on what it was measured, and the command to redo it
    (`rerun_command`)."""
    machine, rerun = contents["machine"], rerun_command(contents, published_with)
    return (
        f"Measured {contents['created'][:10]} on {machine['cpu_model']} ({machine['cores']} cores), Linux"
        f" {machine['kernel']}{python_version_clause(machine)}; rerun: `{rerun}`.{interpreter_note(machine)}"
    )


def interpreter_line(machine: dict[str, Any]) -> str:
    """The sentence under a generated table that says which interpreter ran the servers (or the code timed),
    and how it was built, from the record `host_facts` (or the HTTP bench, for --python) made of it; empty
    for a file from before that record, or for a run on several (bench/interpreters.py tabulates them)."""
    record = machine.get("interpreter")
    if not record:
        return ""
    chosen = f", {record['chosen_as']}" if record.get("chosen_as") else ""
    venv = record.get("peer_venv")
    peers = f"; the Python peers ran on its venv `{in_repository(venv)}`" if venv else ""
    executable = in_repository(record["executable"])
    return (
        f"Interpreter: {record['implementation']} {record['version']}, `{executable}`{chosen};"
        f" PGO {record['pgo']}, LTO {record['lto']} ({record['build_source']}){peers}."
    )


def interpreter_note(machine: dict[str, Any]) -> str:
    """`interpreter_line()` on a line of its own, to end a paragraph with; nothing for an older file."""
    interpreter = interpreter_line(machine)
    return f"\n{interpreter}" if interpreter else ""


def python_version_clause(machine: dict[str, Any]) -> str:
    """`, Python 3.11.7` in the sentence that says what a run was measured on, for a file from before the
    interpreter's record; none for a newer one: its `interpreter_line()` says it (or a table, for several)."""
    return "" if "interpreter" in machine else f", Python {machine['python']}"


# The directories of a repository that hold interpreters (the venv, the peers' venvs): a path through one is
# shown from the repository's root whichever clone measured it, so that a page rendered from a results file
# is the same in every clone.
INTERPRETER_DIRECTORIES = (".venv", ".bench-venvs")


def in_repository(path: str) -> str:
    """A path as a reader types it from the repository's root, if it is inside this one, or inside another
    clone's interpreter directory; symlinks are not followed, since a venv's python is a link to the
    interpreter it was made from."""
    if Path(path).is_relative_to(REPO_ROOT):
        return os.path.relpath(path, REPO_ROOT)
    parts = Path(path).parts
    for directory in INTERPRETER_DIRECTORIES:
        if directory in parts:
            return Path(*parts[parts.index(directory) :]).as_posix()
    return path


def rerun_command(contents: dict[str, Any], published_with: str) -> str:
    """The command that redoes the run a results file holds: `published_with` (the make target) if the run
    was published; otherwise the harness's own command line, as it was typed from the repository's root,
    because the make target would measure something else and overwrite the published results. A file that
    does not say how it was made gets the make target."""
    command = contents["command"]
    if not command or "--publish" in command:
        return published_with
    python = Path(command[0])
    shown_python = (
        python.relative_to(REPO_ROOT).as_posix() if python.is_relative_to(REPO_ROOT) else str(python)
    )
    return shlex.join([shown_python, *command[1:]])


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def document(
    harness: str,
    name: str,
    command: list[str],
    machine: dict[str, Any],
    settings: dict[str, Any],
    **figures: Any,
) -> dict[str, Any]:
    """A results file's contents: the envelope every harness shares, then its own figures."""
    return {
        "schema_version": SCHEMA_VERSION,
        "harness": harness,
        "name": name,
        "created": now(),
        "command": command,
        "machine": {**host_facts(), **machine},
        "settings": settings,
        **figures,
    }


def write_document(contents: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(contents, indent=2) + "\n")


def read_document(path: Path, harness: str) -> dict[str, Any]:
    """A results file's contents, once checked to be this schema version and this harness's."""
    contents: dict[str, Any] = json.loads(path.read_text())
    _check_envelope(contents, harness)
    return contents


def _check_envelope(contents: dict[str, Any], harness: str) -> None:
    version, written_by = contents.get("schema_version"), contents.get("harness")
    if version != SCHEMA_VERSION:
        raise SchemaError(f"schema_version is {version!r}; this code reads version {SCHEMA_VERSION}")
    if written_by != harness:
        raise SchemaError(f"written by the {written_by!r} harness, not {harness!r}")


def write(results: Results, path: Path) -> None:
    write_document(results.to_json(), path)


def load(path: Path) -> Results:
    return from_json(json.loads(path.read_text()))


def _build(cls: type[Any], raw: dict[str, Any], **nested: Any) -> Any:
    """Construct a dataclass from a dict, with a SchemaError naming any missing field."""
    names = [f.name for f in dataclasses.fields(cls)]
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    absent = [name for name in required if name not in raw and name not in nested]
    if absent:
        raise SchemaError(f"{cls.__name__} is missing {', '.join(absent)}")
    return cls(**{name: raw[name] for name in names if name in raw and name not in nested}, **nested)


def _scenario(raw: dict[str, Any]) -> Scenario:
    """A scenario, its lists as the tuples the code compares; `needs` written as one name, or null, by older
    files."""
    needs = raw.get("needs") or ()
    return _build(  # type: ignore[no-any-return]
        Scenario,
        raw,
        needs=(needs,) if isinstance(needs, str) else tuple(needs),
        mix=tuple(raw.get("mix", ())),
    )


def from_json(raw: dict[str, Any]) -> Results:
    _check_envelope(raw, "http")
    try:
        return _build(  # type: ignore[no-any-return]
            Results,
            raw,
            settings=_build(Settings, raw["settings"]),
            targets=[_build(TargetInfo, item) for item in raw["targets"]],
            scenarios=[_scenario(item) for item in raw["scenarios"]],
            measurements=[
                _build(
                    Measurement,
                    item,
                    runs=[_build(Run, run) for run in item["runs"]],
                    discarded_runs=[_build(Run, run) for run in item.get("discarded_runs", [])],
                )
                for item in raw["measurements"]
            ],
            idle=[_build(IdleMemory, item) for item in raw["idle"]],
        )
    except (KeyError, TypeError) as error:
        raise SchemaError(f"malformed results: {error}") from error


# --------------------------------------------------------------------------------------------- machine


def _first_line(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    output = (done.stdout + done.stderr).strip()
    return output.splitlines()[0] if output else None


def cpu_model(cpuinfo: str) -> str:
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def package_versions(names: tuple[str, ...] = PEER_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def host_facts() -> dict[str, Any]:
    """The machine every benchmark reports: CPU model, CPU count, kernel, Python, the CPUs the harness has,
    and the interpreter's own record of itself and its build (bench/targets.py, `interpreter_record`)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    return {
        "cpu_model": cpu_model(cpuinfo),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        # What the servers ran on, unless the harness says otherwise (the HTTP bench's --python).
        "interpreter": interpreter_record(sys.executable),
    }


def machine_facts(nginx: str | None, hyper_lock: Path | None) -> dict[str, Any]:
    """What a reader needs to compare their numbers with ours."""
    hyper_version = None
    if hyper_lock is not None and hyper_lock.exists():
        found = re.search(r'name = "hyper"\nversion = "([^"]+)"', hyper_lock.read_text())
        hyper_version = found.group(1) if found else None
    return {
        **host_facts(),
        "os": _os_name(),
        "python_executable": sys.executable,
        "packages": package_versions(),
        "wrk": (_first_line(["wrk", "--version"]) or "").partition(" Copyright")[0] or None,
        "nginx": _first_line([nginx, "-v"]) if nginx else None,
        "hyper": hyper_version,
        "load_average_at_start": os.getloadavg(),  # a busy machine makes noisy numbers
    }


def _os_name() -> str | None:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME")
    except OSError:
        return None
