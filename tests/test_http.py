"""Black-box tests of the HTTP/1.1 servers: raw bytes over real sockets, responses read by http.client.

The demo application every HTTP phase serves: `GET /` (and `HEAD /`) -> 200 `Hello, World!` as text/plain,
`POST /echo` -> 200 with the request body, anything else -> 404.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import http.client
import io
import os
import re
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import pytest

from conftest import Phase, RunningServer

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

pytestmark = pytest.mark.needs("http")

HELLO = b"Hello, World!"


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class SharedReader:
    """Hands http.client our one buffered reader for every response (pipelined responses share it), and
    ignores the close() that http.client calls after each one."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def makefile(self, mode: str) -> SharedReader:
        return self

    def __getattr__(self, name: str) -> object:
        return getattr(self.file, name)

    def close(self) -> None:
        pass


class SocketReader(io.RawIOBase):
    """A socket as the raw stream under a BufferedReader, which then keeps what it read ahead for the next
    read; while `peeking`, a receive that times out gives nothing (None) instead of an exception."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.peeking = False
        self.ended = False  # the server has closed its side

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        try:
            count = self.sock.recv_into(buffer)
        except (TimeoutError, ssl.SSLWantReadError):
            if self.peeking:
                return None
            raise
        self.ended = count == 0
        return count


class HttpClient:
    """A raw-bytes client: we write exactly the bytes a test wants, and parse answers with http.client."""

    def __init__(
        self, server: RunningServer, timeout: float = 10.0, receive_buffer: int | None = None
    ) -> None:
        self.sock = server.connect(timeout=timeout, receive_buffer=receive_buffer)
        self.file = io.BufferedReader(SocketReader(self.sock))

    def answer_arrives(self, within: float) -> bool:
        """Whether a byte of an answer, or the server's close, arrives within `within` seconds; the byte stays
        for response() to read. select() could not tell: through TLS 1.3, the session tickets that follow
        the handshake make the socket readable too, with nothing in them for us."""
        raw = self.file.raw
        assert isinstance(raw, SocketReader)
        timeout = self.sock.gettimeout()
        self.sock.settimeout(within)
        raw.peeking = True
        try:
            return bool(self.file.peek(1)) or raw.ended
        finally:
            raw.peeking = False
            self.sock.settimeout(timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> Response:
        """Read the next response; the shared buffered file keeps pipelined responses apart."""
        parsed = http.client.HTTPResponse(SharedReader(self.file), method=method)  # type: ignore[arg-type]
        parsed.begin()
        body = parsed.read()
        return Response(parsed.status, parsed.headers, body)

    def is_closed_by_server(self, within: float = 5.0) -> bool:
        """True if the server closes the connection within `within` seconds without sending anything more;
        False if it is still open by then, or sent more bytes."""
        self.sock.settimeout(within)
        try:
            return self.file.read(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def ask(server: RunningServer, request: bytes, timeout: float = 10.0) -> Response:
    """`request` on a new connection: its answer."""
    with HttpClient(server, timeout) as client:
        client.send(request)
        return client.response()


def get(path: str = "/", *extra_headers: str, version: str = "HTTP/1.1") -> bytes:
    lines = [f"GET {path} {version}", "Host: test", *extra_headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post_echo(body: bytes, *extra_headers: str) -> bytes:
    head = ["POST /echo HTTP/1.1", "Host: test", f"Content-Length: {len(body)}", *extra_headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunked(body: bytes, chunk_size: int = 4096) -> bytes:
    pieces = [b"%x\r\n%s\r\n" % (len(part), part) for part in iter_chunks(body, chunk_size)]
    return b"".join(pieces) + b"0\r\n\r\n"


def iter_chunks(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --- the application and the basics ----------------------------------------------------------------


def test_get_root_is_hello_world_with_required_headers(server: RunningServer) -> None:
    with HttpClient(server) as client:
        client.send(get("/"))
        response = client.response()
    assert response.status == 200
    assert response.body == HELLO
    assert response.header("Content-Length") == str(len(HELLO))
    assert (response.header("Content-Type") or "").startswith("text/plain")
    date = response.header("Date")
    assert date is not None and date.endswith(" GMT")
    assert abs(email.utils.parsedate_to_datetime(date).timestamp() - time.time()) < 5


def test_head_gets_the_headers_of_get_without_a_body(server: RunningServer) -> None:
    with HttpClient(server) as client:
        client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n" + get("/"))
        head = client.response(method="HEAD")
        after = client.response()  # if HEAD had a body, this would read it as a broken status line
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == str(len(HELLO))
    assert after.status == 200 and after.body == HELLO


def test_absolute_form_and_query_reach_the_same_resource(server: RunningServer) -> None:
    with HttpClient(server) as client:
        client.send(get("http://test/") + get("/?greeting=hi") + get("http://test/echo?x=1"))
        assert client.response().body == HELLO
        assert client.response().body == HELLO
        assert client.response().status in (404, 405)  # GET, not POST: /echo only takes POST (405: routed)


def test_unknown_path_is_404_and_the_connection_stays_usable(server: RunningServer) -> None:
    with HttpClient(server) as client:
        client.send(get("/nope"))
        assert client.response().status == 404
        client.send(get("/"))
        assert client.response().body == HELLO


@pytest.mark.parametrize("size", [0, 1, 100_000, 1024 * 1024], ids=["empty", "1B", "100kB", "1MiB"])
def test_post_echo_with_content_length(server: RunningServer, size: int) -> None:
    body = os.urandom(size)
    with HttpClient(server) as client:
        client.send(post_echo(body))
        response = client.response()
    assert response.status == 200 and response.body == body


@pytest.mark.parametrize("size", [1, 100_000, 1024 * 1024], ids=["1B", "100kB", "1MiB"])
def test_post_echo_chunked(server: RunningServer, size: int) -> None:
    body = os.urandom(size)
    with HttpClient(server) as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body))
        response = client.response()
    assert response.status == 200 and response.body == body
    assert response.header("Content-Length") == str(size)


def test_chunked_body_with_extensions_and_trailers(server: RunningServer) -> None:
    request = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nTrailer-Field: x\r\n\r\n"
    )
    with HttpClient(server) as client:
        client.send(request)
        assert client.response().body == b"hello world"


def test_request_sent_one_byte_at_a_time(server: RunningServer) -> None:
    with HttpClient(server) as client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in post_echo(b"slow but fine"):
            client.send(bytes([byte]))
        assert client.response().body == b"slow but fine"


# --- connection management -------------------------------------------------------------------------


@pytest.mark.needs("keep_alive")
def test_http11_connection_persists_across_requests(server: RunningServer) -> None:
    with HttpClient(server) as client:
        for index in range(5):
            client.send(post_echo(f"request {index}".encode()))
            assert client.response().body == f"request {index}".encode()
        assert not client.is_closed_by_server(within=0.2)


@pytest.mark.needs("keep_alive")
def test_connection_close_is_honoured(server: RunningServer) -> None:
    with HttpClient(server) as client:
        client.send(get("/", "Connection: close"))
        response = client.response()
        assert response.status == 200 and response.header("Connection") == "close"
        assert client.is_closed_by_server()


@pytest.mark.needs("keep_alive")
def test_http10_closes_unless_keep_alive_is_asked_for(server: RunningServer) -> None:
    with HttpClient(server) as client:
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        assert client.response().body == HELLO
        assert client.is_closed_by_server()
    with HttpClient(server) as client:
        client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        response = client.response()
        assert response.body == HELLO and response.header("Connection") == "keep-alive"
        client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert client.response().body == HELLO


@pytest.mark.needs("pipelining")
def test_pipelined_requests_are_answered_in_order(server: RunningServer) -> None:
    bodies = [f"pipelined {index}".encode() * (index + 1) for index in range(20)]
    with HttpClient(server) as client:
        client.send(b"".join(post_echo(body) for body in bodies) + get("/"))
        assert [client.response().body for _ in bodies] == bodies
        assert client.response().body == HELLO


@pytest.mark.needs("pipelining")
def test_nothing_after_connection_close_is_processed(server: RunningServer) -> None:
    with HttpClient(server) as client:
        client.send(post_echo(b"first", "Connection: close") + post_echo(b"second"))
        assert client.response().body == b"first"
        assert client.is_closed_by_server()


@pytest.mark.needs("expect_continue")
def test_expect_100_continue_gets_an_interim_response_before_the_body(server: RunningServer) -> None:
    body = b"x" * 1000
    with HttpClient(server) as client:
        head = post_echo(b"", "Expect: 100-continue").replace(b"Content-Length: 0", b"Content-Length: 1000")
        client.send(head)
        assert client.file.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert client.file.readline() == b"\r\n"
        client.send(body)
        response = client.response()
    assert response.status == 200 and response.body == body


@pytest.mark.needs("expect_continue")
def test_no_100_continue_for_http10_clients(server: RunningServer) -> None:
    with HttpClient(server) as client:
        client.send(b"POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        assert not client.answer_arrives(within=0.3), "an HTTP/1.0 client got an interim response"
        client.send(b"abc")
        response = client.response()
    assert response.status == 200 and response.body == b"abc"


# --- bad input: the right status, a clean close, and the server lives on ---------------------------

BAD_REQUESTS = {
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    "no-version": (b"GET /\r\nHost: t\r\n\r\n", 400),
    "http-2-version": (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    "lowercase-version": (b"GET / http/1.1\r\nHost: t\r\n\r\n", 400),
    "missing-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n folded\r\n\r\n", 400),
    "bare-cr-in-header": (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n", 400),
    "signed-content-length": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc", 400),
    "hex-content-length": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    "underscore-content-length": (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1_0\r\n\r\n", 400),
    "differing-content-lengths": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "bad-chunk-size": (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    "chunk-size-with-0x": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n",
        400,
    ),
    "huge-chunk-size": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 40 + b"\r\n",
        400,
    ),
    # RFC 9112 §6.1: a transfer coding we do not implement is 501, but chunked missing from the end of the
    # list leaves the length undeterminable, which MUST be 400.
    "unknown-transfer-coding": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        501,
    ),
    "chunked-not-last": (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_its_status_then_a_clean_close(server: RunningServer, name: str) -> None:
    request, status = BAD_REQUESTS[name]
    with HttpClient(server) as client:
        client.send(request)
        response = client.response()
        assert response.status == status
        assert response.header("Connection") == "close"
        assert client.is_closed_by_server()
    with HttpClient(server) as client:  # the next client is served as if nothing happened
        client.send(get("/"))
        assert client.response().body == HELLO


def test_error_response_survives_unread_garbage_behind_it(server: RunningServer) -> None:
    """We close after an error, with the client's unread bytes still in our receive buffer. A plain close()
    would answer them with a RST that can destroy our 400 before the client reads it; the server half-closes
    and drains instead, so the response always arrives."""
    with HttpClient(server) as client:
        client.send(b"BROKEN\r\n\r\n" + os.urandom(512 * 1024))
        response = client.response()
        assert response.status == 400


@pytest.mark.parametrize(
    ("name", "request_bytes"),
    [
        (
            "cl-te",  # a front end trusting Content-Length would pass the rest as a request of its own
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        (
            "te-cl",  # a back end trusting Content-Length would read SMUGGLED as the next request
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"8\r\nSMUGGLED\r\n0\r\n\r\n",
        ),
        (
            "te-obfuscated",
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
    ],
)
def test_smuggling_vectors_never_yield_a_second_request(
    server: RunningServer, name: str, request_bytes: bytes
) -> None:
    with HttpClient(server) as client:
        client.send(request_bytes)
        response = client.response()
        assert response.status in (200, 400, 501)
        assert response.header("Connection") == "close", (
            "a request with both framings must close the connection"
        )
        assert client.is_closed_by_server(), f"{name}: the server kept reading after an ambiguous framing"


# --- limits ----------------------------------------------------------------------------------------


@pytest.mark.needs("http_limits")
def test_limits_have_defaults_and_command_line_options(start_server: Callable[..., RunningServer]) -> None:
    server = start_server(
        "--max-request-line", "100", "--max-header-bytes", "600", "--max-header-count", "10",
        "--max-body-bytes", "1000",
    )  # fmt: skip
    cases = [
        (get("/" + "a" * 200), 414),
        (get("/", *[f"X-Header-{index}: v" for index in range(20)]), 431),
        (get("/", "X-Big: " + "v" * 700), 431),
        (post_echo(b"x" * 1001), 413),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(b"x" * 1001, 100),
            413,
        ),
    ]
    for request, status in cases:
        with HttpClient(server) as client:
            client.send(request)
            response = client.response()
            assert response.status == status, request[:60]
            assert client.is_closed_by_server()
    with HttpClient(server) as client:  # requests inside the limits still pass
        client.send(post_echo(b"x" * 1000, *[f"X-Header-{index}: v" for index in range(5)]))
        assert client.response().body == b"x" * 1000


@pytest.mark.needs("http_limits")
def test_default_limits_reject_an_oversized_header_section(server: RunningServer) -> None:
    with HttpClient(server) as client:
        client.send(get("/", "X-Big: " + "v" * (1024 * 1024)))
        assert client.response().status == 431


# --- timeouts --------------------------------------------------------------------------------------


@pytest.mark.needs("http_timeouts")
def test_slowloris_is_cut_off_by_the_header_timeout(start_server: Callable[..., RunningServer]) -> None:
    server = start_server("--header-timeout", "0.5", "--idle-timeout", "30")
    with HttpClient(server) as client:
        started = time.monotonic()
        request = get("/", *[f"X-Slow-{index}: v" for index in range(100)])
        for byte in request:  # a byte every 50 ms: each one is "activity", none of them finishes the head
            try:
                client.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            if client.answer_arrives(within=0.05):
                break
            assert time.monotonic() - started < 5, "the header timeout never fired"
        response = client.response()
        assert response.status == 408
        assert client.is_closed_by_server()
        assert time.monotonic() - started >= 0.5


@pytest.mark.needs("http_timeouts")
def test_idle_keep_alive_connection_is_closed_silently(start_server: Callable[..., RunningServer]) -> None:
    server = start_server("--idle-timeout", "0.5")
    with HttpClient(server) as client:
        client.send(get("/"))
        assert client.response().body == HELLO
        started = time.monotonic()
        assert client.is_closed_by_server(within=5)  # EOF with no bytes: no 408 to an idle connection
        assert time.monotonic() - started >= 0.4


# --- clients that vanish, and many clients ---------------------------------------------------------


@pytest.mark.parametrize(
    "partial",
    [b"GE", b"GET / HTTP/1.1\r\nHost: t\r\n", post_echo(b"x" * 100_000)[:50_000], b"POST /echo HTTP/1.1\r\n"],
    ids=["in-request-line", "in-headers", "in-body", "after-request-line"],
)
def test_client_reset_at_any_stage_leaves_the_server_serving(server: RunningServer, partial: bytes) -> None:
    baseline = _open_fds_after_probe(server)
    for _ in range(5):
        sock = server.connect()
        sock.sendall(partial)
        reset(sock)
    # reset while the server is writing a large response that the client never reads
    sock = server.connect()
    sock.sendall(post_echo(os.urandom(4 * 1024 * 1024)))
    reset(sock)
    # An answered probe shows the resets were handled only if the loop that answered it saw them too: with
    # worker processes another worker may still be closing one, so the count gets a few seconds to settle.
    deadline = time.monotonic() + 5
    while (count := _open_fds_after_probe(server)) != baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count == baseline


def _open_fds_after_probe(server: RunningServer) -> int:
    with HttpClient(server) as client:
        client.send(get("/"))
        assert client.response().body == HELLO
        return server.open_fds()


@pytest.mark.needs("keep_alive")
def test_a_thousand_concurrent_keep_alive_clients(server: RunningServer) -> None:
    async def one_client(index: int, everyone_connected: asyncio.Event, connected: list[int]) -> list[bytes]:
        tls = server.client_tls  # through TLS if the server speaks it
        name = server.host if tls is not None else None
        reader, writer = await asyncio.open_connection(*server.address, ssl=tls, server_hostname=name)
        connected.append(index)
        if len(connected) == 1000:
            everyone_connected.set()
        await everyone_connected.wait()
        bodies = []
        for round_number in range(3):
            body = f"client {index} round {round_number}".encode()
            writer.write(post_echo(body))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
            assert length is not None
            bodies.append(await reader.readexactly(int(length.group(1))))
        writer.close()
        await writer.wait_closed()
        return bodies

    async def everyone() -> list[list[bytes]]:
        everyone_connected = asyncio.Event()
        connected: list[int] = []
        return await asyncio.gather(
            *(one_client(index, everyone_connected, connected) for index in range(1000))
        )

    results = asyncio.run(asyncio.wait_for(everyone(), timeout=60))
    assert results == [[f"client {i} round {r}".encode() for r in range(3)] for i in range(1000)]


@pytest.mark.needs("max_connections")
def test_clients_past_max_connections_wait_for_a_free_slot(
    start_server: Callable[..., RunningServer], phase: Phase
) -> None:
    # The limit is per worker: with two, a third client would find a free slot in the other. One worker
    # keeps this test's meaning (conftest.py gives a phase with workers two unless told otherwise).
    one_worker = ("--workers", "1") if "multi_process" in phase.capabilities else ()
    server = start_server("--max-connections", "2", *one_worker)
    first, second = HttpClient(server), HttpClient(server)
    for client in (first, second):
        client.send(get("/"))
        assert client.response().body == HELLO
    # The third waits in the listen queue, its request unanswered (through TLS, its handshake unfinished):
    # in a thread, which connects, asks and reads as far as it can.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        third = pool.submit(ask, server, get("/"))
        done, _ = concurrent.futures.wait([third], timeout=0.5)
        assert not done, "served past --max-connections 2"
        first.close()
        assert third.result(timeout=10).body == HELLO
    second.close()


@pytest.mark.needs("pipelining", "trigger_modes")
def test_edge_triggered_mode_serves_pipelines_and_large_bodies(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server("--trigger", "edge")
    body = os.urandom(1024 * 1024)
    with HttpClient(server) as client:
        client.send(post_echo(body) + get("/") * 50)
        assert client.response().body == body
        assert [client.response().body for _ in range(50)] == [HELLO] * 50


@pytest.mark.needs("pipelining", "trigger_modes", "static_files")
def test_edge_triggered_mode_serves_a_pipeline_of_files(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """Each file answer's head must be sent, or wait for an event that will come: edge-triggered epoll reports
    only a change, so a head queued behind an EPOLLOUT already watched, with the socket writable all along,
    would wait for ever."""
    (tmp_path / "a.txt").write_bytes(b"a" * 100)
    (tmp_path / "big.bin").write_bytes(os.urandom(4 * 1024 * 1024))  # far past the socket's buffers
    server = start_server("--trigger", "edge", "--static-dir", str(tmp_path))
    paths = ["/static/a.txt", "/static/big.bin", "/static/a.txt", "/static/a.txt", "/static/big.bin", "/"]
    with HttpClient(server) as client:
        client.send(b"".join(get(path) for path in paths))
        statuses = [client.response().status for _ in paths]  # a stall raises TimeoutError here
    assert statuses == [200] * len(paths)
