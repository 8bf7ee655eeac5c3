"""Chapter 6's optimisations change how fast the server is, never what it answers: tested from outside.

Each switch of `--without OPTIMISATION` runs the same script of requests as the whole server, and the two
transcripts must be equal (the Date header aside). The script goes where the optimisations could break:
pipelined requests, a request head and a body split across reads while other connections read in between
(every connection receives into one shared buffer), a body larger than that buffer, HEAD, HTTP/1.0 and
`Connection: close` (cached responses differ by all three), errors. Then what the optimisations promise that
a transcript cannot show: an idle connection holds no receive buffer, a cached response's Date stays current,
`--without cached_responses` does turn the cache off, thread workers each parse in a buffer of their own, and
with `--pin` each worker runs on a CPU of its own. Round two's cuts in the system calls: every socket sends
without Nagle (TCP_NODELAY, inherited from the listener), a client that asked to close is closed at once and
every other still gets the lingering close, and only a file answer's head waits for the file (MSG_MORE).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import email.utils
import errno
import itertools
import json
import random
import re
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_abuse import read_until_closed
from test_http import HELLO, HttpClient, chunked, get, post_echo
from test_workers import wait_for_log

from conftest import FullDuplex, Phase, RunningServer

Transcript = list[tuple[int, list[tuple[str, str]], bytes]]
LARGE_BODY = bytes(range(256)) * 800  # 200 KiB: more than the shared receive buffer holds
SEED = 20261130  # fixed: a failure is reproducible; change it to explore


def answer(client: HttpClient, method: str = "GET") -> tuple[int, list[tuple[str, str]], bytes]:
    """The next response, without its Date (the one header that may differ between two runs)."""
    response = client.response(method)
    headers = [(name.lower(), value) for name, value in response.headers.items() if name.lower() != "date"]
    return response.status, headers, response.body


def split_while_others_read(server: RunningServer, request: bytes, at: int) -> Transcript:
    """Send `request` in two parts, and between them let another connection be served whole."""
    answers: Transcript = []
    with HttpClient(server) as slow, HttpClient(server) as other:
        slow.send(request[:at])
        time.sleep(0.05)  # the server reads the first part before the other connection's request
        other.send(get("/"))
        answers.append(answer(other))
        slow.send(request[at:])
        answers.append(answer(slow, request.split(b" ", 1)[0].decode()))
    return answers


def transcript(server: RunningServer) -> Transcript:
    """The script's answers, in order."""
    answers: Transcript = []
    with HttpClient(server) as client:
        for request, method in [
            (get("/"), "GET"),
            (get("/"), "GET"),
            (b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n", "HEAD"),
            (get("/json"), "GET"),
            (get("/users/7"), "GET"),
            (get("/missing"), "GET"),
            (b"DELETE / HTTP/1.1\r\nHost: test\r\n\r\n", "DELETE"),
            (get("/", "Connection: keep-alive", version="HTTP/1.0"), "GET"),
        ]:
            client.send(request)
            answers.append(answer(client, method))
        client.send(get("/") * 20 + post_echo(b"x" * 100) + get("/json"))  # pipelined, in one write
        answers += [answer(client) for _ in range(22)]
        client.send(get("/", "Connection: close"))
        answers.append(answer(client))
        assert client.is_closed_by_server()
    # Each split request is checked here, not only against the whole server's: a bug common to every
    # variant (as in the shared buffer, which all but one use) would otherwise compare equal.
    for request, at, expected in [
        (get("/users/42"), 9, json.dumps({"id": 42}).encode()),
        (post_echo(b"0123456789" * 10), 60, b"0123456789" * 10),
        (post_echo(LARGE_BODY), 70_000, LARGE_BODY),
    ]:
        other, mine = split_while_others_read(server, request, at)
        assert (other[0], mine[0], mine[2]) == (200, 200, expected), f"{request[:20]!r} split at {at}"
        answers += [other, mine]
    with HttpClient(server) as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.send(chunked(LARGE_BODY, chunk_size=50_000))
        answers.append(answer(client))
    with HttpClient(server) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: test\r\nBad Header: x\r\n\r\n")
        answers.append(answer(client))
        assert client.is_closed_by_server()
    return answers


def optimisations(phase: Phase) -> list[str]:
    return list(phase.import_module("__main__").OPTIMISATIONS)


@pytest.mark.needs("http", "routing", "optimisation_switches")
def test_no_switch_changes_an_answer(phase: Phase, start_server: Callable[..., RunningServer]) -> None:
    # One worker: with two, two connections may reach different workers, each with its own shared buffer.
    whole = transcript(start_server("--workers", "1"))
    statuses = [status for status, _, _ in whole]
    assert statuses.count(200) >= 30 and {404, 405, 400} <= set(statuses)  # the script went everywhere
    assert whole[-3][2] == LARGE_BODY and whole[-2][2] == LARGE_BODY
    for options in [*(("--without", name) for name in optimisations(phase)), ("--pin",), ("--gc-freeze",)]:
        variant = transcript(start_server("--workers", "1", *options))
        assert variant == whole, f"{' '.join(options)} answers differently"


@pytest.mark.needs("http", "keep_alive")
def test_a_head_split_across_reads_survives_other_connections_being_served(
    phase: Phase, start_server: Callable[..., RunningServer]
) -> None:
    """However the server buffers what it receives, bytes that one connection has not yet parsed belong to
    it alone: another connection's request, served in between, neither loses nor corrupts them. (That
    request, `GET /`, differs from this one from the sixth byte: its bytes in place of ours make a 400.)"""
    one_worker = ("--workers", "1") if "multi_process" in phase.capabilities else ()
    server = start_server(*one_worker)  # one worker, so that both connections meet in the same loop
    for at in (1, 9, 16, 30):
        request = get("/?" + "q" * 40, "X-Padding: p")
        (other, mine) = split_while_others_read(server, request, at)
        assert other[0] == 200 and mine[0] == 200 and mine[2] == HELLO, at


@pytest.mark.needs("http", "keep_alive")
def test_the_date_header_is_the_time_of_the_answer(server: RunningServer) -> None:
    """A Date formatted once per second (and a response cached with it) must still say the current second."""
    with HttpClient(server) as client:
        for _ in range(2):
            before = time.time()
            client.send(get("/"))
            date = client.response().header("Date")
            assert date is not None
            sent = email.utils.parsedate_to_datetime(date).timestamp()
            assert int(before) <= sent <= time.time()
            time.sleep(1.1)  # the next answer falls in another second


def idle_connection_cost(server: RunningServer, count: int = 400) -> float:
    """The server's resident memory per idle keep-alive connection, each having been served once. (400: the
    test process holds a descriptor per connection too, well under the usual limit of 1024.)"""
    time.sleep(0.2)  # let the server's start-up allocations settle before the baseline
    before = server.rss_bytes()
    clients = []
    try:
        for _ in range(count):
            client = HttpClient(server)
            clients.append(client)
            client.send(get("/"))
            assert client.response().body == HELLO
        return (server.rss_bytes() - before) / count
    finally:
        for client in clients:
            client.close()


@pytest.mark.needs("http", "keep_alive", "optimisation_switches")
def test_an_idle_connection_holds_no_receive_buffer(
    start_server: Callable[..., RunningServer], phase: Phase
) -> None:
    """With the shared buffer an idle connection costs its objects, not 16 KiB of buffer; without, it does.
    Through TLS, OpenSSL's own state of each connection comes on top, with the buffer or without."""
    shared = idle_connection_cost(start_server("--workers", "1"))
    own = idle_connection_cost(start_server("--workers", "1", "--without", "shared_buffer"))
    if "tls" not in phase.capabilities:
        assert shared < 4 * 1024, f"each idle connection costs {shared / 1024:.1f} KiB"
    assert own - shared > 12 * 1024, f"the shared buffer saves {(own - shared) / 1024:.1f} KiB: is it wired?"


def worker_cpus(server: RunningServer) -> list[set[int]]:
    deadline = time.monotonic() + 10
    while len(workers := server.processes()[1:]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return sorted((set(worker.cpu_affinity()) for worker in workers), key=sorted)


@pytest.mark.needs("multi_process", "optimisation_switches")
def test_with_pin_each_worker_runs_on_a_cpu_of_its_own(start_server: Callable[..., RunningServer]) -> None:
    allowed = sorted(psutil.Process().cpu_affinity())
    pinned = worker_cpus(start_server("--workers", "2", "--pin"))
    assert pinned == sorted(({allowed[slot % len(allowed)]} for slot in range(2)), key=sorted)
    assert worker_cpus(start_server("--workers", "2")) == [set(allowed)] * 2


@pytest.mark.needs("http", "optimisation_switches")
def test_an_unknown_optimisation_is_a_usage_error(phase: Phase) -> None:
    with pytest.raises(SystemExit) as stopped:
        phase.import_module("__main__").parse_args(["--without", "everything"])
    assert stopped.value.code == 2


def application_served_by(phase: Phase, options: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The application a worker of `python -m PHASE OPTIONS` serves with. main() reads the options and binds
    them to the worker's serve function, as ever; a stand-in for the supervisor then runs that function in a
    thread (which serve() may block signals in), on a listener of its own, and stops the loop as soon as the
    worker says it is ready, before its first turn."""
    main_module = phase.import_module("__main__")
    server_module = phase.import_module("server")
    applications: list[Any] = []

    def ready(server: Any) -> None:
        applications.append(server.application)
        server.running = False

    def supervise_one_worker(serve_worker: Callable[..., int], *args: object, **kwargs: object) -> int:
        listener = server_module.create_listener("127.0.0.1", 0)
        worker = threading.Thread(target=serve_worker, args=(listener, ready))
        worker.start()
        worker.join(timeout=10)
        return 0

    monkeypatch.setattr(main_module, "supervise", supervise_one_worker)
    assert main_module.main(["--port", "0", "--workers", "1", *options]) == 0
    [application] = applications
    return application


@pytest.mark.needs("http", "optimisation_switches")
def test_without_cached_responses_every_answer_is_rendered_anew(
    phase: Phase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bench measures what the response cache buys by turning it off: a switch wired to nothing between
    the command line and the application would measure nothing, and the transcripts would still agree. With
    the cache, `GET /` is answered with the bytes rendered for the last one (until the Date changes, once a
    second); without it, every answer is rendered anew, a bytes object of its own."""
    protocol = phase.import_module("protocol")

    def three_answers(application: Any) -> list[bytes]:
        parser = protocol.RequestParser()
        parser.feed(get("/") * 3)
        answers: list[bytes] = [application.respond(parser.next_request()) for _ in range(3)]
        assert all(answer.endswith(HELLO) for answer in answers)
        return answers

    cached = three_answers(application_served_by(phase, [], monkeypatch))
    # Three answers made in microseconds straddle at most one change of second: two of them share one.
    assert cached[0] is cached[1] or cached[1] is cached[2], "with the cache on, nothing was cached"
    rendered = three_answers(application_served_by(phase, ["--without", "cached_responses"], monkeypatch))
    assert rendered[0] is not rendered[1] and rendered[1] is not rendered[2], "the cache is still on"


CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


def read_bodies(sock: socket.socket, count: int) -> list[bytes]:
    """Read `count` answers from `sock` -> their bodies; fewer if the server closes the connection or stops
    answering (a request it could not parse)."""
    received = bytearray()
    bodies: list[bytes] = []
    while len(bodies) < count:
        head_end = received.find(b"\r\n\r\n")
        if head_end >= 0:
            length = CONTENT_LENGTH.search(received, 0, head_end)
            body_end = head_end + 4 + (int(length.group(1)) if length else 0)
            if len(received) >= body_end:
                bodies.append(bytes(received[head_end + 4 : body_end]))
                del received[:body_end]  # cheap: a bytearray moves its start, not its bytes
                continue
        try:
            chunk = sock.recv(1 << 16)
        except (TimeoutError, ConnectionError):
            break
        if not chunk:
            break
        received += chunk
    return bodies


ECHO_REQUEST_SIZE = 512  # bytes, head and body: eight whole requests fill a 4 KiB receive exactly


@pytest.mark.needs("http", "multi_process", "optimisation_switches")
def test_thread_workers_receive_into_buffers_of_their_own(start_server: Callable[..., RunningServer]) -> None:
    """With --model threads every loop runs in one process, and each must parse in a shared buffer of its
    own: one buffer for the whole process would be written by one loop while another still parses what it
    put there (the interpreter switches threads every few milliseconds, and a loop lets the others run
    while it makes a system call), and a request would be answered with another client's bytes. 24 clients
    at once, each pipelining echoes of bodies of its own, 19,200 in all, every echo compared byte for byte.
    Every request is ECHO_REQUEST_SIZE bytes, so that a receive ends where a request ends and the parser
    is done with the shared buffer (bytes of a partial request move to a buffer of the parser's own, which
    no other loop can touch): the shared buffer is in use all the time. A buffer per process garbled the
    echoes of 19 to 34 of the 48 connections."""
    server = start_server("--model", "threads", "--workers", "2")
    clients, connections, echoes = 24, 2, 400
    body_size = ECHO_REQUEST_SIZE - len(post_echo(b"x" * 100)) + 100

    def corrupted_connections(client: int) -> list[str]:
        rng = random.Random(f"{SEED}/{client}")
        corrupted: list[str] = []
        for connection in range(connections):
            label = f"client {client}, connection {connection}, echo".encode()
            bodies = [(b"%s %d: " % (label, n) + rng.randbytes(body_size))[:body_size] for n in range(echoes)]
            with server.connect(timeout=10) as sock:
                sock.sendall(b"".join(post_echo(body) for body in bodies))
                echoed = read_bodies(sock, echoes)
            for number, (body, echo) in enumerate(itertools.zip_longest(bodies, echoed)):
                if echo != body:  # the rest of this connection's echoes are lost with it: one report
                    echo_start = echo[:40] if echo is not None else None
                    corrupted.append(f"{label.decode()} {number}: {echo_start!r}")
                    break
        return corrupted

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        corrupted = [wrong for found in pool.map(corrupted_connections, range(clients)) for wrong in found]
    assert corrupted == [], f"{len(corrupted)} of {clients * connections} connections, e.g. {corrupted[:3]}"


# --- round two: the system calls of a connection ------------------------------------------------------


def reset_by_server(sock: socket.socket, within: float) -> bool:
    """After the server's end of stream, send it a byte: True once the server has answered it with a reset
    (its socket is closed: nothing reads there any more); False if none came within `within` seconds (a
    lingering close is reading, and dropping, what we send)."""
    sock.sendall(b"x")
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        # The reset is a pending error on our socket: recv() cannot report it once it has read the end of
        # stream (it returns b"" from then on), SO_ERROR does. After an end of stream our kernel records a
        # reset as EPIPE (our side may still send, and the reset says nobody will read).
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) in (errno.EPIPE, errno.ECONNRESET):
            return True
        time.sleep(0.01)
    return False


@pytest.mark.needs("http", "quick_close")
def test_a_client_that_asked_to_close_is_closed_at_once(start_server: Callable[..., RunningServer]) -> None:
    """`Connection: close`, answered whole in one turn, nothing sent after it: the server closes its socket at
    once (the quick close) instead of half-closing and waiting for the client's FIN. Seen from outside: a byte
    sent after the end of stream meets a closed socket, which answers with a reset."""
    server = start_server("--workers", "1")
    for request in [get("/", "Connection: close"), get("/users/7", version="HTTP/1.0")]:
        with server.connect(timeout=10) as sock:
            sock.sendall(request)
            answer, ending = read_until_closed(sock, within=10)
            assert answer.startswith(b"HTTP/1.1 200 ") and ending == "eof", (answer[:40], ending)
            assert reset_by_server(sock, within=10), f"{request!r}: the server lingered"


@pytest.mark.needs("http", "quick_close")
def test_a_large_last_answer_ends_in_the_lingering_close(start_server: Callable[..., RunningServer]) -> None:
    """A last answer larger than QUICK_CLOSE_MAX_ANSWER leaves over round trips, while a client that broke its
    promise could still send and draw a reset that drops the rest: such an answer ends in the lingering close
    even when the client asked for it to be the last. Seen from outside: a byte sent after the end of stream
    is read and dropped (within LINGER_TIMEOUT, 2 s: we wait a quarter of it), not answered with a reset."""
    server = start_server("--workers", "1")
    body = bytes(range(256)) * 256  # 64 KiB
    with server.connect(timeout=10) as sock:
        sock.sendall(post_echo(body, "Connection: close"))
        answer, ending = read_until_closed(sock, within=10)
        assert answer.endswith(body) and ending == "eof", (len(answer), ending)
        assert not reset_by_server(sock, within=0.5), "a 64 KiB last answer ended in the quick close"


@pytest.mark.needs("http", "quick_close")
def test_a_client_still_sending_after_its_close_request_gets_the_lingering_close(
    start_server: Callable[..., RunningServer],
) -> None:
    """The quick close is for a client that sent nothing after its last request. One that did may still be
    sending (here 1 MiB after it, more than one receive takes): closing with its bytes unread would make our
    kernel answer them with a reset at once, and the client's kernel, receiving the reset, drops the answer
    it had not read yet. Such a client gets the lingering close, and its whole answer."""
    server = start_server("--workers", "1")
    with server.connect(timeout=10) as sock:
        client = FullDuplex(sock)
        client.queue(get("/", "Connection: close") + bytes(2**20))
        client.run(None, within=0.5, reading=False)  # the server answers and closes, unread
        client.run(client.closed, within=10)
    answer, ending = bytes(client.received), client.ended
    assert answer.endswith(HELLO) and ending == "eof", (answer[:40], ending)


@pytest.mark.needs("http", "quick_close", "graceful_shutdown")
def test_a_client_told_to_close_by_a_drain_gets_the_lingering_close(
    start_server: Callable[..., RunningServer],
) -> None:
    """A drain answers a keep-alive request with `Connection: close`: that client did not ask to close, and
    may send its next request before it reads the answer. Here it does, while most of the answer still
    waits in the server's kernel for room in the client's small receive window. A quick close would meet
    that request with a reset, and a reset throws away what the kernel has not sent yet. The lingering close
    reads the request, drops it, and the whole answer arrives."""
    server = start_server("--workers", "1")
    body = bytes(range(256)) * 40  # 10 KiB: our kernel takes it at once, the client's window does not
    with server.connect(timeout=10, receive_buffer=2048) as sock:  # a window that stays small
        request = post_echo(body)
        sock.sendall(request[:-1])  # a request in progress, which the drain waits for (an idle one has 1 s)
        mark = len(server.stderr_so_far())
        server.process.send_signal(signal.SIGTERM)
        wait_for_log(server, r"draining", after=mark, within=10)
        sock.sendall(request[-1:])
        assert select.select([sock], [], [], 10)[0], "no answer while draining"
        sock.sendall(get("/"))  # before the answer is read, as a client that pipelines would
        time.sleep(0.2)  # a reset has time to arrive
        answer, ending = read_until_closed(sock, within=10)
    assert b"\r\nConnection: close\r\n" in answer and answer.endswith(body), (len(answer), ending)
    assert ending == "eof"


# trigger_modes: it drives the epoll loop's accept by hand (phase 7's ring sets the same option the same way).
@pytest.mark.needs("server_internals", "trigger_modes")
def test_every_accepted_socket_sends_without_nagle(phase: Phase) -> None:
    """TCP_NODELAY on every client's socket, however it gets there (phase 6: set once on the listener, whose
    accepted sockets inherit it): with Nagle's algorithm a small answer would wait for the ACK of the one
    before it, and the client delays its ACKs by up to 40 ms."""
    server_module = phase.import_module("server")
    with server_module.create_listener("127.0.0.1", 0) as listener:
        server = server_module.Server(listener)
        with socket.create_connection(listener.getsockname()[:2]) as client:
            deadline = time.monotonic() + 10
            while not server.connections and time.monotonic() < deadline:
                server.accept_clients(time.monotonic())  # the listener is non-blocking: retry until queued
            (connection,) = server.connections.values()
            assert connection.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), client
        server.shutdown()


@pytest.mark.needs("server_internals", "static_files", "file_head_more")
def test_only_a_file_answers_head_waits_for_the_file(
    phase: Phase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file answer's head is sent with MSG_MORE, so that the kernel sends it with the file's first bytes.
    Any other answer must go at once: with MSG_MORE the kernel would hold it back for 200 ms, waiting for
    more. Every send() the server makes is recorded, with its flags, for answers of every kind."""
    server_module = phase.import_module("server")
    app_module = phase.import_module("app")
    (tmp_path / "page.html").write_bytes(b"<p>hello</p>\n" * 1000)
    sends: list[tuple[bytes, int]] = []  # the first bytes of each send, and whether it had MSG_MORE
    if "io_uring" in phase.capabilities:  # the ring's send operation, whose flags are send(2)'s
        ring_class = phase.import_module("uring").Ring
        real_ring_send = ring_class.send

        def recording_ring_send(  # noqa: PLR0917 (the signature of Ring.send)
            self: Any, fd: int, address: int, length: int, tag: int, flags: int = 0
        ) -> None:
            sends.append((ctypes.string_at(address, min(length, 12)), flags & socket.MSG_MORE))
            real_ring_send(self, fd, address, length, tag, flags)

        monkeypatch.setattr(ring_class, "send", recording_ring_send)
    else:
        real_send = socket.socket.send

        def recording_send(self: socket.socket, data: Any, flags: int = 0) -> int:
            sends.append((bytes(data[:12]), flags & socket.MSG_MORE))
            return real_send(self, data, flags)

        monkeypatch.setattr(socket.socket, "send", recording_send)
    listener = server_module.create_listener("127.0.0.1", 0)
    server = server_module.Server(listener, application=app_module.build_application(tmp_path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        requests = {
            "a file": get("/static/page.html"),
            "a range of it": get("/static/page.html", "Range: bytes=10-19"),
            "its head": b"HEAD /static/page.html HTTP/1.1\r\nHost: test\r\n\r\n",
            "not modified": get("/static/page.html", "If-None-Match: *"),
            "a fixed answer": get("/"),
            "a dynamic one": get("/users/7"),
            "not found": get("/static/missing.html"),
        }
        for what, request in requests.items():
            sends.clear()
            with socket.create_connection(listener.getsockname()[:2], timeout=10) as client:
                client.sendall(request[:-2] + b"Connection: close\r\n\r\n")
                read_until_closed(client, within=10)
            flags = [flag for data, flag in sends if data.startswith(b"HTTP/1.1 ")]
            expected = socket.MSG_MORE if what in ("a file", "a range of it") else 0
            assert flags == [expected], f"{what}: send() flags {flags}"
    finally:
        server.wakeup_writer.send(bytes([signal.SIGTERM, signal.SIGTERM]))  # what the signal handler writes
        thread.join(timeout=10)
        server.shutdown()
        listener.close()
