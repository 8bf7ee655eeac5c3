"""The io_uring binding (uring.py) and the loop on it (server.py), where a bug does not show in an answer.

A wrong ring index, a completion dropped when the completion ring is full, a buffer not given back, a socket
closed under an armed receive: each of these serves the first requests right and fails later, or leaks, or
hangs one client. So the binding is tested on its own (rings of 8 entries, wrapped many times; a completion
ring overfilled; a buffer ring run dry; a close with a receive armed; the address a send reads from; a wait
that lasts its timeout), then the loop: 100,000 connections leave no descriptor or memory behind; a close with
a send in flight ends the connection; clients accepted past the connection limit are served when the loop
drains; every receive buffer goes back to the ring, even one filled for a connection closed meanwhile; a
client that does not read pauses the receive, at exactly the high-water mark, and the receive resumes; a short
send's rest goes first; a closed connection's send keeps its bytes until its completion; an exception while
sending costs one connection; and where io_uring cannot run, the server says why in one line. Every ring is
made as the server makes its own (LOOP_FLAGS), by the thread that then uses it; all traffic is on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from test_abuse import fds_settle_at, read_until_closed
from test_http import HELLO, get, post_echo

from conftest import Phase, RunningServer

pytestmark = pytest.mark.needs("io_uring")

Completion = tuple[int, int, int]  # user_data, res, flags: what Ring.completions() yields


@contextlib.contextmanager
def enabled_ring(uring: ModuleType, entries: int, completion_entries: int) -> Iterator[Any]:
    """A ring made with the server's flags and enabled by this thread, its only submitter; closed after."""
    ring = uring.Ring(entries, completion_entries, uring.LOOP_FLAGS)
    try:
        ring.enable()
        yield ring
    finally:
        ring.close()


def reap(ring: Any, count: int, within: float = 5.0) -> list[Completion]:
    """Submit what is queued and take completions until `count` have come, or `within` seconds have passed."""
    reaped: list[Completion] = []
    deadline = time.monotonic() + within
    while len(reaped) < count and time.monotonic() < deadline:
        ring.submit_and_wait(0.05)
        reaped += ring.completions()
    return reaped


# --- the binding --------------------------------------------------------------------------------------


def test_the_rings_wrap_around_and_every_completion_comes_back_once_in_order(phase: Phase) -> None:
    """13 operations a round, 40 rounds: more than the 8-entry submission ring holds at once (it is handed
    over when full), and not a divisor of either ring's size, so that batches straddle the end of both."""
    uring = phase.import_module("uring")
    per_round, rounds = 13, 40
    with enabled_ring(uring, 8, 32) as ring:
        reaped: list[Completion] = []
        for first in range(0, per_round * rounds, per_round):
            for user_data in range(first, first + per_round):
                ring.nop(user_data)
            reaped += reap(ring, per_round)
        assert [user_data for user_data, _, _ in reaped] == list(range(per_round * rounds))
        assert {result for _, result, _ in reaped} == {0}
        assert reap(ring, 1, within=0.1) == []  # and nothing twice


def test_completions_that_overflow_the_completion_ring_are_all_delivered(phase: Phase) -> None:
    """40 completions for a completion ring of 16: the kernel keeps the 24 it has no room for (NODROP) and
    hands them over as we reap. None may be lost, repeated or reordered."""
    uring = phase.import_module("uring")
    with enabled_ring(uring, 8, 16) as ring:
        for user_data in range(40):
            ring.nop(user_data)
        ring.submit()
        reaped = reap(ring, 40)
        assert [user_data for user_data, _, _ in reaped] == list(range(40))
        assert reap(ring, 1, within=0.1) == []


