"""Tests for chapter 3's exercises that change what the server does: run them against your own solution.

No phase of this repository solves these exercises, so none declares their capabilities
(`exercise_phase3_...`) and every test here is deselected for our phases. To check your solution, copy the
phase inside the repository, change the copy, add the exercise's capability to the `CAPABILITIES` of its
`__init__.py`, and run:

    cp -r phase3_http_parse my_phase3
    .venv/bin/pytest tests/test_exercises_phase3.py --phase-dir my_phase3

The tests are black-box, like the shared suite: they start your copy as `python -m my_phase3 --port 0` with
the option the exercise asks for, and talk to it over real sockets. The tradeoff: they check the behaviour
the exercise describes, not a particular solution, so the exercise's wording is the specification.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from test_http import HELLO, HttpClient, get
from test_perf import idle_connection_cost

from conftest import RunningServer


def read_until_closed(sock: socket.socket, within: float = 5.0) -> bytes:
    """Everything the server sends until it closes; raises TimeoutError if it is still open after `within`."""
    sock.settimeout(within)
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


@pytest.mark.needs("http", "exercise_phase3_bare_lf")
def test_phase3_bare_lf_ends_lines_like_crlf(server: RunningServer) -> None:
    """Chapter 3, exercise 1: lines ended by a bare LF are read as if they ended by CRLF, in the head and at
    its end, and the next request starts right after."""
    with HttpClient(server) as client:
        client.send(b"GET / HTTP/1.1\nHost: x\n\n" + b"GET / HTTP/1.1\r\nHost: x\nConnection: close\r\n\r\n")
        first = client.response()
        assert (first.status, first.body) == (200, HELLO), "the request with bare LFs was refused"
        second = client.response()
        assert (second.status, second.body) == (200, HELLO), "the request after it was not read right"
        assert client.is_closed_by_server()


@pytest.mark.needs("http", "keep_alive", "pipelining", "exercise_phase3_max_requests")
def test_phase3_max_requests_closes_after_the_nth_answer(start_server: Callable[..., RunningServer]) -> None:
    """Chapter 3, exercise 2: `--max-requests N` answers N requests on a connection, the last one with
    `Connection: close`, then closes; pipelined requests after the Nth are not answered."""
    server = start_server("--max-requests", "3")
    with server.connect() as sock:
        sock.sendall(get("/") * 5)
        answers = read_until_closed(sock)
    responses = answers.split(b"HTTP/1.1 ")[1:]
    assert len(responses) == 3, f"{len(responses)} answers to 5 pipelined requests with --max-requests 3"
    assert all(response.startswith(b"200 ") and response.endswith(HELLO) for response in responses)
    assert [b"Connection: close" in response for response in responses] == [False, False, True]


@pytest.mark.needs("http", "keep_alive", "exercise_phase3_max_requests")
def test_phase3_max_requests_counts_per_connection(start_server: Callable[..., RunningServer]) -> None:
    """The count belongs to a connection: a new connection starts from zero, and requests sent one at a time
    are counted like pipelined ones."""
    server = start_server("--max-requests", "2")
    for _ in range(2):
        with HttpClient(server) as client:
            for number in (1, 2):
                client.send(get("/"))
                response = client.response()
                assert (response.status, response.body) == (200, HELLO)
                assert (response.header("Connection") == "close") == (number == 2)
            assert client.is_closed_by_server()


@pytest.mark.needs("http", "keep_alive", "exercise_phase3_lazy_buffer")
def test_phase3_idle_connections_hold_no_receive_buffer(server: RunningServer) -> None:
    """Chapter 3, exercise 8: a keep-alive connection between two requests holds no receive buffer, so many
    idle connections cost the server far less than INITIAL_CAPACITY (16 KiB) each."""
    per_connection = idle_connection_cost(server)
    assert per_connection < 6 * 1024, f"each idle connection costs {per_connection / 1024:.1f} KiB"
