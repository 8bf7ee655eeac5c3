"""The servers we measure, and how each one is started, checked and stopped.

A target is either one of our HTTP phases or a peer: a well-known server doing the same work. Each is started
the same way: on port 0, so the kernel picks a free port and no other process can take it first, pinned to
the server CPUs with `taskset`, in its own process group (nginx, gunicorn and granian fork workers; stopping
the group stops them all), with its output in a log file. Not every peer prints the port it got, so the
harness asks the kernel (psutil) which port the server's process tree listens on. Every target runs the same
number of workers, `--workers N` (processes, or a Rust runtime's threads); one that serves from a single
process is not measured when N > 1, with the reason.

Every target serves `GET /`: 200, `text/plain`, `Hello, World!`. Beyond it, a target serves what its `serves`
names: our phases what their CAPABILITIES say, the peers what they are set up here to serve. "routing" is our
demo app's routes, `GET /json` and `GET /users/{id:int}`, answered with our bytes exactly (`{"id": 123}`, as
json.dumps writes it); "static_files" is the files of one directory, which the harness writes, under
/static/. A target counts as started once `GET /` answers the hello world, and before each run it must answer
every request of the scenario as `expected_answer` says (status, media type, body byte for byte): the same
check for every target, so no target is ever measured serving something else. A peer whose tool is missing is
skipped with the reason. The tradeoff: nginx refuses `listen ...:0`, so for nginx alone the harness picks a
free port and nginx binds it a moment later; if another process takes it in between, nginx fails to start and
the run says so.

The Python targets (our phases and the Python peers) run on the harness's own interpreter unless a target is
moved to another with `run_on`; `on_interpreter` moves them all: the phases (standard library only) and the
peers that import nothing else run on it directly, the peers that import packages run on a venv of it under
.bench-venvs/, which `peer_venv` makes once and fills with the bench extra's pins from pyproject.toml.
`interpreter_record` asks an interpreter what it is and how it was built, for the results files.
"""

from __future__ import annotations

import dataclasses
import http.client
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from tools.phases import HOST, REPO_ROOT, find_phases, phase_capabilities, phase_command, pinned

PEERS_DIR = Path(__file__).resolve().parent / "peers"
EXPECTED_BODY = b"Hello, World!"
JSON_BODY = b'{"message":"Hello, World!"}'  # GET /json, as our demo app sends it
USERS_PREFIX = "/users/"  # GET /users/{id:int}: json.dumps({"id": id})
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# What a scenario may need beyond `GET /`, as phase capabilities name it.
SERVABLE = frozenset({"routing", "static_files"})
# Asked of every target in the checks, as a browser asks: a target that compresses is caught by the body.
CHECK_HEADERS = {"Accept-Encoding": "gzip, deflate, br, zstd"}


