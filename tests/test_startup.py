"""Every phase at its edges: an address it cannot listen on, and a stop signal as soon as it listens.

These tests need no capability: every phase must say in one line why it cannot listen, and exit with status 2
(as for a usage error); and a SIGINT that arrives right after the `listening on` line must stop it cleanly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from conftest import Phase, RunningServer


def run_phase_until_exit(phase: Phase, host: str, port: int) -> subprocess.CompletedProcess[str]:
    """`python -m PHASE --host HOST --port PORT`, run to its exit; a server that starts times out instead."""
    return subprocess.run(
        [sys.executable, "-m", phase.name, "--host", host, "--port", str(port)],
        check=False,  # the exit status is what the tests look at
        cwd=phase.root,
        env={**os.environ, "PYTHONPATH": str(phase.root), "PYTHONDONTWRITEBYTECODE": "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
    )


def assert_one_line_and_status_2(result: subprocess.CompletedProcess[str], host: str, port: int) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert result.stderr.startswith(f"error: cannot listen on {host}:{port}: "), result.stderr
    assert result.stdout == "", "nothing may claim it is listening"
    assert result.returncode == 2


def test_busy_port_is_one_clear_line_and_exit_status_2(phase: Phase) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_phase_until_exit(phase, "127.0.0.1", port)
    assert_one_line_and_status_2(result, "127.0.0.1", port)
    assert result.stderr.endswith(": Address already in use\n"), result.stderr


def test_address_of_another_machine_is_one_clear_line_and_exit_status_2(phase: Phase) -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): documentation only, never an address of this machine.
    result = run_phase_until_exit(phase, "192.0.2.1", 8080)
    assert_one_line_and_status_2(result, "192.0.2.1", 8080)
    assert result.stderr.endswith(": Cannot assign requested address\n"), result.stderr


@pytest.fixture
def one_cpu() -> Iterator[None]:
    """Run this test, and the servers it starts (they inherit it), on one CPU."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


@pytest.mark.usefixtures("one_cpu")
def test_sigint_right_after_the_listening_line_stops_cleanly(phase: Phase) -> None:
    """The race: a stop signal that lands after `listening on` is printed but before the server is ready to
    catch it. To land it there, the server shares one CPU with the test at the lowest priority (`nice -n 19`):
    its line wakes the test, which then runs, and signals, before the server executes its next few lines.
    Without that, the signal mostly lands in a blocked accept() or poll(), and the test would rarely fail."""
    for attempt in range(20):
        server = RunningServer(phase.name, root=phase.root, prefix=["nice", "-n", "19"])
        server.process.send_signal(signal.SIGINT)
        server.process.wait(timeout=10)
        server.stop()  # collects stderr
        assert server.failure() is None, f"attempt {attempt + 1}: {server.failure()}"