def test_a_dry_buffer_ring_ends_a_multishot_receive_which_resumes_once_buffers_are_back(
    phase: Phase,
) -> None:
    """Two buffers, three messages: the third finds the ring empty, and the receive ends (-ENOBUFS, no
    F_MORE) instead of waiting. Given back and published, the buffers serve a new receive: the third message
    waited in the socket meanwhile."""
    uring = phase.import_module("uring")
    size, receive_tag, again_tag = 64, 1, 2
    messages = [b"first", b"second message", b"third"]
    ours, theirs = socket.socketpair()
    with ours, theirs, enabled_ring(uring, 8, 16) as ring:
        buffers = uring.BufferRing(ring, 0, 2, size)
        ring.receive_multishot(ours.fileno(), buffers.group, receive_tag)
        received, buffers_used = [], []
        for message in messages[:2]:  # one at a time: a stream would join two messages in one buffer
            theirs.sendall(message)
            [(user_data, result, flags)] = reap(ring, 1)
            assert (user_data, result) == (receive_tag, len(message))
            assert flags & uring.CQE_F_BUFFER and flags & uring.CQE_F_MORE
            buffer_id = flags >> uring.CQE_BUFFER_SHIFT
            received.append(bytes(buffers.view[buffer_id * size : buffer_id * size + result]))
            buffers_used.append(buffer_id)
        assert received == messages[:2]
        assert sorted(buffers_used) == [0, 1]
        theirs.sendall(messages[2])
        [(user_data, result, flags)] = reap(ring, 1)
        assert (user_data, result) == (receive_tag, -errno.ENOBUFS)
        assert not flags & uring.CQE_F_MORE  # the receive is over: nothing more comes without a new one
        for buffer_id in buffers_used:
            buffers.recycle(buffer_id)
        buffers.publish()
        ring.receive_multishot(ours.fileno(), buffers.group, again_tag)
        [(user_data, result, flags)] = reap(ring, 1)
        assert (user_data, result) == (again_tag, len(messages[2]))
        buffer_id = flags >> uring.CQE_BUFFER_SHIFT
        assert bytes(buffers.view[buffer_id * size : buffer_id * size + result]) == messages[2]
    buffers.close()  # after the ring (closed by the `with`): the kernel may write into them until then


def accepted_pair(listener: socket.socket) -> tuple[socket.socket, int]:
    """A client socket and the server's end of its connection, as a bare fd (the ring's to close)."""
    client = socket.create_connection(listener.getsockname(), timeout=5)
    server_end, _ = listener.accept()
    return client, server_end.detach()


def sees_end_of_stream(client: socket.socket, within: float) -> bool:
    """True if the server's end closed (a FIN) within `within` seconds; the server never sends a byte here."""
    client.settimeout(within)
    try:
        return client.recv(1) == b""
    except TimeoutError:
        return False


def test_a_close_alone_leaves_a_connection_open_under_an_armed_receive_and_cancelling_first_closes_it(
    phase: Phase,
) -> None:
    """A multishot receive holds a reference to its socket: os.close() drops only the descriptor, the peer
    gets no FIN. cancel_all_then_close() ends the receive first, and the close is then the last reference
    (its completion says so)."""
    uring = phase.import_module("uring")
    closed_alone_tag, receive_tag, cancel_tag, close_tag = 1, 2, 3, 4
    with socket.create_server(("127.0.0.1", 0)) as listener:
        closed_alone, closed_alone_fd = accepted_pair(listener)
        cancelled, cancelled_fd = accepted_pair(listener)
    with closed_alone, cancelled:
        with enabled_ring(uring, 8, 16) as ring:
            buffers = uring.BufferRing(ring, 0, 4, 64)
            ring.receive_multishot(closed_alone_fd, buffers.group, closed_alone_tag)
            ring.receive_multishot(cancelled_fd, buffers.group, receive_tag)
            ring.submit()
            os.close(closed_alone_fd)
            assert reap(ring, 1, within=0.1) == []
            assert not sees_end_of_stream(closed_alone, within=0.3), "closed under an armed receive: a FIN"
            ring.cancel_all_then_close(cancelled_fd, cancel_tag, close_tag)
            # The receive's last completion, then the close's: the cancel succeeds silently.
            assert reap(ring, 2, within=2) == [(receive_tag, -errno.ECANCELED, 0), (close_tag, 0, 0)]
            assert sees_end_of_stream(cancelled, within=2), "cancelled, then closed: no FIN"
        # The ring is closed, and with it the receive that held the first socket: it goes at last.
        assert sees_end_of_stream(closed_alone, within=2)
        buffers.close()