@dataclass(frozen=True)
class StaticFile:
    """A file the harness writes into the static directory, and the media types a target may send it as: the
    first is the registered one (nginx.conf says it); any other is an alias that some type tables still give
    (Python's own, without /etc/mime.types, calls JavaScript application/javascript)."""

    name: str
    size: int
    media_types: tuple[str, ...]

    @property
    def url_path(self) -> str:
        return f"/static/{self.name}"

    def content(self) -> bytes:
        """Every byte value in turn, so any offset can be checked, starting where the file's place in
        STATIC_FILES says: the same every run, and no two files alike, so serving the wrong one is caught."""
        start = STATIC_FILES.index(self)
        return (bytes(range(256)) * (self.size // 256 + 2))[start : start + self.size]


STATIC_FILES = (
    StaticFile("file64k.bin", 64 * 1024, ("application/octet-stream",)),
    # A small site's page assets, at sizes typical of minified files (sent as they are: no target here
    # compresses). Types that every type table agrees on, JavaScript aside: no font, since Python's own
    # table has no woff2.
    StaticFile("style.css", 16 * 1024, ("text/css",)),
    StaticFile("app.js", 48 * 1024, ("text/javascript", "application/javascript")),
    StaticFile("logo.svg", 4 * 1024, ("image/svg+xml",)),
    StaticFile("hero.jpg", 40 * 1024, ("image/jpeg",)),
    StaticFile("avatar.png", 8 * 1024, ("image/png",)),
)
STATIC_FILES_BY_PATH = {file.url_path: file for file in STATIC_FILES}
# The static-64k scenario's file.
STATIC_FILE = STATIC_FILES[0]
STATIC_FILE_BYTES = STATIC_FILE.size
STATIC_URL_PATH = STATIC_FILE.url_path

# A target's command line, given the port it must listen on (0: any), a scratch directory for its own files,
# the directory of static files to serve at /static/ (if it serves any) and the number of workers to run.
CommandFactory = Callable[[int, Path, Path, int], list[str]]


class TargetFailed(Exception):
    """A target did not start, did not answer correctly, or died: the message says which, with its log."""


@dataclass(frozen=True)
class Target:
    name: str
    kind: Literal["phase", "peer"]
    description: str
    command: CommandFactory
    # None when the target can run here; otherwise why not, in words a reader can act on.
    missing: Callable[[], str | None] = lambda: None
    serves: frozenset[str] = frozenset()  # which of SERVABLE it serves, besides `GET /`
    one_process: str | None = None  # why it cannot run more than one worker, or None if it can
    # The packages a Python peer imports (pip's names, pinned in pyproject.toml's bench extra).
    python_modules: tuple[str, ...] = ()

    def not_served(self, needs: Collection[str]) -> str | None:
        """Why this target is not measured in a scenario that needs `needs`, or None if it is."""
        lacking = ", ".join(repr(need) for need in sorted(set(needs) - self.serves))
        if not lacking:
            return None
        if self.kind == "phase":
            return f"its CAPABILITIES have no {lacking}"
        return "set up here to serve GET / only" if not self.serves else f"set up here without {lacking}"


@dataclass(frozen=True)
class Answer:
    """What a target must answer to one GET: 200, one of `media_types` (parameters such as charset aside),
    and `body`, byte for byte."""

    media_types: tuple[str, ...]
    body: bytes


def expected_answer(path: str) -> Answer:
    """The answer every target must give to `GET path`, for each path a scenario asks for; ValueError for a
    path no scenario asks for."""
    if path == "/":
        return Answer(("text/plain",), EXPECTED_BODY)
    if path == "/json":
        return Answer(("application/json",), JSON_BODY)
    digits = path.removeprefix(USERS_PREFIX)
    if path.startswith(USERS_PREFIX) and digits.isascii() and digits.isdigit():
        return Answer(("application/json",), json.dumps({"id": int(digits)}).encode())
    if (file := STATIC_FILES_BY_PATH.get(path)) is not None:
        return Answer(file.media_types, file.content())
    raise ValueError(f"no target is expected to serve {path!r}")


def write_static_files(directory: Path) -> Path:
    """Fill `directory`, the static files every target serves at /static/: STATIC_FILES. All are made
    readable by everyone: started by root, nginx runs its worker as `nobody`. So `directory` must be its own
    temporary directory, not inside a private (0700) one."""
    directory.chmod(0o755)
    for static_file in STATIC_FILES:
        file = directory / static_file.name
        file.write_bytes(static_file.content())
        file.chmod(0o644)
    return directory


# --------------------------------------------------------------------------------------------- our phases


def _phase_command(name: str, capabilities: frozenset[str]) -> CommandFactory:
    def command(port: int, scratch: Path, static_dir: Path, workers: int) -> list[str]:
        options = ["--static-dir", str(static_dir)] if "static_files" in capabilities else []
        options += ["--workers", str(workers)] if "multi_process" in capabilities else []
        return phase_command(name, *options)  # on port 0, always

    return command


def discover_phases(root: Path = REPO_ROOT) -> list[Target]:
    """Every phase package at the repository root that speaks HTTP, in phase order."""
    phases = []
    for path in find_phases(root):
        if not (path / "__init__.py").is_file() or "http" not in (capabilities := phase_capabilities(path)):
            continue
        description = f"this repository's {path.name}"
        command = _phase_command(path.name, capabilities)
        one_process = None if "multi_process" in capabilities else "its CAPABILITIES have no 'multi_process'"
        phases.append(
            Target(
                path.name,
                "phase",
                description,
                command,
                missing=_io_uring_missing(path.name) if "io_uring" in capabilities else lambda: None,
                serves=capabilities & SERVABLE,
                one_process=one_process,
            )
        )
    return phases


def _io_uring_missing(name: str) -> Callable[[], str | None]:
    """A phase on io_uring runs only where the kernel lets it: its uring.py says why not, if it cannot."""

    def missing() -> str | None:
        reason: str | None = importlib.import_module(f"{name}.uring").unavailable_reason()
        return reason

    return missing


# --------------------------------------------------------------------------------------------- the peers


def _python_modules_missing(*modules: str, python: str = sys.executable) -> Callable[[], str | None]:
    """Which of `modules` `python` cannot import: this interpreter looks itself, any other is asked."""

    def missing() -> str | None:
        if python == sys.executable:
            absent = [module for module in modules if importlib.util.find_spec(module) is None]
            where = " (pip install '.[bench]')"
        else:
            look = "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if not u.find_spec(m)])"
            asked = subprocess.run(
                [python, "-c", look, *modules], capture_output=True, text=True, check=False
            )
            if asked.returncode != 0:
                return f"{python} cannot look for its packages: {_first_words(asked.stderr)}"
            absent, where = asked.stdout.split(), f" in {python}'s environment"
        if not absent:
            return None
        return f"Python package(s) {', '.join(absent)} not installed{where}"

    return missing


def _python_peer(
    name: str,
    description: str,
    command: CommandFactory,
    modules: tuple[str, ...],
    *,
    serves: frozenset[str] = frozenset(),
    one_process: str | None = None,
) -> Target:
    """A peer run by Python that imports `modules`: missing where they are not installed."""
    missing = _python_modules_missing(*modules)
    return Target(name, "peer", description, command, missing, serves, one_process, python_modules=modules)


def _python_module(arguments: str, more_workers: str = "") -> CommandFactory:
    """`python -m ARGUMENTS`, with {host}, {port}, {workers} and {static_dir} filled in, and `more_workers`
    too if there are more than one. Run from the repository root, where the `bench.peers` apps import."""

    def command(port: int, scratch: Path, static_dir: Path, workers: int) -> list[str]:
        words = (arguments + (more_workers if workers > 1 else "")).split()
        fields = {"host": HOST, "port": port, "workers": workers, "static_dir": static_dir}
        return [sys.executable, "-m", *(word.format(**fields) for word in words)]

    return command


# uvicorn as both of its targets run it: uvloop, httptools, no lifespan events, no access log.
UVICORN = (
    "uvicorn --host {host} --port {port} --loop uvloop --http httptools --lifespan off"
    " --no-access-log --log-level warning --backlog 2048 --timeout-keep-alive 75"
)
STATIC_DIR_VARIABLE = "BENCH_STATIC_DIR"  # where bench/peers/starlette_app.py finds the static files


def _starlette_command(port: int, scratch: Path, static_dir: Path, workers: int) -> list[str]:
    # uvicorn imports the app by its name, so the app cannot take arguments: it reads the environment.
    uvicorn = _python_module(f"{UVICORN} bench.peers.starlette_app:app", more_workers=" --workers {workers}")
    return ["env", f"{STATIC_DIR_VARIABLE}={static_dir}", *uvicorn(port, scratch, static_dir, workers)]


def nginx_path() -> str | None:
    # Debian puts nginx in /usr/sbin, which is not on a normal user's PATH.
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def _nginx_missing() -> str | None:
    return None if nginx_path() else "nginx is not installed (Debian: apt-get install nginx)"


def _nginx_command(port: int, scratch: Path, static_dir: Path, workers: int) -> list[str]:
    if port == 0:  # nginx rejects port 0 in `listen`: the one target that needs a port chosen for it
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
    template = string.Template((PEERS_DIR / "nginx.conf").read_text())
    (scratch / "nginx.conf").write_text(
        template.substitute(prefix=scratch, port=port, static_dir=static_dir, workers=workers)
    )
    nginx = nginx_path()
    assert nginx is not None, "checked by _nginx_missing"
    # -e: nginx opens its default error log before reading the config; point that one here too.
    return [nginx, "-p", str(scratch), "-c", "nginx.conf", "-e", str(scratch / "error.log")]


HYPER_DIR = PEERS_DIR / "hyper"
HYPER_BINARY = HYPER_DIR / "target" / "release" / "hello-hyper"
DEBIAN_CRATES = Path("/usr/share/cargo/registry")
HYPER_CRATES = ("hyper-0.14", "tokio-1.")
# Cargo reads crates from Debian's packaged sources instead of the network: a "source replacement".
CARGO_CONFIG = f"""\
[source.crates-io]
replace-with = "debian"

[source.debian]
directory = "{DEBIAN_CRATES}"

[net]
offline = true
"""


def cargo_path() -> str | None:
    return shutil.which("cargo") or shutil.which("cargo", path=str(Path.home() / ".cargo" / "bin"))


def _hyper_missing() -> str | None:
    """Build the hyper peer on first use (offline, ~20 s); None once the binary is there."""
    sources = [HYPER_DIR / "Cargo.toml", *sorted((HYPER_DIR / "src").glob("*.rs"))]
    newest_source = max(path.stat().st_mtime for path in sources)
    if HYPER_BINARY.exists() and HYPER_BINARY.stat().st_mtime >= newest_source:
        return None
    cargo = cargo_path()
    if cargo is None:
        return "cargo is not installed (https://rustup.rs, or Debian: apt-get install cargo)"
    crates = [entry.name for entry in DEBIAN_CRATES.iterdir()] if DEBIAN_CRATES.is_dir() else []
    if not all(any(crate.startswith(prefix) for crate in crates) for prefix in HYPER_CRATES):
        return (
            f"the hyper and tokio crate sources are not in {DEBIAN_CRATES}"
            " (Debian: apt-get install librust-hyper-dev librust-tokio-dev)"
        )
    config = HYPER_DIR / "target" / "cargo-config.toml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(CARGO_CONFIG)
    print(f"building the hyper peer: cargo build --release in {HYPER_DIR} (once)", flush=True)
    build = subprocess.run(
        [cargo, "--config", str(config), "build", "--offline", "--release", "--quiet"],
        cwd=HYPER_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if build.returncode != 0:
        return f"cargo build failed:\n{build.stderr[-2000:]}"
    return None


def _hyper_command(port: int, scratch: Path, static_dir: Path, workers: int) -> list[str]:
    threads = ["--threads", str(workers)] if workers > 1 else []  # a multi-thread runtime
    return [str(HYPER_BINARY), "--host", HOST, "--port", str(port), "--static-dir", str(static_dir), *threads]


PEERS = (
    Target(
        "nginx",
        "peer",
        "nginx, --workers worker processes, access log off; the routes as `return` in `location` blocks"
        " (a regex for /users/N), static files by sendfile (C)",
        _nginx_command,
        _nginx_missing,
        serves=SERVABLE,
    ),
    Target(
        "hyper",
        "peer",
        "hyper 0.14 on a current-thread tokio runtime (multi-thread, --workers threads, if more than one),"
        " what Axum runs on; the routes in a `match`, static files read whole per request (Rust)",
        _hyper_command,
        _hyper_missing,
        serves=SERVABLE,
    ),
    _python_peer(
        "granian",
        "granian, RSGI app routing with a dict, --workers workers, 1 runtime thread each; static files by"
        " granian itself (Rust server, Python app)",
        _python_module(
            "granian --interface rsgi --host {host} --port {port} --http 1 --no-ws --workers {workers}"
            " --runtime-mode st --runtime-threads 1 --loop uvloop --backlog 2048 --backpressure 16384"
            " --no-access-log --log-level warning"
            " --static-path-route /static --static-path-mount {static_dir} bench.peers.rsgi_app:app"
        ),
        ("granian", "uvloop"),
        serves=SERVABLE,
    ),
    _python_peer(
        "uvicorn",
        "uvicorn with uvloop and httptools, --workers processes, a raw ASGI app serving GET / only: the"
        " least an ASGI server adds (Python; C and Cython loop and parser)",
        _python_module(f"{UVICORN} bench.peers.asgi_app:app", more_workers=" --workers {workers}"),
        ("uvicorn", "uvloop", "httptools"),
    ),
    _python_peer(
        "starlette",
        "uvicorn like the above, --workers processes, running a Starlette app: its router and its"
        " StaticFiles, the core of FastAPI (Python)",
        _starlette_command,
        ("uvicorn", "uvloop", "httptools", "starlette"),
        serves=SERVABLE,
    ),
    _python_peer(
        "aiohttp",
        "aiohttp web server on the standard asyncio loop, its router, static files by sendfile (Python, C"
        " parser)",
        _python_module("bench.peers.aiohttp_app --host {host} --port {port} --static-dir {static_dir}"),
        ("aiohttp",),
        serves=SERVABLE,
        one_process="aiohttp's web.run_app serves from one process",
    ),
    _python_peer(
        "gunicorn",
        "gunicorn, --workers gthread workers with 4 threads each, WSGI app (Python)",
        _python_module(
            "gunicorn --bind {host}:{port} --worker-class gthread --workers {workers} --threads 4"
            " --worker-connections 16384 --keep-alive 75 --backlog 2048 --log-level warning"
            " bench.peers.wsgi_app:app"
        ),
        ("gunicorn",),
    ),
    Target(
        "stdlib",
        "peer",
        "the standard library's ThreadingHTTPServer, HTTP/1.1, a thread per connection (Python)",
        _python_module("bench.peers.stdlib_app --host {host} --port {port}"),
        one_process="one process, a thread per connection",
    ),
    Target(
        "floor",
        "peer",
        "the floor: epoll, recv_into, count the request ends, send canned responses; no parsing, no routing"
        " (bench/peers/floor.py); the ceiling for a pure-Python server",
        _python_module("bench.peers.floor --host {host} --port {port}", more_workers=" --workers {workers}"),
    ),
)


def select(names: list[str], phases: list[Target]) -> list[Target]:
    """The targets named, in the order given. `phases`, `peers` and `all` stand for groups."""
    by_name = {target.name: target for target in [*phases, *PEERS]}
    groups = {"phases": phases, "peers": list(PEERS), "all": [*phases, *PEERS]}
    chosen: list[Target] = []
    for name in names:
        if name in groups:
            named = groups[name]
        elif name in by_name:
            named = [by_name[name]]
        else:
            raise ValueError(f"unknown target {name!r} (known: {', '.join([*groups, *by_name])})")
        chosen.extend(target for target in named if target not in chosen)
    return chosen


# --------------------------------------------------------------------------------------------- running


def check_answers(port: int, paths: Iterable[str], timeout: float = 2.0) -> str | None:
    """None if `GET path` answers as `expected_answer(path)` says, for each of `paths` in turn on one
    keep-alive connection; otherwise what is wrong with the first wrong answer. Raises OSError if no server
    accepts the connection (yet)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        for path in paths:
            expected = expected_answer(path)
            connection.request("GET", path, headers=CHECK_HEADERS)
            response = connection.getresponse()
            body = response.read()
            media_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if response.status == 200 and media_type in expected.media_types and body == expected.body:
                continue
            shown = repr(body[:60]) if len(body) <= 60 else f"{body[:40]!r}... ({len(body):,} bytes)"
            wanted = repr(expected.body) if len(expected.body) <= 60 else f"its {len(expected.body):,} bytes"
            return (
                f"GET {path} answered {response.status}, Content-Type {media_type or 'missing'!r}, body"
                f" {shown}; the bench expects 200, {' or '.join(map(repr, expected.media_types))}, {wanted}"
            )
        return None
    finally:
        connection.close()


def check_hello(port: int) -> str | None:
    """None if `GET /` answers the bench's hello world; otherwise what is wrong. Raises OSError if no server
    accepts the connection yet."""
    return check_answers(port, ["/"])


@dataclass
class RunningTarget:
    """A target started by `start`: stop it with `stop`, which ends its whole process group."""

    target: Target
    process: subprocess.Popen[bytes]
    command: list[str]
    log_path: Path
    port: int = 0  # known once the server listens

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, characters: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except FileNotFoundError:
            return ""

    def exited(self) -> str | None:
        """Why the server is gone, or None while it runs."""
        code = self.process.poll()
        if code is None:
            return None
        return f"{self.target.name} exited with status {code}; its output ends with:\n{self.log_tail()}"

    def stop(self) -> None:
        """SIGTERM to the process group, then SIGKILL to whatever is left of it after a grace period (a worker
        that outlived its master). The group is ours: start_new_session made the server its leader."""
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()


def _signal_group(process_group: int, sig: signal.Signals) -> None:
    try:
        os.killpg(process_group, sig)
    except ProcessLookupError:  # the whole group has exited already
        pass


def start(target: Target, cpus: str, scratch: Path, static_dir: Path, workers: int = 1) -> RunningTarget:
    """Start a target pinned to `cpus`, with `workers` workers, serving `static_dir`'s files if it serves
    static files; return once it serves the hello world, TargetFailed otherwise."""
    scratch.mkdir(parents=True, exist_ok=True)
    command = pinned(cpus, target.command(0, scratch, static_dir, workers))
    log_path = scratch / f"{target.name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = RunningTarget(target, process, command, log_path)
    try:
        _wait_until_ready(running)
    except TargetFailed:
        running.stop()
        raise
    return running


def listening_port(pid: int) -> int | None:
    """The TCP port on HOST that the process tree under `pid` listens on, or None if none does yet."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    for process in tree:
        try:
            connections = process.net_connections(kind="tcp4")
        except psutil.NoSuchProcess:
            continue
        for connection in connections:
            if connection.status == psutil.CONN_LISTEN and connection.laddr.ip == HOST:
                port: int = connection.laddr.port
                return port
    return None


def _wait_until_ready(running: RunningTarget) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if (reason := running.exited()) is not None:
            raise TargetFailed(reason)
        if not running.port and (port := listening_port(running.pid)) is not None:
            running.port = port
        try:
            if not running.port:
                raise ConnectionRefusedError("not listening yet")
            problem = check_hello(running.port)
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)  # not listening yet: polling is the only portable way for every target
            continue
        if problem is not None:
            raise TargetFailed(f"{running.target.name}: {problem}")
        return
    raise TargetFailed(
        f"{running.target.name} did not answer GET / within {STARTUP_TIMEOUT:.0f} s:\n{running.log_tail()}"
    )


# -------------------------------------------------------------------------------------------- the interpreter

PEER_VENVS = REPO_ROOT / ".bench-venvs"  # git-ignored: a venv per interpreter, for the Python peers' packages
PYPROJECT = REPO_ROOT / "pyproject.toml"
# Run by the interpreter described (`python -I -c`), so it speaks for itself: its sysconfig variables, and the
# libpython files it has loaded, from /proc/self/maps (none when it is linked statically).
INTERPRETER_PROBE = """\
import json, os, platform, sys, sysconfig
names = "CONFIG_ARGS PY_CFLAGS_NODIST PY_LDFLAGS_NODIST OPT Py_ENABLE_SHARED INSTSONAME".split()
with open("/proc/self/maps") as maps:
    loaded = sorted({line.split()[-1] for line in maps if "/libpython" in line})
print(json.dumps({
    "executable": sys.executable,
    "real_executable": os.path.realpath(sys.executable),
    "version": platform.python_version(),
    "implementation": platform.python_implementation(),
    "compiler": platform.python_compiler(),
    "sysconfig": {name: sysconfig.get_config_var(name) for name in names},
    "libpython_loaded": loaded,
}))
"""


class InterpreterError(Exception):
    """An interpreter that cannot serve here (not found, not answering, no venv of it): why, in one line."""


def _first_words(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:200] if lines else "no output"


def interpreter_record(python: str) -> dict[str, Any]:
    """What `python` says it is (executable and the file it links to, version, implementation, compiler, the
    sysconfig variables of its build, the libpython it loaded), and its build as `build_of` reads them."""
    try:
        described = subprocess.run(
            [python, "-I", "-c", INTERPRETER_PROBE], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as error:
        raise InterpreterError(f"{python}: {error.strerror}") from error
    if described.returncode != 0:
        raise InterpreterError(f"{python} could not describe itself: {_first_words(described.stderr)}")
    record: dict[str, Any] = json.loads(described.stdout)
    return {**record, **build_of(record["sysconfig"], record["libpython_loaded"])}


def build_of(config: dict[str, Any], libpython_loaded: list[str]) -> dict[str, str]:
    """Whether the interpreter was built with PGO (configure's --enable-optimizations) and with LTO
    (--with-lto): "yes" or "no" as its CONFIG_ARGS says, or the flags --with-lto adds (-flto, in the *_NODIST
    variables; the PGO build passes -fprofile-use on make's command line, which sysconfig does not keep); with
    `build_source`, where that was read. "unknown" when the record is not this executable's: it says libpython
    is a shared library, and the process has not loaded one. So it is with Debian's /usr/bin/python3.X: it is
    linked statically, and its sysconfig describes the shared libpython built beside it. Debian builds it
    with PGO and LTO, but nothing in the interpreter says so: the record says only what it says."""
    soname = str(config.get("INSTSONAME") or "libpython")
    if config.get("Py_ENABLE_SHARED") and not any(Path(path).name == soname for path in libpython_loaded):
        return {
            "pgo": "unknown",
            "lto": "unknown",
            "build_source": f"its sysconfig describes a build with a shared {soname}, which this executable"
            " does not load: its own build is not on record",
        }
    config_args = str(config.get("CONFIG_ARGS") or "")
    options = shlex.split(config_args)
    flags = " ".join(
        [config_args, *(str(config.get(name) or "") for name in ("PY_CFLAGS_NODIST", "PY_LDFLAGS_NODIST"))]
    )
    pgo = _configured(options, "--enable-optimizations") or "-fprofile-use" in flags
    lto = _configured(options, "--with-lto") or "-flto" in flags
    return {
        "pgo": "yes" if pgo else "no",
        "lto": "yes" if lto else "no",
        "build_source": "read from its sysconfig: CONFIG_ARGS and the compiler flags",
    }


def _configured(options: list[str], option: str) -> bool:
    """`option` given to configure, bare or with a value other than `no` (--with-lto=thin is LTO too)."""
    return any(
        given == option or (given.startswith(f"{option}=") and given != f"{option}=no") for given in options
    )


def run_on(target: Target, python: str, name: str | None = None) -> Target:
    """`target` run by `python` instead of the harness's interpreter, and named `name` if given. The command
    of every Python target names sys.executable once (phase_command, _python_module): that word is swapped
    for `python`. nginx's and hyper's commands have none: they stay as they are."""

    def command(port: int, scratch: Path, static_dir: Path, workers: int) -> list[str]:
        words = target.command(port, scratch, static_dir, workers)
        return [python if word == sys.executable else word for word in words]

    missing = target.missing
    if target.python_modules:
        missing = _python_modules_missing(*target.python_modules, python=python)
    return dataclasses.replace(target, name=name or target.name, command=command, missing=missing)


def on_interpreter(
    chosen: list[Target], python: str, venvs: Path = PEER_VENVS
) -> tuple[list[Target], str | None]:
    """`chosen`, run by `python`: the targets that import no package directly (our phases need the standard
    library only), the Python peers that do from a venv of `python` holding their packages (`peer_venv`).
    Returns them, and the venv's python if one was needed; InterpreterError if it cannot be made."""
    modules = [module for target in chosen for module in target.python_modules]
    venv_python = peer_venv(python, peer_requirements(modules), venvs) if modules else None
    moved = [
        run_on(target, venv_python if venv_python and target.python_modules else python) for target in chosen
    ]
    return moved, venv_python


def _normalized(name: str) -> str:
    """A package's name as pip compares names (PEP 503): `Py_Spy` is `py-spy`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def peer_requirements(modules: Collection[str], pyproject: Path = PYPROJECT) -> list[str]:
    """The pins of pyproject.toml's bench extra (`name==version`) for the packages `modules`, in its order;
    ValueError for one it does not pin."""
    extra: list[str] = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["bench"]
    by_name = {_normalized(re.split(r"[\s<>=!~;\[]", pin, maxsplit=1)[0]): pin for pin in extra}
    wanted = {_normalized(module) for module in modules}
    if unpinned := sorted(wanted - set(by_name)):
        raise ValueError(f"the bench extra of {pyproject} pins no {', '.join(unpinned)}")
    return [pin for name, pin in by_name.items() if name in wanted]


def venv_name(record: dict[str, Any]) -> str:
    """`cpython-3.11.2-usr-bin-python3.11`: implementation, version and real path of the interpreter."""
    real_path = record["real_executable"].strip("/").replace("/", "-")
    return f"{record['implementation'].lower()}-{record['version']}-{real_path}"


def peer_venv(python: str, requirements: list[str], root: Path = PEER_VENVS) -> str:
    """The python of a venv that `python -m venv` made under `root`, holding `requirements` (pip's pins): made
    once and reused; pip installs again when the requirements change (pyproject.toml's bench extra did).
    InterpreterError, in one line, if the venv cannot be made (Debian's python3.X without python3.X-venv has
    no ensurepip, so no pip) or pip fails."""
    record = interpreter_record(python)
    directory = root / venv_name(record)
    venv_python = directory / "bin" / "python"
    installed = directory / "bench-requirements.txt"  # what pip last installed here
    wanted = "".join(f"{requirement}\n" for requirement in requirements)
    if venv_python.exists() and installed.is_file() and installed.read_text() == wanted:
        return str(venv_python)
    # With pip only when there is something to install: ensurepip takes half a minute on a busy machine.
    if not venv_python.exists() or (requirements and not (directory / "bin" / "pip").exists()):
        print(f"making a venv of {python} for the Python peers (once): {directory}", file=sys.stderr)
        without_pip = [] if requirements else ["--without-pip"]
        made = subprocess.run(
            [python, "-m", "venv", "--clear", *without_pip, str(directory)],
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            output = made.stdout + made.stderr
            version = ".".join(record["version"].split(".")[:2])
            why = f"it has no ensurepip (Debian: apt-get install python{version}-venv)"
            raise InterpreterError(
                f"{python} cannot make a venv for the Python peers: "
                + (why if "ensurepip" in output else _first_words(output))
            )
    if requirements:
        print(f"installing {' '.join(requirements)} into {directory}", file=sys.stderr)
        pip = [str(venv_python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        done = subprocess.run([*pip, *requirements], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
            raise InterpreterError(
                f"pip could not install the Python peers' packages into {directory}: "
                + _first_words("\n".join(errors) or done.stderr)
            )
    installed.write_text(wanted)
    return str(venv_python)
