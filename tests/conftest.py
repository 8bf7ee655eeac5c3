"""Shared test machinery: find the phases, run each test for every phase that can pass it, start servers.

A phase is a directory `phaseN_name/` with an `__init__.py` that defines `CAPABILITIES`, a frozenset of
strings. A test says what it needs with `@pytest.mark.needs("echo")` and takes the `phase` fixture (directly
or through `server` / `start_server`); it then runs once per phase whose capabilities include all it needs,
and is deselected for the others.

    .venv/bin/pytest --phase phase2_nonblocking   # one phase of this repository
    .venv/bin/pytest --phase-dir my_phase3        # your own phase directory, against the same tests

The two options are declared in the root conftest.py (it says why); this file reads them.

A phase may need more than Python: one whose CAPABILITIES include "io_uring" runs only where the kernel lets
it make a ring. Elsewhere each of its tests is skipped with the reason its own `uring.unavailable_reason()`
gives, or fails in CI (CI=true), like a missing external tool (`require_tool`).
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import psutil
import pytest

from tools.phases import REPO_ROOT, PhaseProcess, find_phases, phase_capabilities


@dataclass(frozen=True)
class Phase:
    """One phase package: where it lives and what it can do."""

    name: str
    root: Path  # the directory that holds the package, the subprocess's cwd and PYTHONPATH
    capabilities: frozenset[str]

    def import_module(self, submodule: str = "") -> ModuleType:
        """Import the phase package, or `<phase>.<submodule>` (e.g. "protocol") for unit tests."""
        root = str(self.root)
        if root not in sys.path:
            sys.path.insert(0, root)
        return importlib.import_module(f"{self.name}.{submodule}" if submodule else self.name)


def _load_phase(package_dir: Path) -> Phase:
    package_dir = package_dir.resolve()
    try:
        capabilities = phase_capabilities(package_dir)
    except ValueError as error:
        raise pytest.UsageError(str(error)) from error
    return Phase(package_dir.name, package_dir.parent, capabilities)


def _discover_phases(config: pytest.Config) -> list[Phase]:
    own_dirs: list[Path] = config.getoption("--phase-dir")
    if own_dirs:
        return [_load_phase(path) for path in own_dirs]
    found = find_phases(REPO_ROOT)
    wanted: list[str] = config.getoption("--phase")
    unknown = set(wanted) - {path.name for path in found}
    if unknown:
        raise pytest.UsageError(f"unknown phase(s): {', '.join(sorted(unknown))}")
    return [_load_phase(path) for path in found if not wanted or path.name in wanted]


def pytest_configure(config: pytest.Config) -> None:
    config.stash[PHASES_KEY] = _discover_phases(config)


PHASES_KEY = pytest.StashKey[list[Phase]]()


def _needed(item: pytest.Item | pytest.Metafunc) -> frozenset[str]:
    markers = (
        item.iter_markers("needs") if isinstance(item, pytest.Item) else item.definition.iter_markers("needs")
    )
    return frozenset(capability for marker in markers for capability in marker.args)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "phase" not in metafunc.fixturenames:
        return
    needed = _needed(metafunc)
    phases = [phase for phase in metafunc.config.stash[PHASES_KEY] if needed <= phase.capabilities]
    # A test no selected phase can run is deselected in pytest_collection_modifyitems, not skipped.
    metafunc.parametrize(
        "phase", phases or [None], ids=[p.name for p in phases] or ["no-phase"], indirect=True
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        has_no_phase = callspec is not None and callspec.params.get("phase", "") is None
        (deselected if has_no_phase else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture
def phase(request: pytest.FixtureRequest) -> Phase:
    """The phase under test. Every test of a phase takes it (directly or through `server` / `start_server`),
    so a phase that cannot run on this machine is skipped here, once for all its tests."""
    selected: Phase = request.param
    if "io_uring" in selected.capabilities:
        reason = io_uring_unavailable_reason(selected)
        if reason is not None:
            skip_unless_ci(reason)
    return selected


@functools.cache
def io_uring_unavailable_reason(phase: Phase) -> str | None:
    """Why `phase`'s io_uring binding cannot run here, or None: asked once per phase (it makes a ring)."""
    reason: str | None = phase.import_module("uring").unavailable_reason()
    return reason


class RunningServer(PhaseProcess):
    """A phase started as `python -m <phase> --port 0 ...`, with what the tests ask of it while it runs."""

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """A blocking client socket connected to the server, with a timeout on every operation."""
        client = socket.create_connection(self.address, timeout=timeout)
        return client

    def processes(self) -> list[psutil.Process]:
        """The server's processes: the one we started and its descendants. A phase with worker processes
        serves from the children of its supervisor; an earlier phase is one process, the list has one."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss_bytes(self) -> int:
        """The resident set size of all the server's processes, from /proc: what its clients cost shows in
        the sum, whichever worker serves them (the supervisor's own is constant)."""
        total = 0
        for process in self.processes():
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except FileNotFoundError:
                continue  # it exited since the listing
            kib = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
            total += kib * 1024
        return total

    def open_fds(self) -> int:
        """The descriptors open in all the server's processes (summed, like rss_bytes)."""
        total = 0
        for process in self.processes():
            try:
                total += len(os.listdir(f"/proc/{process.pid}/fd"))
            except FileNotFoundError:
                continue
        return total


def start_phase(phase: Phase, *args: str) -> RunningServer:
    """Start a phase on a free port; wait (on its stdout, never by sleeping) for `listening on HOST:PORT`.
    A phase with worker processes gets `--workers 2` unless the test says how many: its default is the
    machine's CPU count, and no test may depend on the machine it runs on."""
    if "multi_process" in phase.capabilities and "--workers" not in args:
        args = ("--workers", "2", *args)
    return RunningServer(phase.name, *args, root=phase.root)


@pytest.fixture
def start_server(phase: Phase) -> Iterator[Callable[..., RunningServer]]:
    """A factory: `start_server("--idle-timeout", "0.5")`. Every server started is stopped at teardown,
    and the test fails if one did not exit with status 0 or printed a traceback."""
    started: list[RunningServer] = []

    def start(*args: str) -> RunningServer:
        server = start_phase(phase, *args)
        started.append(server)
        return server

    yield start
    problems = []
    for server in started:
        server.stop()
        failure = server.failure()
        if failure is not None:
            problems.append(f"server pid {server.pid} {failure}")
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def server(start_server: Callable[..., RunningServer]) -> RunningServer:
    """The phase running with its default options."""
    return start_server()


def require_tool(name: str) -> str:
    """The path of an external tool (e.g. wrk). Missing: skip with the reason on a reader's machine, but fail
    in CI (CI=true), where `make test` installs it and its absence is a broken set-up, not a choice."""
    path = shutil.which(name)
    if path is not None:
        return path
    skip_unless_ci(f"{name} is not installed (Debian: apt-get install {name})")


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip the test for `reason` on a reader's machine; fail it in CI (CI=true), whose set-up provides
    everything the suite needs, so that a broken set-up shows as a failure, not as a quietly shorter run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}, and CI=true requires it")
    pytest.skip(reason)