def test_bytes_address_is_the_address_of_the_bytes_and_the_kernel_sends_them(phase: Phase) -> None:
    """bytes_address() is arithmetic on id(), a CPython detail: it must agree with ctypes, which asks the
    object, and the kernel must send those very bytes from it."""
    uring = phase.import_module("uring")
    data = os.urandom(1000) + bytes(range(256))  # made at run time: no constant the compiler could share
    assert uring.bytes_address(data) == ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    ours, theirs = socket.socketpair()
    with ours, theirs, enabled_ring(uring, 8, 16) as ring:
        ring.send(ours.fileno(), uring.bytes_address(data), len(data), 7)
        assert reap(ring, 1) == [(7, len(data), 0)]
        theirs.settimeout(5)
        received = b""
        while len(received) < len(data):
            received += theirs.recv(65536)
        assert received == data


@pytest.mark.parametrize("timeout", [1.0, 0.25])
def test_a_wait_on_an_idle_ring_lasts_its_timeout(phase: Phase, timeout: float) -> None:
    """submit_and_wait(timeout) with nothing to complete returns after `timeout` seconds: the kernel reads a
    timespec of whole seconds and nanoseconds, and nanoseconds that counted the whole seconds again would make
    a one-second wait last two (the loop's sweeps and heartbeats would come late). The bound above allows a
    busy machine's scheduling delay; below, the wait must not end early."""
    uring = phase.import_module("uring")
    with enabled_ring(uring, 8, 16) as ring:
        started = time.monotonic()
        ring.submit_and_wait(timeout)
        waited = time.monotonic() - started
        assert list(ring.completions()) == []
    assert timeout * 0.9 <= waited < timeout + 0.6, f"a wait of {timeout} s took {waited:.2f} s"


# --- the loop: nothing leaks --------------------------------------------------------------------------

ANSWERED, UNREAD, CLOSED, RESET = range(4)  # how a short connection of churn() ends, in turn


