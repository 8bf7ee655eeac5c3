"""Unit tests of the sans-I/O HTTP/1.1 parser and response renderer (`protocol.py`), with plain bytes.

Every request is parsed four ways: whole, split in two at every offset, one byte at a time, and through the
zero-copy `receive_buffer()` path; all four must give the same requests and the same error. Valid requests
are also parsed pipelined and followed by garbage, which must not change them.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import h11
import pytest

from conftest import Phase

pytestmark = pytest.mark.needs("http")

Outcome = tuple[list[Any], int | None]  # (the requests parsed, the status of the error that ended it or None)
EVERY_OFFSET_UP_TO = 2048  # split inputs longer than this at sampled offsets only, to stay quick


@pytest.fixture
def protocol(phase: Phase) -> ModuleType:
    return phase.import_module("protocol")


def run(protocol: ModuleType, chunks: Iterable[bytes], limits: Any = None, via_view: bool = False) -> Outcome:
    """Deliver `chunks` one after the other, parsing after each; stop at the first error."""
    parser = protocol.RequestParser(limits)
    requests: list[Any] = []
    for chunk in chunks:
        if via_view:
            done = 0
            while done < len(chunk):
                with parser.receive_buffer() as view:
                    size = min(len(view), len(chunk) - done)
                    view[:size] = chunk[done : done + size]
                parser.received(size)
                done += size
        else:
            parser.feed(chunk)
        try:
            while (request := parser.next_request()) is not None:
                requests.append(request)
        except protocol.HttpError as error:
            assert not parser.has_partial_request
            with pytest.raises(protocol.HttpError):  # an error is final
                parser.next_request()
            return requests, error.status
    return requests, None


def outcome(protocol: ModuleType, data: bytes, limits: Any = None) -> Outcome:
    """The outcome of parsing `data`, after checking that every way of splitting it gives the same one."""
    whole = run(protocol, [data], limits)
    assert run(protocol, [data[i : i + 1] for i in range(len(data))], limits) == whole, "one byte at a time"
    assert run(protocol, [data[i : i + 997] for i in range(0, len(data), 997)], limits, True) == whole
    step = 1 if len(data) <= EVERY_OFFSET_UP_TO else len(data) // 256
    for offset in range(1, len(data), step):
        assert run(protocol, [data[:offset], data[offset:]], limits) == whole, f"split at {offset}"
    return whole


def parse_one(protocol: ModuleType, data: bytes, limits: Any = None) -> Any:
    """The one request in `data`, which must be complete and valid, checked whole, split and pipelined."""
    requests, status = outcome(protocol, data, limits)
    assert status is None and len(requests) == 1, (requests, status)
    request = requests[0]
    if request.keep_alive:
        assert run(protocol, [data * 3], limits) == ([request] * 3, None), "pipelined"
        assert run(protocol, [data + b"\x16\x03\x01 not http\r\n\r\n"], limits) == ([request], 400)
    else:  # bytes after a request that closes the connection are never parsed
        assert run(protocol, [data + b"\x16\x03\x01 not http\r\n\r\n"], limits) == ([request], None)
        assert run(protocol, [data * 2], limits) == ([request], None)
    return request


def status_of(protocol: ModuleType, data: bytes, limits: Any = None) -> int | None:
    requests, status = outcome(protocol, data, limits)
    assert requests == []
    return status


def get(*fields: str, version: str = "1.1", target: str = "/") -> bytes:
    return f"GET {target} HTTP/{version}\r\n{''.join(f + chr(13) + chr(10) for f in fields)}\r\n".encode()


def post(*fields: str, body: bytes = b"") -> bytes:
    return (
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\n"
        + "".join(f"{field}\r\n" for field in fields).encode()
        + b"\r\n"
        + body
    )


# ---------------------------------------------------------------------------------------------------- valid


def test_simple_get(protocol: ModuleType) -> None:
    request = parse_one(protocol, get("Host: example.com", "Accept: */*", target="/hello?name=x"))
    assert (request.method, request.target, request.version) == ("GET", "/hello?name=x", "HTTP/1.1")
    assert request.headers == [("host", "example.com"), ("accept", "*/*")]
    assert request.body == b"" and request.trailers == []
    assert request.keep_alive and not request.is_head and not request.expects_continue
    assert request.header("accept") == "*/*" and request.header("cookie") is None


def test_field_values_lose_their_ows_and_keep_everything_else(protocol: ModuleType) -> None:
    request = parse_one(
        protocol,
        b"GET / HTTP/1.1\r\nHost:example.com\r\nX-Spaced: \t a \t b \t\r\nX-Empty:\r\nX-Blank:   \r\n"
        b"X-Latin: caf\xe9\r\nMiXeD-CaSe: KeepsCase\r\n\r\n",
    )
    assert request.headers == [
        ("host", "example.com"),
        ("x-spaced", "a \t b"),
        ("x-empty", ""),
        ("x-blank", ""),
        ("x-latin", "café"),  # obs-text, decoded as latin-1: every byte maps to one character
        ("mixed-case", "KeepsCase"),
    ]


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/"),
        ("GET", "/a/b%20c?q=1&r=/x?y#frag"),
        (
            "GET",
            "http://example.com/path?q",
        ),  # absolute-form, which RFC 9112 §3.2.2 says a server MUST accept
        ("OPTIONS", "*"),
        ("OPTIONS", "/"),
        ("DELETE", "/item/7"),
        ("X-CUSTOM.METHOD~1", "/"),  # any token is a method; the application decides if it implements it
    ],
)
def test_request_targets_and_methods(protocol: ModuleType, method: str, target: str) -> None:
    request = parse_one(protocol, f"{method} {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert (request.method, request.target) == (method, target)


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/", "/"),
        ("/a/b%20c?q=1&r=/x?y", "/a/b%20c"),
        ("http://example.com/path?q", "/path"),
        ("http://example.com", "/"),
        ("http://example.com?q", "/"),
        ("http://example.com?q=/not/the/path", "/"),
        ("*", "*"),
    ],
)
def test_request_path_drops_the_query_and_an_absolute_form_authority(
    protocol: ModuleType, target: str, path: str
) -> None:
    request = parse_one(protocol, f"OPTIONS {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    assert request.path == path


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("HTTP://Example.com/x", "/x"),  # the scheme is case-insensitive (RFC 3986 §3.1)
        ("https://h:8443/a/b?c", "/a/b"),
        ("http://[::1]:8080/v6", "/v6"),
        ("http://[v1.fe80::a+en1]/future", "/future"),  # IPvFuture (RFC 3986 §3.2.2)
        ("http://h/p@q", "/p@q"),  # "@" in the path is no userinfo
    ],
)
def test_valid_absolute_form_targets(protocol: ModuleType, target: str, path: str) -> None:
    assert parse_one(protocol, get("Host: h", target=target)).path == path


@pytest.mark.parametrize(
    "target",
    [
        "http://[/",  # these two used to crash the server: urlsplit raised ValueError on request.path
        "http://[zz]/",
        "http://[::1/",
        "http://[fe80::1%25eth0]/",  # a zone ID is no part of RFC 3986's IPv6address
        "http://user@host/",  # RFC 9110 §4.2.4: userinfo in an http URI is an error
        "http:///no-host",  # RFC 9110 §4.2.1: an empty host MUST be rejected
        "http:/one-slash",
        "ftp://host/file",  # an origin server serves http and https only
        "http://host/#fragment",  # RFC 9112 §3.2: no fragment in a request-target
        "mailto:someone",
    ],
)
def test_invalid_absolute_form_targets_are_400(protocol: ModuleType, target: str) -> None:
    assert status_of(protocol, get("Host: h", target=target)) == 400


@pytest.mark.parametrize("host", ["[zz]", "[::1", "[fe80::1%eth0]", "a b", "h:8o"])
def test_invalid_host_values_are_400(protocol: ModuleType, host: str) -> None:
    assert status_of(protocol, get(f"Host: {host}")) == 400


def test_empty_lines_before_a_request_line_are_ignored(protocol: ModuleType) -> None:
    request = parse_one(protocol, b"\r\n\r\n" + get("Host: h"))
    assert request.target == "/"


def test_a_few_empty_lines_are_tolerated_and_more_are_400(protocol: ModuleType) -> None:
    tolerated = protocol.MAX_EMPTY_LINES
    assert parse_one(protocol, b"\r\n" * tolerated + get("Host: h")).target == "/"
    assert status_of(protocol, b"\r\n" * (tolerated + 1) + get("Host: h")) == 400


def test_an_empty_line_starts_a_head(protocol: ModuleType) -> None:
    """The header timeout runs while `reading_head`: an empty line counts, or CRLFs sent one a minute
    would hold a connection open for ever without ever starting the clock."""
    parser = protocol.RequestParser()
    assert not parser.reading_head
    parser.feed(b"\r\n")
    assert parser.next_request() is None
    assert parser.reading_head
    parser.feed(get("Host: h"))
    assert parser.next_request() is not None
    assert not parser.reading_head


def test_reading_body_is_true_from_the_head_to_the_end_of_the_body(protocol: ModuleType) -> None:
    for framing, body in (
        ("Content-Length: 5", b"hello"),
        ("Transfer-Encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n"),
    ):
        parser = protocol.RequestParser()
        parser.feed(post(framing))
        assert parser.next_request() is None
        assert parser.reading_body and not parser.reading_head
        parser.feed(body[:-1])
        assert parser.next_request() is None and parser.reading_body
        parser.feed(body[-1:])
        assert parser.next_request().body == b"hello"
        assert not parser.reading_body


@pytest.mark.parametrize(
    ("fields", "version", "keep_alive"),
    [
        ((), "1.1", True),
        (("Connection: close",), "1.1", False),
        (("Connection: Upgrade, CLOSE",), "1.1", False),
        (("Connection: keep-alive",), "1.1", True),
        (("Connection: foo", "Connection: close"), "1.1", False),
        ((), "1.0", False),
        (("Connection: keep-alive",), "1.0", True),
        (("Connection: Keep-Alive , other",), "1.0", True),
        (("Connection: keep-alive, close",), "1.0", False),
        ((), "1.5", True),  # RFC 9112 §2.3: a higher 1.x minor version is processed as 1.1
    ],
)
def test_persistence(protocol: ModuleType, fields: tuple[str, ...], version: str, keep_alive: bool) -> None:
    request = parse_one(protocol, get("Host: h", *fields, version=version))
    assert request.keep_alive is keep_alive
    assert request.version == ("HTTP/1.0" if version == "1.0" else "HTTP/1.1")


def test_http10_needs_no_host(protocol: ModuleType) -> None:
    assert parse_one(protocol, get(version="1.0")).headers == []


def test_bytes_after_a_close_request_are_never_parsed(protocol: ModuleType) -> None:
    parser = protocol.RequestParser()
    parser.feed(get("Host: h", "Connection: close") + b"\x00 garbage that would be a 400\r\n\r\n")
    assert parser.next_request().keep_alive is False
    assert parser.next_request() is None
    parser.feed(get("Host: h"))
    assert parser.next_request() is None
    assert not parser.has_partial_request


@pytest.mark.parametrize(
    ("fields", "body"),
    [
        (("Content-Length: 0",), b""),
        (("Content-Length: 5",), b"hello"),
        (("Content-Length: 5, 5",), b"hello"),  # RFC 9112 §6.3: the same value repeated is that value
        (("Content-Length: 5", "content-length: 005"), b"hello"),
        (("Content-Length:  5 ",), b"hello"),
        (("Transfer-Encoding: chunked",), b"5\r\nhello\r\n0\r\n\r\n"),
        (("Transfer-Encoding: Chunked",), b"5\r\nhello\r\n0\r\n\r\n"),
        (("Transfer-Encoding: chunked",), b"0\r\n\r\n"),
        (("Transfer-Encoding: chunked",), b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"),
        (("Transfer-Encoding: chunked",), b"00005\r\nhello\r\n000\r\n\r\n"),
        (("Transfer-Encoding: chunked",), b"A\r\nhello worl\r\n0\r\n\r\n"),
        (("Transfer-Encoding: chunked",), b'5;name\r\nhello\r\n0;a=b;c="q \\" d"\r\n\r\n'),
        (("Transfer-Encoding: chunked",), b"5 ; name = value\r\nhello\r\n0\r\n\r\n"),  # BWS is allowed
    ],
)
def test_bodies(protocol: ModuleType, fields: tuple[str, ...], body: bytes) -> None:
    assert parse_one(protocol, post(*fields, body=body)).body in (b"hello", b"", b"hello worl")


def test_chunked_trailers(protocol: ModuleType) -> None:
    data = post("Transfer-Encoding: chunked", body=b"3\r\nabc\r\n0\r\nChecksum: 42\r\nX-More:  x \r\n\r\n")
    request = parse_one(protocol, data)
    assert request.body == b"abc"
    assert request.trailers == [("checksum", "42"), ("x-more", "x")]


def test_one_mebibyte_bodies_are_accepted_by_default(protocol: ModuleType) -> None:
    body = bytes(range(256)) * 4096
    chunked = (
        b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:1000], body[1000:])) + b"0\r\n\r\n"
    )
    for data in (
        post(f"Content-Length: {len(body)}", body=body),
        post("Transfer-Encoding: chunked", body=chunked),
    ):
        for via_view in (False, True):
            (request,), status = run(
                protocol, [data[i : i + 65536] for i in range(0, len(data), 65536)], None, via_view
            )
            assert status is None and request.body == body


def test_pipelined_requests_come_out_in_order(protocol: ModuleType) -> None:
    data = (
        get("Host: h", target="/1")
        + post("Content-Length: 2", body=b"hi")
        + post("Transfer-Encoding: chunked", body=b"1\r\nx\r\n0\r\n\r\n")
        + b"HEAD /4 HTTP/1.1\r\nHost: h\r\n\r\n"
        + get("Host: h", "Connection: close", target="/5")
        + get("Host: h", target="/never")
    )
    requests, status = outcome(protocol, data)
    assert status is None
    assert [(r.method, r.target, r.body) for r in requests] == [
        ("GET", "/1", b""),
        ("POST", "/upload", b"hi"),
        ("POST", "/upload", b"x"),
        ("HEAD", "/4", b""),
        ("GET", "/5", b""),
    ]
    assert requests[3].is_head


def test_has_partial_request(protocol: ModuleType) -> None:
    parser = protocol.RequestParser()
    assert not parser.has_partial_request
    parser.feed(b"GET / HT")
    assert parser.next_request() is None and parser.has_partial_request
    parser.feed(b"TP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n")
    assert parser.next_request() is None and parser.has_partial_request  # head parsed, body pending
    parser.feed(b"ok")
    assert parser.next_request().body == b"ok"
    assert not parser.has_partial_request


# ------------------------------------------------------------------------------------------- 100-continue


def test_expect_continue_is_due_once_between_head_and_body(protocol: ModuleType) -> None:
    for framing, body in (
        ("Content-Length: 5", b"hello"),
        ("Transfer-Encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n"),
    ):
        parser = protocol.RequestParser()
        parser.feed(post(framing, "Expect: 100-Continue"))
        assert not parser.take_continue()  # nothing is due before the head is parsed
        assert parser.next_request() is None
        assert parser.take_continue()
        assert not parser.take_continue()  # once
        parser.feed(body)
        request = parser.next_request()
        assert request.expects_continue and request.body == b"hello"
        assert not parser.take_continue()


def test_no_continue_when_the_body_is_already_here_or_the_client_speaks_http10(protocol: ModuleType) -> None:
    parser = protocol.RequestParser()
    parser.feed(post("Content-Length: 5", "Expect: 100-continue", body=b"hello"))
    assert parser.next_request().expects_continue
    assert not parser.take_continue()
    parser = protocol.RequestParser()
    parser.feed(b"POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert parser.next_request() is None
    assert not parser.take_continue()  # RFC 9110 §10.1.1: MUST ignore it in an HTTP/1.0 request
    parser.feed(b"hello")
    assert not parser.next_request().expects_continue


def test_no_continue_when_part_of_a_chunked_body_came_with_the_head(protocol: ModuleType) -> None:
    parser = protocol.RequestParser()
    parser.feed(post("Transfer-Encoding: chunked", "Expect: 100-continue", body=b"5\r\nhel"))
    assert parser.next_request() is None
    assert not parser.take_continue()  # the client did not wait for us: too late to tell it to go on


def test_a_continue_not_taken_is_no_longer_due_once_the_request_is_complete(protocol: ModuleType) -> None:
    parser = protocol.RequestParser()
    parser.feed(post("Content-Length: 5", "Expect: 100-continue"))
    assert parser.next_request() is None  # due now, but the server does not take it...
    parser.feed(b"hello")
    assert parser.next_request().body == b"hello"
    assert not parser.take_continue()  # ...and after the body, a 100 would answer nothing


def test_other_expectations_are_ignored(protocol: ModuleType) -> None:
    assert not parse_one(protocol, post("Content-Length: 1", "Expect: something", body=b"x")).expects_continue


# -------------------------------------------------------------------------------------------------- invalid

INVALID = [
    # request line (RFC 9112 §3)
    (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400),
    (b" GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET / http/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET / HTTP/1\r\nHost: h\r\n\r\n", 400),
    (b"GET / HTTP/1.10\r\nHost: h\r\n\r\n", 400),
    (b"GET /\r\nHost: h\r\n\r\n", 400),
    (b"GET\r\n\r\n", 400),
    (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET /caf\xe9 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET /\x00 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET relative HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    (b"GET / HTTP/0.9\r\nHost: h\r\n\r\n", 505),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS ClientHello
    # bare LF and bare CR (RFC 9112 §2.2)
    (b"GET / HTTP/1.1\nHost: h\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\n\r\n\r\n", 400),
    (b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET /\r HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\r\r\n\r\n", 400),
    # field lines (RFC 9112 §5, RFC 9110 §5.5)
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tfolded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost\t: h\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nNo colon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\n: no name\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX(Y): z\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x0bb\r\n\r\n", 400),
    # Host (RFC 9112 §3.2)
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", 400),
]

# --8<-- [start:smuggling]
SMUGGLING = [
    # Content-Length must be 1*DIGIT (RFC 9110 §8.6): signs, 0x, 1_0 and other scripts' digits all pass
    # Python's int(); the others are what a lax reader might trim, split or round
    ("Content-Length: +5", b"hello", 400),
    ("Content-Length: -5", b"hello", 400),
    ("Content-Length: 0x5", b"hello", 400),
    ("Content-Length: 1_0", b"helloworld", 400),
    ("Content-Length: 5 5", b"hello", 400),
    ("Content-Length: \xb2", b"he", 400),  # SUPERSCRIPT TWO: str.isdigit() alone would say yes
    ("Content-Length: \xd9\xa5", b"hello", 400),  # ARABIC-INDIC DIGIT FIVE in UTF-8
    ("Content-Length: 5.0", b"hello", 400),
    ("Content-Length:", b"", 400),
    ("Content-Length: 5,", b"hello", 400),
    ("Content-Length: 5, 6", b"hello", 400),
    ("Content-Length: 5\r\nContent-Length: 6", b"hello", 400),
    ("Content-Length: 99999999999999999999999", b"", 413),
    # CL.TE and TE.CL: both framings in one request (RFC 9112 §6.1: we reject)
    ("Content-Length: 6\r\nTransfer-Encoding: chunked", b"0\r\n\r\nG", 400),
    ("Transfer-Encoding: chunked\r\nContent-Length: 3", b"8\r\nSMUGGLED\r\n0\r\n\r\n", 400),
    # Transfer-Encoding whose final coding is not chunked (§6.3: 400) or that we cannot decode (§6.1: 501)
    ("Transfer-Encoding: xchunked", b"0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked, gzip", b"0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked, chunked", b"0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", b"0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked;q=1", b"0\r\n\r\n", 400),
    ("Transfer-Encoding:", b"0\r\n\r\n", 400),
    ("Transfer-Encoding: , chunked", b"0\r\n\r\n", 400),
    ("Transfer-Encoding: gzip, chunked", b"0\r\n\r\n", 501),
    ("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked", b"0\r\n\r\n", 501),
    # chunk sizes (RFC 9112 §7.1: chunk-size = 1*HEXDIG), all accepted by int(x, 16) or a lax reader
    ("Transfer-Encoding: chunked", b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"+5\r\nhello\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"-5\r\nhello\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b" 5\r\nhello\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"5 \r\nhello\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"5_0\r\nhello\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"\r\nhello\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"g\r\nhello\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"00000000000000005\r\nhello\r\n0\r\n\r\n", 400),  # 17 digits
    ("Transfer-Encoding: chunked", b"5\nhello\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"5\r\nhello\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"5\r\nhelloX\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"3\r\nhello\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"5;\r\nhello\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"5;a=\r\nhello\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b'5;a="x\r\nhello\r\n0\r\n\r\n', 400),
    ("Transfer-Encoding: chunked", b"5;a b\r\nhello\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"ffffffffffffffff\r\nhello\r\n0\r\n\r\n", 413),
    # trailers are field lines too
    ("Transfer-Encoding: chunked", b"0\r\nX : y\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"0\r\nX: y\r\n folded\r\n\r\n", 400),
    ("Transfer-Encoding: chunked", b"0\r\nX: a\rb\r\n\r\n", 400),
]
# --8<-- [end:smuggling]


@pytest.mark.parametrize(("data", "status"), INVALID, ids=[repr(data)[2:40] for data, _ in INVALID])
def test_invalid_heads(protocol: ModuleType, data: bytes, status: int) -> None:
    assert status_of(protocol, data) == status


@pytest.mark.parametrize(
    ("fields", "body", "status"), SMUGGLING, ids=[f"{f!r}+{b!r}"[:50] for f, b, _ in SMUGGLING]
)
def test_smuggling_vectors(protocol: ModuleType, fields: str, body: bytes, status: int) -> None:
    data = b"POST / HTTP/1.1\r\nHost: h\r\n" + fields.encode("latin-1") + b"\r\n\r\n" + body
    assert status_of(protocol, data) == status
    # The same vector behind a valid request: the first request still comes out, unchanged.
    (first,), error = run(protocol, [get("Host: h") + data])
    assert (first.target, error) == ("/", status)


def test_transfer_encoding_in_http10_is_faulty_framing(protocol: ModuleType) -> None:
    assert status_of(protocol, b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == 400


def test_the_error_reason_says_what_is_wrong(protocol: ModuleType) -> None:
    cases = {
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n": "obsolete line folding",
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n": "whitespace between",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n": "bare CR",
        b"GET / HTTP/1.1\nHost: h\n\n": "bare LF",
    }
    for data, words in cases.items():
        parser = protocol.RequestParser()
        parser.feed(data)
        with pytest.raises(protocol.HttpError, match=words):
            parser.next_request()


# --------------------------------------------------------------------------------------------------- limits


def small_limits(protocol: ModuleType, **overrides: int) -> Any:
    return protocol.Limits(**overrides)


def test_default_limits(protocol: ModuleType) -> None:
    limits = protocol.Limits()
    assert (limits.max_request_line, limits.max_header_bytes, limits.max_header_count) == (8192, 16384, 100)
    assert limits.max_body_bytes == 8 * 1024 * 1024


def test_request_line_limit_414(protocol: ModuleType) -> None:
    limits = protocol.Limits(max_request_line=64)
    line = b"GET /" + b"a" * (64 - len(b"GET / HTTP/1.1") - 1)
    assert len(line + b" HTTP/1.1") == 63
    parse_one(protocol, line + b"a HTTP/1.1\r\nHost: h\r\n\r\n", limits)  # exactly 64 bytes
    assert status_of(protocol, line + b"aa HTTP/1.1\r\nHost: h\r\n\r\n", limits) == 414
    # Without waiting for a CRLF that may never come:
    assert run(protocol, [b"GET /" + b"a" * 100], limits) == ([], 414)


def test_header_bytes_limit_431(protocol: ModuleType) -> None:
    limits = protocol.Limits(max_header_bytes=100)
    field = "X: " + "v" * (100 - len("Host: h\r\n") - len("X: \r\n") - 2)  # 2: the final CRLF
    parse_one(protocol, get("Host: h", field), limits)
    assert status_of(protocol, get("Host: h", field + "v"), limits) == 431
    assert run(protocol, [b"GET / HTTP/1.1\r\nX: " + b"v" * 200], limits) == ([], 431)


def test_header_count_limit_431(protocol: ModuleType) -> None:
    limits = protocol.Limits(max_header_count=10)
    parse_one(protocol, get("Host: h", *[f"X-{i}: y" for i in range(9)]), limits)
    assert status_of(protocol, get("Host: h", *[f"X-{i}: y" for i in range(10)]), limits) == 431


def test_default_header_limits(protocol: ModuleType) -> None:
    fields = [f"X-{i}: {'v' * 100}" for i in range(99)]
    parse_one(protocol, get("Host: h", *fields))
    assert status_of(protocol, get("Host: h", *fields, "X-100: v")) == 431
    assert status_of(protocol, get("Host: h", "X: " + "v" * 16384)) == 431
    assert status_of(protocol, get("Host: h", target="/" + "a" * 8192)) == 414


def test_body_limit_413_in_both_framings(protocol: ModuleType) -> None:
    limits = protocol.Limits(max_body_bytes=10)
    assert parse_one(protocol, post("Content-Length: 10", body=b"0123456789"), limits).body == b"0123456789"
    # Content-Length is refused from the head alone, before any body byte is read.
    assert run(protocol, [post("Content-Length: 11")], limits) == ([], 413)
    chunked = b"5\r\n01234\r\n5\r\n56789\r\n0\r\n\r\n"
    assert parse_one(protocol, post("Transfer-Encoding: chunked", body=chunked), limits).body == b"0123456789"
    assert status_of(protocol, post("Transfer-Encoding: chunked", body=b"5\r\n01234\r\n6\r\n"), limits) == 413


def test_trailer_limits_431(protocol: ModuleType) -> None:
    limits = protocol.Limits(max_header_count=3, max_header_bytes=64)
    fields = ("Host: h", "Transfer-Encoding: chunked")
    ok = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"
    assert parse_one(protocol, ok, limits).trailers == [("a", "1"), ("b", "2"), ("c", "3")]
    assert (
        status_of(protocol, post(*fields[1:], body=b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"), limits)
        == 431
    )
    assert status_of(protocol, post(*fields[1:], body=b"0\r\nA: " + b"1" * 64 + b"\r\n\r\n"), limits) == 431


def test_trailer_byte_limit_applies_before_the_trailers_end(protocol: ModuleType) -> None:
    """Trailers that never end must be cut by the byte limit as they arrive, not once they are complete."""
    parser = protocol.RequestParser(protocol.Limits(max_header_bytes=1024))
    parser.feed(post("Transfer-Encoding: chunked", body=b"0\r\nX-Endless: "))
    assert parser.next_request() is None
    with pytest.raises(protocol.HttpError) as error:
        for _ in range(100):
            parser.feed(b"v" * 100)
            parser.next_request()
    assert error.value.status == 431


@pytest.mark.parametrize("after_data", [b"XY", b"\rX", b"\n\r", b"  "])
def test_chunk_data_must_be_followed_by_crlf(protocol: ModuleType, after_data: bytes) -> None:
    """The two bytes after chunk data are checked, not skipped: a parser that skips them reads a different
    message from these bytes than one that checks (a request smuggling vector)."""
    body = b"5\r\nhello" + after_data + b"0\r\n\r\n"
    assert status_of(protocol, post("Transfer-Encoding: chunked", body=body)) == 400


def test_chunk_line_limit(protocol: ModuleType) -> None:
    limits = protocol.Limits(max_chunk_line=16)
    body = b"5;" + b"e" * 14 + b"\r\nhello\r\n0\r\n\r\n"
    assert parse_one(protocol, post("Transfer-Encoding: chunked", body=body), limits).body == b"hello"
    assert run(protocol, [post("Transfer-Encoding: chunked", body=b"5;" + b"e" * 100)], limits) == ([], 400)


def test_chunk_extensions_count_against_the_body_limit(protocol: ModuleType) -> None:
    """Extensions mean nothing to the server, and each line is bounded, but a line per byte of body would let
    a client send megabytes for a few bytes: what a body's extensions add counts as body."""
    limits = protocol.Limits(max_body_bytes=1000)
    extended = b"1;" + b"e" * 98 + b"\r\nx\r\n"  # one byte of body, 100 bytes of size line
    within = post("Transfer-Encoding: chunked", body=extended * 9 + b"0\r\n\r\n")
    assert parse_one(protocol, within, limits).body == b"x" * 9
    beyond = post("Transfer-Encoding: chunked", body=extended * 11 + b"0\r\n\r\n")
    assert run(protocol, [beyond], limits) == ([], 413)
    # Each body has its own allowance: a second one on the same connection is not charged for the first's.
    assert [request.body for request in run(protocol, [within, within], limits)[0]] == [b"x" * 9] * 2


