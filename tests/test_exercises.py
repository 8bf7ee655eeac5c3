"""Tests for the chapters' exercises that change what a server does: run them against your own solution.

No phase of this repository solves these exercises, so none declares their capabilities (`exercise_...`) and
every test here is deselected for our phases. To check your solution, copy the phase inside the repository,
change it, add the exercise's capability to the `CAPABILITIES` of your copy's `__init__.py`, and run:

    cp -r phase1_blocking_echo my_phase1
    .venv/bin/pytest --phase-dir my_phase1

The tests are black-box, like the shared suite: they start your copy as `python -m my_phase1 --port 0` with
the option the exercise asks for, and talk to it over real sockets. The tradeoff: they check the behaviour
the exercise describes, not a particular solution, so the exercise's wording is the specification.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from conftest import RunningServer

# A generous bound for anything that should happen "promptly" on a loaded machine; never a speed assertion.
PROMPTLY_S = 5.0


def echo_of(client: socket.socket, message: bytes) -> bytes:
    """Send `message` and read until as many bytes came back, or the server closed the connection."""
    client.sendall(message)
    received = bytearray()
    while len(received) < len(message):
        chunk = client.recv(len(message) - len(received))
        if not chunk:
            break
        received += chunk
    return bytes(received)


def closed_by_server(client: socket.socket, within: float = PROMPTLY_S) -> bool:
    """True if the server closes (FIN or RST) this connection within `within` seconds, sending nothing."""
    client.settimeout(within)
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.needs("echo", "exercise_phase1_idle_timeout")
def test_phase1_idle_timeout_frees_the_server_from_a_silent_client(
    start_server: Callable[..., RunningServer],
) -> None:
    """Chapter 1, exercise 5: `--idle-timeout SECONDS` closes a client that sends nothing for that long."""
    server = start_server("--idle-timeout", "0.5")
    with server.connect() as silent, server.connect() as waiting:
        # `silent` was accepted first, and the server now waits for its bytes; `waiting` queues behind it.
        opened = time.monotonic()
        waiting.sendall(b"let me in")
        assert closed_by_server(silent), "the silent client was never disconnected"
        assert time.monotonic() - opened >= 0.4, "the silent client was closed before its idle timeout"
        waiting.settimeout(PROMPTLY_S)
        assert waiting.recv(9) == b"let me in", "the next client was not served after the timeout"


@pytest.mark.needs("echo", "exercise_phase1_idle_timeout")
def test_phase1_idle_timeout_spares_a_client_that_keeps_talking(
    start_server: Callable[..., RunningServer],
) -> None:
    """The timeout bounds the silence between two reads, not the life of a connection."""
    server = start_server("--idle-timeout", "0.5")
    with server.connect() as talker:
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # three timeouts long, never silent for more than 0.1 s
            assert echo_of(talker, b"tick") == b"tick", "a client that kept talking was disconnected"
            time.sleep(0.1)


def connect_from(server: RunningServer, source_ip: str) -> socket.socket:
    """A client whose address, as the server sees it, is `source_ip` (all of 127.0.0.0/8 is loopback)."""
    return socket.create_connection(server.address, timeout=PROMPTLY_S, source_address=(source_ip, 0))


@pytest.mark.needs("echo", "exercise_phase2_max_per_ip")
def test_phase2_max_per_ip_turns_away_only_the_address_over_its_limit(
    start_server: Callable[..., RunningServer],
) -> None:
    """Chapter 2, exercise 6: past `--max-per-ip N` connections from one address, close new ones at once."""
    server = start_server("--max-per-ip", "2")
    first, second = connect_from(server, "127.0.0.1"), connect_from(server, "127.0.0.1")
    with first, second:
        for client in (first, second):
            assert echo_of(client, b"in") == b"in"
        with connect_from(server, "127.0.0.1") as third:
            assert closed_by_server(third), "a third connection from 127.0.0.1 was kept past --max-per-ip 2"
        with connect_from(server, "127.0.0.2") as neighbour:
            assert echo_of(neighbour, b"other address") == b"other address", "the limit is per address"
        assert echo_of(first, b"still served") == b"still served"
    # Both closed: the server frees their slots once it has seen them close, so try for a while.
    deadline = time.monotonic() + PROMPTLY_S
    while not served_again(server):
        assert time.monotonic() < deadline, "127.0.0.1 was still turned away after its connections closed"
        time.sleep(0.05)


def served_again(server: RunningServer) -> bool:
    with connect_from(server, "127.0.0.1") as client:
        try:
            return echo_of(client, b"again") == b"again"
        except OSError:  # turned away: the server closed it, perhaps before our bytes arrived
            return False