def churn(address: tuple[str, int], count: int, threads: int = 4) -> list[str]:
    """Make `count` short connections, from `threads` threads; return what went wrong (nothing, we hope).

    Each connection ends one of four ways in turn: a request with `Connection: close` read to the server's
    close; the same request, closed before its answer is read; a connect and close; a connect and reset.
    Each thread connects from an address of its own (127.0.0.2, .3, ...; all of 127/8 is this machine), the
    port picked at connect() (IP_BIND_ADDRESS_NO_PORT): a closed client port waits a minute in TIME_WAIT,
    and one address has only some 28,000 ports to give."""
    problems: list[str] = []
    request = get("/", "Connection: close")
    linger_zero = struct.pack("ii", 1, 0)

    def connect_and_close(thread: int) -> None:
        for number in range(thread, count, threads):
            try:
                with socket.socket() as sock:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
                    sock.bind((f"127.0.0.{2 + thread}", 0))
                    sock.settimeout(10)
                    sock.connect(address)
                    ending = number // threads % 4
                    if ending in (ANSWERED, UNREAD):
                        sock.sendall(request)
                    if ending == ANSWERED:
                        answer = b""
                        while chunk := sock.recv(4096):
                            answer += chunk
                        if not answer.endswith(HELLO):
                            problems.append(f"connection {number}: {answer[:100]!r}")
                    elif ending == RESET:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
            except OSError as error:
                problems.append(f"connection {number}: {error!r}")
                if len(problems) > 10:
                    return

    workers = [threading.Thread(target=connect_and_close, args=(thread,)) for thread in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return problems


def test_a_hundred_thousand_connections_leave_no_descriptor_and_no_memory_behind(
    start_server: Callable[..., RunningServer],
) -> None:
    """Each connection costs a descriptor, a Connection and its parser, a receive armed and a close: any of
    them left behind shows, multiplied by 100,000 (a leak of 11 bytes a connection passes 1 MiB). The first
    5,000 connections warm the worker up (its dict of connections, Python's allocator), so that the measure
    starts from a worker that has served as many at once before. Measured here: no growth at all, in 11 s."""
    server = start_server("--workers", "1")
    fds = server.open_fds()
    assert churn(server.address, 5_000) == []
    assert fds_settle_at(server, fds) == fds
    rss = server.rss_bytes()
    started = time.monotonic()
    assert churn(server.address, 100_000) == []
    elapsed = time.monotonic() - started
    assert fds_settle_at(server, fds, within=10) == fds
    growth = server.rss_bytes() - rss
    assert growth < 1024 * 1024, f"{growth / 1024:.0f} KiB more after 100,000 connections in {elapsed:.1f} s"


def server_end_state(client: socket.socket) -> str | None:
    """The TCP state of the server's end of `client`'s connection, as /proc/net/tcp writes it ("01"
    established, "04" FIN_WAIT1, ...), or None once the kernel has forgotten it."""
    client_port, server_port = client.getsockname()[1], client.getpeername()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            return state
    return None


TCP_ESTABLISHED = "01"


def test_a_connection_closed_with_a_send_in_flight_really_ends(
    start_server: Callable[..., RunningServer],
) -> None:
    """The idle timeout closes a connection whose client has stopped reading a large answer: a send of it is
    in flight, and a receive is armed. Each holds a reference to the socket, so the close must cancel both
    before it closes the descriptor: one left in flight keeps the connection open for ever, though the
    descriptor is gone (the client sees no end, and the kernel keeps the socket and its buffers)."""
    body = os.urandom(16 * 1024 * 1024)  # far more than the socket buffers hold: its send stays in flight
    server = start_server("--workers", "1", "--idle-timeout", "1", "--max-body-bytes", str(len(body)))
    baseline = server.open_fds()
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connect: a small window
        client.settimeout(20)
        client.connect(server.address)
        client.sendall(post_echo(body))
        assert client.recv(12) == b"HTTP/1.1 200"  # the answer has begun; nothing more of it is read
        deadline = time.monotonic() + 15
        while server_end_state(client) == TCP_ESTABLISHED:  # a closed socket is in FIN_WAIT1 at once
            assert time.monotonic() < deadline, "15 s on, the server's end of the connection is still open"
            time.sleep(0.05)
        _, ending = read_until_closed(client, within=20)
    assert ending in ("eof", "reset")
    assert fds_settle_at(server, baseline) == baseline


def test_clients_accepted_past_max_connections_are_served_when_the_loop_drains(phase: Phase) -> None:
    """A multishot accept takes every client queued when it runs, even past --max-connections: those are
    kept in `waiting`, accepted but not read from. When the loop drains (SIGTERM, or a rolling restart), they
    are its clients like any other: each one's request is answered (with `Connection: close`), and nothing of
    theirs stays open once the server is shut down. Left waiting, they would hang until they gave up, and in
    a process that lives on (this one, as thread workers' does) each would leak a descriptor."""
    server_module = phase.import_module("server")
    before = open_fds()
    server = server_module.Server(server_module.create_listener("127.0.0.1", 0), max_connections=1)
    address = server.listener.getsockname()[:2]
    clients = [socket.create_connection(address, timeout=10) for _ in range(4)]  # all queued in the kernel
    for client in clients:
        client.sendall(get("/"))

    def serve() -> None:
        server.serve_forever()
        server.shutdown()

    loop = threading.Thread(target=serve, daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while len(server.waiting) < 3:  # the first accept takes all four: one admitted, three over the limit
            assert time.monotonic() < deadline, f"{server.connections} admitted, {server.waiting} waiting"
            time.sleep(0.01)
        server.wakeup_writer.send(bytes([signal.SIGTERM]))  # as the signal handler writes it
        deadline = time.monotonic() + 15
        answers = []
        for client in clients:
            answers.append(read_until_closed(client, within=max(0.1, deadline - time.monotonic())))
            client.close()  # its lingering close ends now
        loop.join(timeout=10)
        assert not loop.is_alive(), "the loop did not end once its connections were closed"
    finally:
        for client in clients:
            client.close()
    for number, (answer, ending) in enumerate(answers):
        assert (answer.startswith(b"HTTP/1.1 200 "), answer.endswith(HELLO), ending) == (True, True, "eof"), (
            f"client {number}: {answer[:60]!r}, then {ending}"
        )
    assert open_fds() == before


def buffers_in_the_ring(server: Any, within: float = 5.0) -> int:
    """How many buffers the server's buffer ring holds for the kernel to pick: a new multishot receive takes
    one per message until the ring is dry (-ENOBUFS). Run by the ring's one submitter, between two turns
    of its loop or after the last; each message is waited for, so that two never share a buffer."""
    probe_tag = (1 << 64) - 1  # no operation of the loop's has it
    server.buffers.publish()  # what the loop recycled in its last turn
    ours, theirs = socket.socketpair()
    with ours, theirs:
        server.ring.receive_multishot(ours.fileno(), server.buffers.group, probe_tag)
        for taken in range(server.buffers.count + 1):
            theirs.sendall(b"x")
            deadline = time.monotonic() + within
            results: list[int] = []
            while not results and time.monotonic() < deadline:
                server.ring.submit_and_wait(0.05)
                results = [result for tag, result, _ in server.ring.completions() if tag == probe_tag]
            if results != [1]:  # -ENOBUFS: the ring is dry
                return taken
        return int(server.buffers.count) + 1  # more than it has: a buffer was given back twice


@contextlib.contextmanager
def serving_in_a_thread(server: Any, after_the_loop: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Run `server` in a thread of this process, then stop it as a SIGTERM would, twice (at once); the
    thread runs `after_the_loop` once its loop is over, while the ring is still open, then shuts the server
    down (the ring's one submitter is the thread that runs its loop, as in serve())."""

    def serve() -> None:
        server.serve_forever()
        after_the_loop()
        server.shutdown()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.wakeup_writer.send(bytes([signal.SIGTERM, signal.SIGTERM]))  # as the signal handler writes
        thread.join(timeout=10)
        server.listener.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_every_receive_buffer_goes_back_to_the_ring(phase: Phase) -> None:
    """Two receive buffers for 5,000 connections: the ring runs dry hundreds of times (each receive that
    finds it dry ends, -ENOBUFS, and is armed again), yet at the end both buffers must be in it, each once.
    A buffer not given back shrinks the ring for good, and once it is dry every receive ends at once; a
    buffer given back twice could be filled for two connections at the same time."""
    server_module = phase.import_module("server")
    server = server_module.Server(server_module.create_listener("127.0.0.1", 0), receive_buffers=2)
    address = server.listener.getsockname()[:2]
    in_the_ring: list[int] = []
    with serving_in_a_thread(server, lambda: in_the_ring.append(buffers_in_the_ring(server))):
        before = open_fds()
        assert churn(address, 5_000, threads=2) == []
        deadline = time.monotonic() + 10
        # Every client accepted (the clients are done when the last few may still wait in the listen queue,
        # with no descriptor of ours yet), and every connection closed.
        while (
            server.last_number < 5_000 or server.connections or open_fds() != before
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.last_number == 5_000
        assert not server.connections
        assert open_fds() == before
        assert not server.orphaned_sends  # the bytes of sends on closed connections, kept until they end
    assert in_the_ring == [2]


# --- the loop: backpressure and bugs ------------------------------------------------------------------


@contextlib.contextmanager
def driven_by_hand(phase: Phase, **options: Any) -> Iterator[tuple[Any, Any, socket.socket]]:
    """A Server whose loop this thread drives, one poll_once() at a time, and one connection made by hand
    from one end of a socket pair, its receive armed: (server, connection, the client's end)."""
    server_module = phase.import_module("server")
    with server_module.create_listener("127.0.0.1", 0) as listener:
        server = server_module.Server(listener, **options)
        ours, theirs = socket.socketpair()
        try:
            server.ring.enable()
            later = time.monotonic() + 60  # no deadline falls during the test
            connection = server_module.Connection(1, ours.detach(), later, later, server.limits)
            server.connections[connection.number] = connection
            server.last_number = connection.number
            server.receive(connection)
            yield server, connection, theirs
        finally:
            server.shutdown()
            theirs.close()


def test_at_exactly_the_high_water_mark_the_loop_neither_parses_nor_receives(phase: Phase) -> None:
    """The io_uring loop's version of test_abuse's test of the same name: backpressure has one test for both
    parsing and reading, and pausing the reading cancels the multishot receive, so that the client's bytes
    wait in the kernel. Reading resumes only below the low-water mark."""
    with driven_by_hand(phase, high_water_mark=1000, low_water_mark=100) as (server, connection, theirs):
        connection.pending_output += b"x" * 1000  # answers the client has not read yet, exactly the mark
        server.update_interest(connection)
        assert not connection.reading
        server.poll_once()  # the cancellation reaches the kernel, and the receive's end comes back
        assert not connection.receiving
        theirs.sendall(get("/"))
        readable, _, _ = select.select([connection.fd], [], [], 1)
        assert readable and not connection.parser.has_partial_request  # the bytes wait in the kernel
        connection.parser.feed(get("/"))
        server.process_requests(connection)
        assert connection.parser.has_partial_request  # nor is anything parsed
        del connection.pending_output[:500]  # between the marks: still paused (no flapping)
        server.update_interest(connection)
        assert not connection.reading and not connection.receiving
        del connection.pending_output[:401]  # below the low-water mark: reading again
        server.update_interest(connection)
        assert connection.reading and connection.receiving
        theirs.setblocking(False)
        answers, deadline = b"", time.monotonic() + 5
        while answers.count(HELLO) < 2 and time.monotonic() < deadline:
            server.poll_once()  # the receive's bytes, then the send of both answers
            with contextlib.suppress(BlockingIOError):
                answers += theirs.recv(65536)
        assert answers.count(HELLO) == 2  # the request fed by hand, then the one that waited


def test_a_short_send_sends_its_rest_before_what_queued_behind_it(phase: Phase) -> None:
    """A send's completion may say the kernel took fewer bytes than asked (a signal, or an error the next send
    meets, cut it short): the rest must go out first, then what queued behind that send, in order. Dropped,
    the client would read an answer with a hole in it, and every answer after it misframed."""
    with driven_by_hand(phase) as (server, connection, theirs):
        first, second = b"the first answer, of which the kernel took 9 bytes; ", b"then the second answer"
        connection.sending = first  # as if in flight: its completion comes below, by hand
        connection.pending_output += second
        server.on_sent(connection, 9)
        expected = first[9:] + second
        theirs.setblocking(False)
        received, deadline = b"", time.monotonic() + 5
        while len(received) < len(expected) and time.monotonic() < deadline:
            server.poll_once()  # the send of what is left
            with contextlib.suppress(BlockingIOError):
                received += theirs.recv(65536)
        assert received == expected


def test_a_send_in_flight_keeps_its_bytes_after_a_close_until_its_completion(phase: Phase) -> None:
    """The kernel reads a send's bytes from our memory until the send is over. A close cancels the send, but
    the cancellation completes later: until its completion comes, the bytes must stay alive (in
    `orphaned_sends`), or the kernel could send whatever the memory holds by then, someone else's answer.
    Once it has come, they go (kept for ever, they would leak)."""
    with driven_by_hand(phase) as (server, connection, theirs):
        data = os.urandom(4 * 1024 * 1024)  # far more than the socket pair holds: the send waits for room
        server.start_sending(connection, data)
        server.ring.submit()
        server.close(connection)
        assert server.orphaned_sends.get(connection.number) is data, "a send in flight lost its bytes"
        deadline = time.monotonic() + 5
        while (server.closes_in_flight or server.orphaned_sends) and time.monotonic() < deadline:
            server.poll_once()  # the send's completion (cancelled), and the close's
        assert not server.orphaned_sends, "the bytes were kept after the send's completion"
        theirs.setblocking(False)
        received = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := theirs.recv(1 << 20):
                received += chunk
        assert received and data.startswith(received)  # what the kernel sent was ours, in order


def test_a_buffer_filled_for_a_connection_closed_meanwhile_goes_back_too(phase: Phase) -> None:
    """Completions of one batch are handled in turn: one may close a connection whose receive has filled a
    buffer in the same batch. Nothing serves that connection any more, but its buffer must go back. Made
    here: the client sends a few bytes and stops reading (SHUT_RD), so that our send fails (EPIPE) in the
    same io_uring_enter that hands over the bytes, the failure first: the kernel fails the send as it is
    submitted, and runs the receive's work after that."""
    with driven_by_hand(phase, receive_buffers=2) as (server, connection, theirs):
        server.ring.submit()  # the receive, armed before the bytes come
        theirs.sendall(b"GET / HTTP/1.1\r\n")
        theirs.shutdown(socket.SHUT_RD)
        server.start_sending(connection, b"an answer the client will not read")
        for_closed_connections: list[int] = []
        handle_other_completion = server.on_other_completion

        def recording(user_data: int, result: int, flags: int, now: float) -> None:
            for_closed_connections.append(flags)
            handle_other_completion(user_data, result, flags, now)

        server.on_other_completion = recording
        server.poll_once()
        assert connection.number not in server.connections  # closed by the failed send
        uring = phase.import_module("uring")
        assert any(flags & uring.CQE_F_BUFFER for flags in for_closed_connections), "no buffer came late"
        assert buffers_in_the_ring(server) == 2


def test_a_client_that_does_not_read_pauses_the_receive_until_it_reads(phase: Phase) -> None:
    """64 pipelined echoes of 64 KiB, none read: the server answers until a quarter MiB waits for the
    client, then cancels its receive, and the client's requests wait in the kernel (its sendall blocks).
    Once the client reads, the server receives again and answers every request."""
    server_module = phase.import_module("server")
    listener = server_module.create_listener("127.0.0.1", 0)
    # Small socket buffers (accepted sockets inherit the listener's): the kernel holds little of either way,
    # so what the server holds, and the pause, show soon.
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        listener.setsockopt(socket.SOL_SOCKET, option, 16384)
    high_water_mark = 256 * 1024
    server = server_module.Server(listener, high_water_mark=high_water_mark, low_water_mark=64 * 1024)
    body, count = b"z" * 65536, 64
    requests = post_echo(body) * (count - 1) + post_echo(body, "Connection: close")
    with serving_in_a_thread(server), socket.socket() as client:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            client.setsockopt(socket.SOL_SOCKET, option, 16384)
        client.settimeout(20)
        client.connect(listener.getsockname())
        sender = threading.Thread(target=client.sendall, args=(requests,), daemon=True)
        sender.start()
        deadline = time.monotonic() + 10
        while not any(not c.reading and not c.receiving for c in list(server.connections.values())):
            assert time.monotonic() < deadline, "the server never paused its receive"
            time.sleep(0.01)
        [connection] = server.connections.values()
        assert len(connection.pending_output) >= high_water_mark
        time.sleep(0.2)
        assert not connection.reading and not connection.receiving, "paused, then reading again unread"
        assert sender.is_alive(), "every request was received: the pause came too late to matter"
        answers, ending = read_until_closed(client, within=20)
        sender.join(timeout=5)
    assert answers.count(b"HTTP/1.1 200 OK\r\n") == count
    assert ending == "eof"


def test_an_exception_while_sending_costs_one_connection(
    phase: Phase, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug met in a send's completion closes that connection; every other one is served on, and the loop
    logs the error and runs on."""
    server_module = phase.import_module("server")
    server = server_module.Server(server_module.create_listener("127.0.0.1", 0))
    address = server.listener.getsockname()[:2]
    with serving_in_a_thread(server), socket.create_connection(address, timeout=5) as bystander:
        bystander.sendall(get("/"))
        assert bystander.recv(4096).endswith(HELLO)
        [bystander_number] = server.connections
        real_on_sent = server_module.Server.on_sent

        def on_sent_with_a_bug(self: Any, connection: Any, result: int) -> None:
            if connection.number != bystander_number:
                raise RuntimeError("planted in on_sent")
            real_on_sent(self, connection, result)

        monkeypatch.setattr(server_module.Server, "on_sent", on_sent_with_a_bug)
        with socket.create_connection(address, timeout=5) as victim:
            victim.sendall(get("/"))
            _, ending = read_until_closed(victim, within=5)
        assert ending in ("eof", "reset")
        bystander.sendall(get("/") * 3)
        answers = b""
        while answers.count(HELLO) < 3:
            answers += bystander.recv(4096)
        assert list(server.connections) == [bystander_number]
        assert not server.orphaned_sends  # the failed send was over: nothing waits for its completion
        assert server.running
    assert capsys.readouterr().err.count("RuntimeError: planted in on_sent") == 1


def test_where_io_uring_cannot_run_the_server_says_why_in_one_line_and_exits_2(
    phase: Phase, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kernel too old, a sysctl or a seccomp profile: one line naming the reason and the epoll phase, no
    traceback, and no worker started."""
    main_module = phase.import_module("__main__")
    monkeypatch.setattr(main_module, "unavailable_reason", lambda: "planted: no io_uring here")
    monkeypatch.setattr(main_module, "supervise", lambda *_, **__: pytest.fail("the supervisor was started"))
    assert main_module.main(["--port", "0", "--workers", "1"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    assert "planted: no io_uring here" in error and "epoll" in error
