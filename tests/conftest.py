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

A phase whose CAPABILITIES include "tls" is started with a certificate from a certificate authority made for
the test session (`session_authority()`, by trustme), and `server.connect()` gives a client that speaks TLS
and trusts that authority: every test that talks through `connect()` then runs through TLS, unchanged.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import selectors
import shutil
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import psutil
import pytest
import trustme

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


@dataclass(frozen=True)
class SessionAuthority:
    """A certificate authority for one test session, and a server certificate it issued for 127.0.0.1."""

    authority: trustme.CA
    certificate_file: Path  # the server's certificate chain, PEM
    key_file: Path  # its private key, PEM

    def client_context(self) -> ssl.SSLContext:
        """A client's context that trusts this authority alone, and checks the server's name as usual."""
        context = ssl.create_default_context()
        self.authority.configure_trust(context)
        return context


@functools.cache
def session_authority() -> SessionAuthority:
    """The session's authority: made once, its files in a directory removed when the tests end."""
    directory = Path(tempfile.mkdtemp(prefix="test-authority-"))
    _SESSION_DIRECTORIES.append(directory)
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    certificate_file, key_file = directory / "server.pem", directory / "server.key"
    issued.cert_chain_pems[0].write_to_path(str(certificate_file))
    issued.private_key_pem.write_to_path(str(key_file))
    return SessionAuthority(authority, certificate_file, key_file)


_SESSION_DIRECTORIES: list[Path] = []


def pytest_unconfigure(config: pytest.Config) -> None:
    for directory in _SESSION_DIRECTORIES:
        shutil.rmtree(directory, ignore_errors=True)


class RunningServer(PhaseProcess):
    """A phase started as `python -m <phase> --port 0 ...`, with what the tests ask of it while it runs."""

    client_tls: ssl.SSLContext | None = None  # how connect() speaks to a TLS phase; None: cleartext

    def connect(self, timeout: float = 10.0, receive_buffer: int | None = None) -> socket.socket:
        """A blocking client socket connected to the server, with a timeout on every operation; through
        TLS (its handshake done) if the server speaks it. `receive_buffer` sets SO_RCVBUF before connect(),
        so that the window the client offers is small from the start."""
        client = socket.socket()
        if receive_buffer is not None:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        client.settimeout(timeout)
        try:
            client.connect(self.address)
        except OSError:
            client.close()
            raise
        if self.client_tls is not None:
            client = self.client_tls.wrap_socket(client, server_hostname=self.host)
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


def half_close(sock: socket.socket) -> None:
    """shutdown(SHUT_WR): no more bytes from us, and we read on. An SSLSocket's own shutdown() also drops its
    TLS layer (Python's choice), and it would then read ciphertext: so the descriptor underneath is shut
    down, through a duplicate. Through TLS this is a client that stops sending without a close_notify."""
    with socket.socket(fileno=os.dup(sock.fileno())) as duplicate:
        duplicate.shutdown(socket.SHUT_WR)


class FullDuplex:
    """A client that sends and receives at once, in one thread. A test that keeps sending while it reads (or,
    on purpose, does not read) would need a thread to send; but two threads may not use one SSLSocket at once
    (OpenSSL's rule), so here sending and receiving take turns, as in an event loop, through TLS or not.
    `marker` (say b"HTTP/1.1 ") is counted in what arrives, as it arrives: `marks`."""

    def __init__(self, sock: socket.socket, marker: bytes = b"HTTP/1.1 ") -> None:
        sock.setblocking(False)
        self.sock = sock
        self.unsent = memoryview(b"")
        self.received = bytearray()
        self.marker, self.marks, self._tail = marker, 0, b""
        self.ended: str | None = None  # "eof" or "reset", once the server has closed
        self.send_error: OSError | None = None  # why sending stopped early, if it did

    def queue(self, data: bytes) -> None:
        self.unsent = memoryview(bytes(self.unsent) + data)

    def run(self, until: Callable[[], bool] | None, within: float, *, reading: bool = True) -> bool:
        """Send what is queued and, if `reading`, receive, until `until()` holds: True; False if `within`
        seconds pass first (with `until` None, True after `within` seconds), or the server closes first."""
        deadline = time.monotonic() + within
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            while until is None or not until():
                left = deadline - time.monotonic()
                if left <= 0 or (self.ended is not None and (not self.unsent or self.send_error)):
                    return until is None and left <= 0
                sending = bool(self.unsent) and self.send_error is None
                receiving = reading and self.ended is None
                if not (sending or receiving):
                    time.sleep(min(left, 0.01))
                    continue
                selector.modify(
                    self.sock, (selectors.EVENT_WRITE * sending) | (selectors.EVENT_READ * receiving)
                )
                held = receiving and isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0
                events = selector.select(0 if held else min(left, 0.1))
                mask = (events[0][1] if events else 0) | (selectors.EVENT_READ if held else 0)
                if mask & selectors.EVENT_WRITE:
                    self._send()
                if mask & selectors.EVENT_READ:
                    self._receive()
        return True

    def all_sent(self) -> bool:
        return not self.unsent

    def closed(self) -> bool:
        return self.ended is not None

    def receive_marks(self, count: int, within: float) -> bool:
        """Run until `count` markers have arrived: True; False if they did not within `within` seconds."""
        return self.run(lambda: self.marks >= count, within)

    def receive_more(self, within: float) -> bool:
        """Run until at least one more byte has arrived: True; False if none did within `within` seconds."""
        size = len(self.received)
        return self.run(lambda: len(self.received) > size, within)

    def _send(self) -> None:
        try:
            # Through TLS, a send that would block must be made again with the same bytes: they stay first.
            self.unsent = self.unsent[self.sock.send(self.unsent[:65536]) :]
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except OSError as error:  # the server has closed, or reset: what it sent may still be read
            self.send_error = error

    def _receive(self) -> None:
        try:
            chunk = self.sock.recv(1 << 20)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except ConnectionResetError:
            self.ended = "reset"
            return
        if not chunk:
            self.ended = "eof"
            return
        self.received += chunk
        window = self._tail + chunk  # a marker split between two chunks is counted once, here
        self.marks += window.count(self.marker)
        self._tail = window[-(len(self.marker) - 1) :] if len(self.marker) > 1 else b""


def start_phase(phase: Phase, *args: str) -> RunningServer:
    """Start a phase on a free port; wait (on its stdout, never by sleeping) for `listening on HOST:PORT`.
    A phase with worker processes gets `--workers 2` unless the test says how many: its default is the
    machine's CPU count, and no test may depend on the machine it runs on."""
    if "multi_process" in phase.capabilities and "--workers" not in args:
        args = ("--workers", "2", *args)
    tls = "tls" in phase.capabilities and "--tls-cert" not in args
    if tls:
        files = session_authority()
        args = ("--tls-cert", str(files.certificate_file), "--tls-key", str(files.key_file), *args)
    server = RunningServer(phase.name, *args, root=phase.root)
    if tls:
        server.client_tls = session_authority().client_context()
    return server


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
