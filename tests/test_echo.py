"""Black-box tests of the echo servers: real sockets against `python -m <phase> --port 0`."""

from __future__ import annotations

import asyncio
import os
import resource
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

import pytest

from conftest import Phase, RunningServer

pytestmark = pytest.mark.needs("echo")


def round_trip(client: socket.socket, payload: bytes, chunk_size: int = 256 * 1024) -> bytes:
    """Send `payload` from a thread, half-close, and read the echo until EOF. Sending and reading at once
    matters: a client that only sends would stall on a server that applies backpressure, or on phase 1."""

    def send_all() -> None:
        view = memoryview(payload)
        for start in range(0, len(view), chunk_size):
            client.sendall(view[start : start + chunk_size])
        client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send_all)
    sender.start()
    received = bytearray()
    while chunk := client.recv(1024 * 1024):
        received += chunk
    sender.join()
    return bytes(received)


def recv_exactly(client: socket.socket, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        chunk = client.recv(size - len(received))
        if not chunk:
            raise AssertionError(f"connection closed after {len(received)} of {size} bytes")
        received += chunk
    return bytes(received)


def is_readable(client: socket.socket, within: float) -> bool:
    return bool(select.select([client], [], [], within)[0])


def reset(client: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN, as a crashed client would."""
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def open_fds_after_probe(server: RunningServer) -> int:
    """The server's open descriptors, read while one fresh client is connected and has been echoed: the
    server handled every earlier event (earlier clients' EOFs included) before it answered this one."""
    with server.connect() as probe:
        probe.sendall(b"probe")
        assert recv_exactly(probe, 5) == b"probe"
        return server.open_fds()


@pytest.mark.parametrize("size", [1, 100, 1024 * 1024, 16 * 1024 * 1024], ids=["1B", "100B", "1MiB", "16MiB"])
def test_random_payload_round_trips_exactly(server: RunningServer, size: int) -> None:
    payload = os.urandom(size)
    with server.connect() as client:
        assert round_trip(client, payload) == payload


def test_bytes_sent_one_at_a_time_come_back_in_order(server: RunningServer) -> None:
    payload = os.urandom(300)
    with server.connect() as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        echoed = bytearray()
        for byte in payload:
            client.sendall(bytes([byte]))
            echoed += client.recv(1)  # TCP may coalesce, but we wait for each byte before sending the next
        assert echoed == payload


def test_half_closed_client_still_gets_all_its_data(server: RunningServer) -> None:
    payload = os.urandom(200_000)
    with server.connect() as client:
        client.sendall(payload[:100_000])
        assert recv_exactly(client, 100_000) == payload[:100_000]
        assert round_trip(client, payload[100_000:]) == payload[100_000:]


def test_client_reset_mid_stream_does_not_stop_the_server(server: RunningServer) -> None:
    for _ in range(3):
        client = server.connect()
        client.sendall(os.urandom(500_000))  # the echo is still in flight when we reset
        reset(client)
    with server.connect() as client:
        assert round_trip(client, b"still here") == b"still here"


def test_hundred_sequential_clients_and_no_descriptor_leaks(server: RunningServer) -> None:
    baseline = open_fds_after_probe(server)
    for index in range(100):
        with server.connect() as client:
            message = f"client {index}".encode()
            assert round_trip(client, message) == message
    for _ in range(10):
        client = server.connect()
        client.sendall(b"x" * 1000)
        reset(client)
    assert open_fds_after_probe(server) == baseline


def test_sigint_stops_the_server_cleanly(server: RunningServer) -> None:
    with server.connect() as client:
        assert round_trip(client, b"hello") == b"hello"
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=10) == 0


@pytest.mark.needs("one_client_at_a_time")
def test_second_client_waits_until_the_first_disconnects(server: RunningServer) -> None:
    first = server.connect()
    first.sendall(b"first")
    assert recv_exactly(first, 5) == b"first"
    with server.connect() as second:  # the kernel completes the handshake: it sits in the listen backlog
        second.sendall(b"second")
        assert not is_readable(second, within=0.5), "a blocking server cannot serve two clients at once"
        first.close()
        assert recv_exactly(second, 6) == b"second"


@pytest.mark.needs("concurrent")
def test_two_thousand_concurrent_clients_are_all_echoed(server: RunningServer) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2100 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def one_client(index: int, all_connected: asyncio.Event, connected: list[int]) -> bytes:
        reader, writer = await asyncio.open_connection(*server.address)
        connected.append(index)
        if len(connected) == 2000:
            all_connected.set()
        await all_connected.wait()  # every client is open at once before any of them speaks
        message = f"message from client {index:04d}".encode()
        writer.write(message)
        await writer.drain()
        echoed = await reader.readexactly(len(message))
        writer.close()
        await writer.wait_closed()
        return echoed

    async def all_clients() -> list[bytes]:
        all_connected = asyncio.Event()
        connected: list[int] = []
        return await asyncio.gather(*(one_client(i, all_connected, connected) for i in range(2000)))

    echoes = asyncio.run(asyncio.wait_for(all_clients(), timeout=60))
    assert echoes == [f"message from client {index:04d}".encode() for index in range(2000)]


def assert_backpressure(server: RunningServer) -> None:
    """A client that sends 64 MiB and never reads its echo is pushed back; memory stays bounded."""
    rss_before = server.rss_bytes()
    flooder = server.connect()
    flooder.setblocking(False)
    chunk = os.urandom(1024 * 1024)
    sent = 0
    # Send up to 64 MiB without ever reading the echo. The server must stop reading from us once our echo
    # backs up, so our send buffer fills and stays full: a second of no progress means it is pushing back.
    while sent < 64 * 1024 * 1024:
        try:
            sent += flooder.send(chunk)
        except BlockingIOError:
            if not select.select([], [flooder], [], 1.0)[1]:
                break
    assert sent < 64 * 1024 * 1024, "the server read 64 MiB from a client that never read its echo"
    with server.connect() as other:  # everyone else is still served meanwhile
        assert round_trip(other, b"not stalled") == b"not stalled"
    growth = server.rss_bytes() - rss_before
    assert growth < 16 * 1024 * 1024, f"server RSS grew by {growth / 2**20:.1f} MiB"
    flooder.close()


@pytest.mark.needs("backpressure")
def test_client_that_never_reads_cannot_grow_server_memory(server: RunningServer) -> None:
    assert_backpressure(server)


@pytest.mark.needs("backpressure", "trigger_modes")
def test_edge_triggered_mode_serves_the_same(start_server: Callable[..., RunningServer]) -> None:
    """Edge-triggered epoll must read until EAGAIN and re-arm after backpressure, or bytes get stranded."""
    server = start_server("--trigger", "edge")
    payload = os.urandom(16 * 1024 * 1024)
    with server.connect() as client:
        assert round_trip(client, payload) == payload
    with server.connect() as client:
        client.sendall(b"half")
        assert recv_exactly(client, 4) == b"half"
        assert round_trip(client, b"-closed") == b"-closed"
    assert_backpressure(server)


@pytest.mark.needs("idle_timeout")
def test_idle_connection_is_closed_after_the_idle_timeout(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server("--idle-timeout", "0.5")
    with server.connect() as idle, server.connect() as busy:
        opened = time.monotonic()
        idle.sendall(b"hi")
        assert recv_exactly(idle, 2) == b"hi"
        while not is_readable(idle, within=0.1):  # the busy client keeps talking meanwhile
            busy.sendall(b"ping")
            assert recv_exactly(busy, 4) == b"ping"
            assert time.monotonic() - opened < 5, "the idle connection was never closed"
        assert idle.recv(1) == b"", "expected the server to close the idle connection"
        assert time.monotonic() - opened >= 0.5
        busy.sendall(b"still open")
        assert recv_exactly(busy, 10) == b"still open"


@pytest.mark.needs("max_connections")
def test_clients_past_max_connections_wait_for_a_free_slot(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server("--max-connections", "2")
    first, second = server.connect(), server.connect()
    for client in (first, second):
        client.sendall(b"in")
        assert recv_exactly(client, 2) == b"in"
    with server.connect() as third:
        third.sendall(b"waiting")
        assert not is_readable(third, within=0.5), "a third client was served past --max-connections 2"
        first.close()
        assert recv_exactly(third, 7) == b"waiting"
    second.close()


def test_repeated_stop_signals_during_shutdown_still_exit_cleanly(server: RunningServer) -> None:
    """A second SIGTERM that arrives while the first one's shutdown is closing connections, or while the
    process exits, must neither raise out of the shutdown nor kill the process. A burst of SIGTERMs until the
    server has exited makes sure some arrive at each of those moments."""
    clients = [server.connect() for _ in range(100)]  # phase 1 serves one; the rest wait in its backlog
    try:
        clients[0].sendall(b"busy")
        assert recv_exactly(clients[0], 4) == b"busy"
        deadline = time.monotonic() + 10
        while server.process.poll() is None and time.monotonic() < deadline:
            server.process.send_signal(signal.SIGTERM)  # does nothing once the server has exited
        server.stop()
        assert server.failure() is None, server.failure()
    finally:
        for client in clients:
            client.close()


# No client can make an echo server raise an exception it does not expect, so the tests below plant one in
# the socket layer of the server's process: the server's own code is untouched, and the exception surfaces
# where a bug in it would. The server runs as `python -c FAULT+RUN_THE_PHASE python -m PACKAGE OPTIONS`: its
# usual command line behind a prefix (as `taskset` would be), which plants the fault, then runs the package.
RUN_THE_PHASE = """
python, dash_m, package, *options = sys.argv[1:]
sys.argv = [package, *options]
runpy.run_module(package, run_name="__main__", alter_sys=True)
"""
FAULT_IN_SEND = """
import runpy, socket, sys
real_send, real_sendall = socket.socket.send, socket.socket.sendall
def send(self, data, *flags):
    if bytes(data[:4]) == b"boom":
        raise RuntimeError("fault planted by the test")
    return real_send(self, data, *flags)
def sendall(self, data, *flags):
    if bytes(data[:4]) == b"boom":
        raise RuntimeError("fault planted by the test")
    return real_sendall(self, data, *flags)
socket.socket.send, socket.socket.sendall = send, sendall
"""
FAULT_IN_FIRST_ACCEPT = """
import runpy, socket, sys
real_accept = socket.socket.accept
accepts = []
def accept(self):
    accepts.append(self)
    if len(accepts) == 1:
        raise RuntimeError("fault planted by the test")
    return real_accept(self)
socket.socket.accept = accept
"""


def start_with_fault(phase: Phase, fault: str) -> RunningServer:
    return RunningServer(phase.name, root=phase.root, prefix=[sys.executable, "-c", fault + RUN_THE_PHASE])


def assert_one_logged_fault(server: RunningServer, log_line: str) -> None:
    assert server.process.returncode == 0, server.stderr
    assert server.stderr.count("Traceback") == 1, server.stderr
    assert "RuntimeError: fault planted by the test" in server.stderr
    assert log_line in server.stderr


@pytest.mark.needs("concurrent")
def test_unexpected_exception_costs_its_connection_alone(phase: Phase) -> None:
    """The connection whose event raised is closed, with one log entry and the traceback; every other client
    is still served, and the server still stops cleanly."""
    server = start_with_fault(phase, FAULT_IN_SEND)
    try:
        with server.connect() as before, server.connect() as faulty:
            before.sendall(b"before")
            assert recv_exactly(before, 6) == b"before"
            faulty.sendall(b"boom")
            assert faulty.recv(1) == b"", "expected the server to close the connection that raised"
            assert round_trip(before, b"still served") == b"still served"
        with server.connect() as after:
            assert round_trip(after, b"after") == b"after"
    finally:
        server.stop()
    assert_one_logged_fault(server, "unexpected error serving connection fd")


@pytest.mark.needs("concurrent")
def test_unexpected_exception_outside_any_connection_is_logged_and_the_loop_serves_on(phase: Phase) -> None:
    """An exception in accepting (no connection to blame) is logged; the client it failed to accept is still
    queued, is accepted on the next turn of the loop, and is served."""
    server = start_with_fault(phase, FAULT_IN_FIRST_ACCEPT)
    try:
        with server.connect() as client:
            assert round_trip(client, b"accepted at the second try") == b"accepted at the second try"
    finally:
        server.stop()
    assert_one_logged_fault(server, "unexpected error in the event loop, which serves on")