# --------------------------------------------------------------------------------------- resumable scanning


# --8<-- [start:never_rescans]
@pytest.mark.parametrize("size", [1_000, 4_000, 16_000])
def test_byte_at_a_time_never_rescans(protocol: ModuleType, size: int) -> None:
    """A quadratic parser searches ~size**2/2 bytes when fed one byte at a time; ours searches each byte a
    bounded number of times (the CRLFCRLF search steps back 3 bytes, for a terminator cut in two)."""
    fields = [f"X-{i}: {'v' * 40}" for i in range(size // 48)]
    head = get("Host: h", *fields)
    chunked_body = b"".join(b"1;ext=" + b"e" * 40 + b"\r\nx\r\n" for _ in range(size // 50)) + b"0\r\n"
    trailers = b"".join(f"T-{i}: {'v' * 40}\r\n".encode() for i in range(size // 48)) + b"\r\n"
    data = post("Transfer-Encoding: chunked", body=chunked_body + trailers)
    limits = protocol.Limits(max_header_bytes=32_000, max_header_count=1000)
    for message in (head, data):
        parser = protocol.RequestParser(limits)
        for offset in range(len(message)):
            parser.feed(message[offset : offset + 1])
            assert parser.next_request() is None or offset == len(message) - 1
        assert not parser.has_partial_request
        assert parser.scanned_bytes <= 5 * len(message)  # rescanning would be ~len(message) ** 2 / 2


# --8<-- [end:never_rescans]


def test_a_declared_body_takes_no_room_before_it_arrives(protocol: ModuleType) -> None:
    """Room follows the bytes received: a head that declares 8 MiB leaves the buffer as it was."""
    parser = protocol.RequestParser()
    parser.feed(post(f"Content-Length: {8 * 1024 * 1024}", body=b"x" * 100))
    assert parser.next_request() is None
    with parser.receive_buffer() as room:
        assert len(room) < 64 * 1024


def test_receive_buffer_is_reusable_and_grows_for_a_large_body(protocol: ModuleType) -> None:
    parser = protocol.RequestParser()
    body = b"b" * 300_000
    data = post(f"Content-Length: {len(body)}", body=body) + get("Host: h")
    received = 0
    requests = []
    while received < len(data):
        with parser.receive_buffer() as view:
            size = min(len(view), len(data) - received, 7000)
            view[:size] = data[received : received + size]
        parser.received(size)
        received += size
        while (request := parser.next_request()) is not None:
            requests.append(request)
    assert [r.body for r in requests] == [body, b""]
    with pytest.raises(ValueError):
        parser.received(10**9)


# ------------------------------------------------------------------------------------------------ responses


def parse_response(response: bytes, method: str = "GET") -> tuple[Any, bytes]:
    """Our response bytes as h11 (the client) reads them: (h11.Response, body)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "h")]))
    client.send(h11.EndOfMessage())
    client.receive_data(response)
    head = client.next_event()
    assert isinstance(head, h11.Response), head
    body = b""
    while isinstance(event := client.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage), event
    assert client.next_event() is h11.NEED_DATA  # nothing left over: the framing was exact
    return head, body


def request_for(protocol: ModuleType, data: bytes) -> Any:
    parser = protocol.RequestParser()
    parser.feed(data)
    return parser.next_request()


def test_render_response(protocol: ModuleType) -> None:
    request = request_for(protocol, get("Host: h"))
    response = protocol.render_response(request, 200, b"hello", content_type="text/html")
    head, body = parse_response(response)
    headers = dict(head.headers)
    assert (head.status_code, head.reason, body) == (200, b"OK", b"hello")
    assert headers[b"content-length"] == b"5" and headers[b"content-type"] == b"text/html"
    assert b"connection" not in headers
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")


def test_date_is_an_imf_fixdate_of_now(protocol: ModuleType) -> None:
    assert protocol.format_http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"  # RFC 9110 §5.6.7
    head, _ = parse_response(protocol.render_response(None, 200, b"x"))
    date = dict(head.headers)[b"date"].decode()
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", date)
    assert abs(email.utils.parsedate_to_datetime(date).timestamp() - time.time()) < 5


def test_date_is_formatted_once_per_second(protocol: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [784111777.25]
    monkeypatch.setattr(protocol.time, "time", lambda: now[0])
    first = protocol.date_line()
    now[0] += 0.5
    assert protocol.date_line() is first  # the same object: not formatted again
    now[0] += 0.5
    assert protocol.date_line() == "Date: Sun, 06 Nov 1994 08:49:38 GMT\r\n"


def test_head_response_keeps_content_length_without_body(protocol: ModuleType) -> None:
    request = request_for(protocol, b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    response = protocol.render_response(request, 200, b"hello")
    assert response.endswith(b"\r\n\r\n")
    head, body = parse_response(response, method="HEAD")
    assert dict(head.headers)[b"content-length"] == b"5" and body == b""


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses(protocol: ModuleType, status: int) -> None:
    request = request_for(protocol, get("Host: h"))
    response = protocol.render_response(request, status)
    assert b"Content-Length" not in response and response.endswith(b"\r\n\r\n")
    assert parse_response(response)[0].status_code == status
    with pytest.raises(ValueError):
        protocol.render_response(request, status, b"body")


def test_connection_header_follows_persistence(protocol: ModuleType) -> None:
    keep = request_for(protocol, get("Host: h"))
    close = request_for(protocol, get("Host: h", "Connection: close"))
    http10_keep = request_for(protocol, get("Connection: keep-alive", version="1.0"))
    http10 = request_for(protocol, get(version="1.0"))
    assert b"Connection" not in protocol.render_response(keep, 200)
    assert b"Connection: close\r\n" in protocol.render_response(keep, 200, close=True)
    assert b"Connection: close\r\n" in protocol.render_response(close, 200)
    assert b"Connection: close\r\n" in protocol.render_response(None, 200)
    assert b"Connection: close\r\n" in protocol.render_response(http10, 200)
    assert b"Connection: keep-alive\r\n" in protocol.render_response(http10_keep, 200)


def test_extra_headers_and_response_splitting(protocol: ModuleType) -> None:
    request = request_for(protocol, get("Host: h"))
    head, _ = parse_response(protocol.render_response(request, 405, headers=[("Allow", "GET, HEAD")]))
    assert (head.status_code, dict(head.headers)[b"allow"]) == (405, b"GET, HEAD")
    with pytest.raises(ValueError):
        protocol.render_response(request, 302, headers=[("Location", "/x\r\nSet-Cookie: a=b")])


def test_error_response_closes(protocol: ModuleType) -> None:
    response = protocol.error_response(protocol.HttpError(431, "header section too large"))
    head, body = parse_response(response)
    assert head.status_code == 431 and dict(head.headers)[b"connection"] == b"close"
    assert body == b"431 header section too large\n"


@pytest.mark.parametrize(
    ("status", "phrase"),
    [(200, "OK"), (404, "Not Found"), (408, "Request Timeout"), (413, "Content Too Large"),
     (414, "URI Too Long"), (416, "Range Not Satisfiable"), (431, "Request Header Fields Too Large"),
     (500, "Internal Server Error"),
     (505, "HTTP Version Not Supported")],
)  # fmt: skip
def test_status_lines_carry_rfc_9110_reason_phrases(protocol: ModuleType, status: int, phrase: str) -> None:
    response = protocol.error_response(protocol.HttpError(status, "why"))
    assert response.startswith(f"HTTP/1.1 {status} {phrase}\r\n".encode())


def test_continue_response(protocol: ModuleType) -> None:
    assert protocol.CONTINUE_RESPONSE == b"HTTP/1.1 100 Continue\r\n\r\n"
