"""The phase packages: finding them, reading their CAPABILITIES, and running one as a server.

The tests, the bench harness and tools/gen_diffs.py all start from `find_phases`; the tests and the bench run
servers with `PhaseProcess`, pinned to CPUs with `pinned()`, after `raise_open_file_limit()`:

    server = PhaseProcess("phase2_nonblocking", "--trigger", "edge", root=REPO_ROOT)
    ...  # talk to server.address
    server.stop()  # the exit code; server.failure() says what went wrong, if anything did

The command is `[PREFIX...] python -m PACKAGE --host 127.0.0.1 --port 0 OPTIONS`, run from `root`, the
directory that holds the package (its cwd and PYTHONPATH). A prefix such as `taskset --cpu-list 1` execs
Python in the end, so the pid is the server's own. Port 0 lets the kernel pick a free port; the server names
it on its first line of stdout, `listening on HOST:PORT`, which is waited for with a selector and a timeout,
never by sleeping. Stopping is SIGTERM, then SIGKILL if the server has not exited in time. The tradeoff: what
the server writes to stderr goes to a temporary file, read once it has stopped, so nothing can watch it live.
"""

from __future__ import annotations

import importlib
import itertools
import os
import re
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 10.0
LISTENING_LINE = re.compile(r"listening on (\S+):(\d+)\n")
PHASE_DIR_PATTERN = re.compile(r"^phase(\d+)_\w+$")


# Each phase starts as a copy of the one before it, except after a branch of the story: phase 7 (io_uring) is
# one that later phases do not take, since containers, older kernels and other machines cannot make a ring,
# so phase 8 starts from phase 6. Its chapter's diff, and the bench's "against the one before", follow this.
BUILDS_ON = {"phase8_tls": "phase6_perf"}


def find_phases(root: Path) -> list[Path]:
    """The phase directories under `root` (`phaseN_name/`), ordered by N: phase10 comes after phase9."""
    numbered = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if path.is_dir() and (match := PHASE_DIR_PATTERN.match(path.name))
    ]
    return [path for _, path in sorted(numbered)]


def phase_pairs(root: Path) -> list[tuple[Path, Path]]:
    """Each phase after the first, after the phase it starts from (BUILDS_ON, else the one before it)."""
    phases = find_phases(root)
    by_name = {path.name: path for path in phases}
    return [
        (by_name.get(BUILDS_ON.get(later.name, ""), earlier), later)
        for earlier, later in itertools.pairwise(phases)
    ]


def builds_on(name: str, names: Sequence[str]) -> str | None:
    """The phase among `names` (in phase order) that `name` starts from, or None for the first."""
    if name in BUILDS_ON and BUILDS_ON[name] in names:
        return BUILDS_ON[name]
    index = list(names).index(name)
    return names[index - 1] if index > 0 else None


def newest_phase_with(root: Path, file_name: str) -> Path | None:
    """The last phase directory (by N) that holds `file_name`, e.g. the newest with a protocol.py."""
    having = [path for path in find_phases(root) if (path / file_name).is_file()]
    return having[-1] if having else None


def phase_capabilities(package_dir: Path) -> frozenset[str]:
    """The CAPABILITIES frozenset of a phase package, imported with its parent directory on sys.path."""
    if not (package_dir / "__init__.py").is_file():
        raise ValueError(f"{package_dir} is not a Python package (no __init__.py)")
    if str(package_dir.parent) not in sys.path:
        sys.path.insert(0, str(package_dir.parent))
    capabilities: object = getattr(importlib.import_module(package_dir.name), "CAPABILITIES", None)
    if not isinstance(capabilities, frozenset):
        raise ValueError(f"{package_dir}/__init__.py must define CAPABILITIES = frozenset({{...}})")
    return frozenset(str(capability) for capability in capabilities)


def pinned(cpus: str, command: Sequence[str]) -> list[str]:
    """`taskset --cpu-list CPUS COMMAND`. taskset execs the command, so the pid is the command's own, and its
    children inherit the CPUs."""
    return ["taskset", "--cpu-list", cpus, *command]


def raise_open_file_limit(wanted: int | None = None) -> int:
    """Raise this process's soft limit on open descriptors (children inherit it) to `wanted`, or to the hard
    limit if None; root may raise the hard limit too. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted is None:  # the kernel refuses an unlimited descriptor count: 2**20 is its usual ceiling
        wanted = 2**20 if hard == resource.RLIM_INFINITY else hard
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, PermissionError):
            wanted = hard
    new_soft = wanted if soft == resource.RLIM_INFINITY else max(soft, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return new_soft


def phase_command(package: str, *options: str, prefix: Sequence[str] = ()) -> list[str]:
    """`[PREFIX...] python -m PACKAGE --host 127.0.0.1 --port 0 OPTIONS`."""
    return [*prefix, sys.executable, "-m", package, "--host", HOST, "--port", "0", *options]


class PhaseProcess:
    """A phase package started on a free port; raises RuntimeError if it does not say where it listens."""

    def __init__(self, package: str, *options: str, root: Path, prefix: Sequence[str] = ()) -> None:
        self.command = phase_command(package, *options, prefix=prefix)
        self.stderr = ""  # what the server wrote to stderr, once stopped
        # A file, not a pipe: a pipe nobody reads fills up and blocks the server. Closed by stop().
        self._stderr_file = tempfile.TemporaryFile()  # noqa: SIM115
        # Anything printed after the first line is read and dropped, so that a chatty server never blocks.
        self._stdout_drain = threading.Thread(target=self._drain_stdout, daemon=True)
        self.process = subprocess.Popen(
            self.command,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            # A session and process group of its own, as a server started from a terminal has: a Ctrl-C
            # meant for the tests does not reach it, and a test can signal its group as a terminal would.
            start_new_session=True,
        )
        self.host, self.port = self._wait_until_listening()
        self._stdout_drain.start()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_until_listening(self) -> tuple[str, int]:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout=STARTUP_TIMEOUT)
        first_line = self.process.stdout.readline().decode(errors="replace") if ready else ""
        match = LISTENING_LINE.fullmatch(first_line)
        if match is None:
            self.stop()
            self.process.stdout.close()
            raise RuntimeError(
                f"{' '.join(self.command)} did not print 'listening on': {first_line!r}\n{self.stderr}"
            )
        return (match.group(1), int(match.group(2)))

    def _drain_stdout(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:  # closed at end of file, which comes when the server exits
            for _ in self.process.stdout:
                pass

    def stop(self) -> int:
        """SIGTERM, wait for the exit (SIGKILL after SHUTDOWN_TIMEOUT), keep stderr; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._stdout_drain.is_alive():
            self._stdout_drain.join(timeout=SHUTDOWN_TIMEOUT)
        if not self._stderr_file.closed:
            self._stderr_file.seek(0)
            self.stderr = self._stderr_file.read().decode(errors="replace")
            self._stderr_file.close()
        return self.process.returncode

    def stderr_so_far(self) -> str:
        """What the server has written to stderr until now, while it runs (stop() reads it all at the end):
        the file read again from its start, without moving its offset."""
        size = os.fstat(self._stderr_file.fileno()).st_size
        return os.pread(self._stderr_file.fileno(), size, 0).decode(errors="replace")

    def failure(self) -> str | None:
        """Once stopped: why the exit was not clean (a non-zero status, or a traceback on stderr), or None."""
        if self.process.returncode != 0:
            return f"exited with {self.process.returncode}:\n{self.stderr}"
        if "Traceback" in self.stderr:
            return f"printed a traceback:\n{self.stderr}"
        return None
