"""Tests for chapter 7's exercise that changes what the server does: run them against your own solution.

No phase of this repository solves it, so none declares its capability (`exercise_phase7_submit_each`) and
every test here is deselected for our phases. To check your solution, copy the phase inside the repository,
change the copy, add the capability to the `CAPABILITIES` of its `__init__.py`, and run:

    cp -r phase7_io_uring my_phase7
    .venv/bin/pytest tests/test_exercises_phase7.py --phase-dir my_phase7

Exercise 3 makes `Ring._push` hand each operation to the kernel as soon as it is written. The binding is
tested on a ring made as the server makes its own (LOOP_FLAGS, as in tests/test_uring.py): an operation that
the test prepares and never submits completes all the same, before the next is prepared. Then the server,
started as usual, must still answer keep-alive and pipelined requests. Where io_uring cannot run, the tests
skip with the reason, like every test of an io_uring phase. The tradeoff: they see that each operation was
submitted on its own, not what that cost; the exercise's measurement says that.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from test_http import HELLO, HttpClient, get, post_echo
from test_uring import Completion, enabled_ring

from conftest import Phase, RunningServer

pytestmark = pytest.mark.needs("io_uring", "exercise_phase7_submit_each")

# More operations than the 8-entry submission ring holds, so that its indexes wrap.
OPERATIONS = 20
# A no-op completes inside the io_uring_enter that submits it: this only bounds the wait for a broken one.
COMPLETES_WITHIN = 2.0


def completions_without_submitting(ring: Any, within: float = COMPLETES_WITHIN) -> list[Completion]:
    """The completions ready now, taken without an io_uring_enter of the test's own (no submit, no wait),
    polled every 10 ms until there is one or `within` seconds have passed."""
    deadline = time.monotonic() + within
    while not (taken := list(ring.completions())) and time.monotonic() < deadline:
        time.sleep(0.01)
    return taken


def test_phase7_submit_each_operation_completes_without_a_submit_of_ours(phase: Phase) -> None:
    """Chapter 7, exercise 3: each no-op prepared is handed to the kernel by the call that prepared it, so it
    has completed before the next is prepared, with its own tag, in order."""
    uring = phase.import_module("uring")
    with enabled_ring(uring, 8, 16) as ring:
        for user_data in range(1, OPERATIONS + 1):
            ring.nop(user_data)
            taken = completions_without_submitting(ring)
            assert taken == [(user_data, 0, 0)], f"no-op {user_data} prepared: {taken} completed"


def test_phase7_submit_each_the_server_still_serves(server: RunningServer) -> None:
    """With one io_uring_enter per operation, keep-alive and pipelined requests are answered as before."""
    bodies = [f"pipelined {index}".encode() * (index + 1) for index in range(20)]
    with HttpClient(server) as client:
        for _ in range(3):
            client.send(get("/"))
            response = client.response()
            assert (response.status, response.body) == (200, HELLO)
        client.send(b"".join(post_echo(body) for body in bodies) + get("/"))
        assert [client.response().body for _ in bodies] == bodies
        assert client.response().body == HELLO
