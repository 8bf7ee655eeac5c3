"""Differential test: our parser against h11 (server role) on generated requests, valid and mutated.

Both must accept the same requests and read the same method, target, fields, body and trailers from them.
Where they disagree, one of the intentional differences below must explain it; each is a choice RFC 9112 or
RFC 9110 leaves to the recipient (or one where h11 is more lenient than the grammar), quoted in `reason`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Phase

pytestmark = pytest.mark.needs("http")

Outcome = tuple[str, Any]  # ("accepted", (method, target, fields, body, trailers)) or ("refused", None)


@dataclass(frozen=True)
class Difference:
    name: str
    reason: str  # the RFC sentence that allows our choice
    applies: Callable[[bytes], bool]  # does this input exhibit it?


def _head(data: bytes) -> bytes:
    """The bytes up to the first CRLFCRLF: where a difference in the head can be (bodies are not searched)."""
    return data.split(b"\r\n\r\n", 1)[0]


def _request_line_parts(data: bytes) -> list[bytes]:
    return re.split(rb"[\r\n]", data, maxsplit=1)[0].split(b" ")


def _field_values(data: bytes, name: bytes) -> list[bytes]:
    return [m.strip(b" \t") for m in re.findall(rb"(?im)^" + name + rb":(.*?)\r?$", _head(data))]


def _bad_host(data: bytes) -> bool:
    host = re.compile(rb"(?:\[([0-9A-Za-z:.\-_~!$&'()*+,;=]+)\]|[0-9A-Za-z.\-_~!$&'()*+,;=%]*)(:[0-9]*)?")
    return any(_bad_host_value(host.fullmatch(value)) for value in _field_values(data, b"host"))


def _bad_host_value(match: re.Match[bytes] | None) -> bool:
    """No uri-host [":" port], or an IP-literal that is neither an IPv6 address nor an IPvFuture."""
    if match is None:
        return True
    literal = match.group(1)
    if literal is None or re.fullmatch(rb"[vV][0-9A-Fa-f]+\..+", literal):
        return False
    try:
        ipaddress.IPv6Address(literal.decode())
    except ValueError:
        return True
    return b"%" in literal


def _bad_target(data: bytes) -> bool:
    parts = _request_line_parts(data)
    return len(parts) == 3 and not parts[1].startswith(b"/")


# --8<-- [start:differences]
DIFFERENCES = [
    Difference(
        "bare LF",
        "RFC 9112 §2.2: 'a recipient MAY recognize a single LF as a line terminator' "
        "(MAY: we do not; h11 does)",
        lambda data: re.search(rb"(?<!\r)\n", data) is not None,
    ),
    Difference(
        "obs-fold",
        "RFC 9112 §5.2: a server that receives an obs-fold 'MUST either reject the message by sending a "
        "400 (Bad Request) ... or replace each received obs-fold with one or more SP octets' "
        "(we reject; h11 unfolds)",
        lambda data: re.search(rb"\n[ \t]", data) is not None,
    ),
    Difference(
        "control characters",
        "RFC 9110 §5.5: 'Field values containing other CTL characters are also invalid; however, "
        "recipients MAY retain such characters for the sake of robustness' (h11 retains them; we reject)",
        lambda data: re.search(rb"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]", data) is not None,
    ),
    Difference(
        "leading empty line",
        "RFC 9112 §2.2: a server 'SHOULD ignore at least one empty line (CRLF) received prior to the "
        "request-line' (we do; h11 refuses it)",
        lambda data: data.startswith((b"\r\n", b"\n")),
    ),
    Difference(
        "request-target form",
        "RFC 9112 §3.2: request-target = origin-form / absolute-form / authority-form / asterisk-form, and "
        "§3: 'Recipients of an invalid request-line SHOULD respond with either a 400' (h11 takes any VCHARs)",
        _bad_target,
    ),
    Difference(
        "HTTP major version",
        "RFC 9110 §15.6.6: 505 'indicates that the server does not support, or refuses to support, the "
        "major version of HTTP that was used in the request message' (h11 accepts any DIGIT.DIGIT)",
        lambda data: re.match(rb"\S+ \S+ HTTP/(?!1\.)", data) is not None,
    ),
    Difference(
        "Host value",
        "RFC 9112 §3.2: a server MUST respond 400 to 'a Host header field with an invalid field value' (h11 "
        "does not check the value)",
        _bad_host,
    ),
    Difference(
        "CONNECT",
        "RFC 9110 §9.1: 'An origin server that receives a request method that is unrecognized or not "
        "implemented SHOULD respond with the 501 (Not Implemented) status code' "
        "(we are no proxy; h11 parses it)",
        lambda data: data.startswith(b"CONNECT "),
    ),
    Difference(
        "Content-Length and Transfer-Encoding",
        "RFC 9112 §6.1: 'A server MAY reject a request that contains both Content-Length and "
        "Transfer-Encoding or process such a request in accordance with the Transfer-Encoding alone' "
        "(we reject; h11 processes)",
        lambda data: bool(
            _field_values(data, b"content-length") and _field_values(data, b"transfer-encoding")
        ),
    ),
    Difference(
        "Transfer-Encoding in HTTP/1.0",
        "RFC 9112 §6.1: a server that receives an HTTP/1.0 message containing Transfer-Encoding 'MUST treat "
        "the message as if the framing is faulty' (h11 decodes it)",
        lambda data: b"HTTP/1.0" in _head(data) and bool(_field_values(data, b"transfer-encoding")),
    ),
    Difference(
        "chunk extensions",
        'RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ) '
        "(we parse it; h11 takes ';' and anything after it, and whitespace before the CRLF)",
        lambda data: re.search(rb"\n[0-9A-Fa-f]+[; \t]", data) is not None,
    ),
    Difference(
        "Content-Length list of equal numbers",
        "RFC 9112 §6.3: a list whose values 'are the same (in which case, the message is processed with that "
        "single value...)': we compare the numbers (5 and 05 are the same), h11 the strings",
        lambda data: len(set(b"".join(_field_values(data, b"content-length")).split(b","))) > 1,
    ),
]
# --8<-- [end:differences]


def ours(protocol: ModuleType, chunks: list[bytes]) -> Outcome:
    parser = protocol.RequestParser()
    try:
        for chunk in chunks:
            parser.feed(chunk)
            request = parser.next_request()
            if request is not None:
                fields = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in request.headers]
                trailers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in request.trailers]
                return "accepted", (
                    request.method.encode(),
                    request.target.encode(),
                    fields,
                    request.body,
                    trailers,
                )
    except protocol.HttpError:
        pass
    return "refused", None


def theirs(data: bytes) -> Outcome:
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)
    try:
        request = connection.next_event()
        if not isinstance(request, h11.Request):
            return "refused", None
        body = b""
        while isinstance(event := connection.next_event(), h11.Data):
            body += event.data
        if not isinstance(event, h11.EndOfMessage):
            return "refused", None
    except h11.RemoteProtocolError:
        return "refused", None
    fields = list(request.headers)
    return "accepted", (request.method, request.target, fields, body, list(event.headers))


def framing_free(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    # h11 rewrites these two (merges equal Content-Lengths, lower-cases the coding); the body shows framing.
    return [(name, value) for name, value in fields if name not in (b"content-length", b"transfer-encoding")]


# ------------------------------------------------------------------------------------------------ generation

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(TCHAR, min_size=1, max_size=12)
methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]) | tokens.filter(
    lambda method: method != "CONNECT"
)
# Random field names, but not those that the generator sets itself, with values of their own grammar.
field_names = tokens.filter(lambda name: name.lower() not in ("host", "content-length", "transfer-encoding"))
paths = st.text("abcXYZ019-._~!$&'()*+,;=:@%/?", max_size=30).map(lambda path: "/" + path)
targets = paths | st.sampled_from(["http://example.com/x?y", "https://h:8443/"])
field_values = st.binary(max_size=20).map(
    lambda raw: bytes(b for b in raw if b == 9 or 0x20 <= b <= 0x7E or b >= 0x80).strip(b" \t")
)
hosts = st.sampled_from([b"example.com", b"localhost:8080", b"127.0.0.1", b"[::1]:80", b""])
# Printable bodies, so that a difference in how a head is read is never looked for in a body.
bodies = st.binary(max_size=40).map(lambda raw: bytes(0x20 + b % 0x5F for b in raw))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Valid requests, which both parsers must accept and read alike."""
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    method = draw(methods).encode()
    target = b"*" if method == b"OPTIONS" and draw(st.booleans()) else draw(targets).encode()
    head = [method + b" " + target + b" " + version]
    if version != b"HTTP/1.0" or draw(st.booleans()):
        head.append(b"Host: " + draw(hosts))
    for _ in range(draw(st.integers(0, 4))):
        head.append(
            draw(field_names).encode() + b":" + draw(st.sampled_from([b"", b" ", b"\t"])) + draw(field_values)
        )
    body = draw(bodies)
    framing = draw(
        st.sampled_from(
            ["none", "length", "chunked", "chunked"] if version == b"HTTP/1.1" else ["none", "length"]
        )
    )
    encoded = b""
    if framing == "length":
        head.append(b"Content-Length: " + str(len(body)).encode())
        encoded = body
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
        for piece in pieces:
            extension = draw(st.sampled_from([b"", b";x", b";x=y", b';x="a b"']))
            encoded += b"%x%s\r\n%s\r\n" % (len(piece), extension, piece)
        encoded += b"0\r\n"
        if draw(st.booleans()):
            encoded += b"Trailer-Field: " + draw(field_values) + b"\r\n"
        encoded += b"\r\n"
    return b"\r\n".join(head) + b"\r\n\r\n" + encoded


INTERESTING = b"\r\n \t:;,\x00\x01\x7f\x800-xX"


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    data = draw(requests())
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate-line"]))
        byte = bytes([draw(st.sampled_from(INTERESTING))])
        if kind == "insert":
            data = data[:position] + byte + data[position:]
        elif kind == "delete":
            data = data[:position] + data[position + 1 :]
        elif kind == "replace":
            data = data[:position] + byte + data[position + 1 :]
        else:
            start = data.rfind(b"\n", 0, position) + 1
            end = data.find(b"\n", position) + 1 or len(data)
            data = data[:end] + data[start:end] + data[end:]
    return data


def check_agreement(protocol: ModuleType, data: bytes, split: int) -> None:
    whole = ours(protocol, [data])
    # Our own consistency first: one byte at a time and split anywhere give the same as whole.
    assert ours(protocol, [data[i : i + 1] for i in range(len(data))]) == whole
    assert ours(protocol, [data[:split], data[split:]]) == whole
    reference = theirs(data)
    if whole[0] != reference[0]:
        explained = [difference.name for difference in DIFFERENCES if difference.applies(data)]
        assert explained, f"unexplained: we {whole[0]}, h11 {reference[0]}: {data!r}"
        return
    if whole[0] == "accepted":
        method, target, fields, body, trailers = whole[1]
        their_method, their_target, their_fields, their_body, their_trailers = reference[1]
        assert (method, target, body) == (their_method, their_target, their_body)
        assert framing_free(fields) == framing_free(their_fields)
        assert trailers == their_trailers


# The `phase` fixture only names a module to import: nothing in it needs resetting between examples.
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(data=requests(), split=st.integers(0, 200))
def test_valid_requests_agree_with_h11(phase: Phase, data: bytes, split: int) -> None:
    protocol = phase.import_module("protocol")
    assert ours(protocol, [data])[0] == theirs(data)[0] == "accepted"
    check_agreement(protocol, data, split)


@SETTINGS
@given(data=mutated_requests(), split=st.integers(0, 200))
def test_mutated_requests_agree_with_h11(phase: Phase, data: bytes, split: int) -> None:
    check_agreement(phase.import_module("protocol"), data, split)


def test_every_difference_is_real(phase: Phase) -> None:
    """Each listed difference, on one example: h11 accepts it, we refuse it (or the other way round)."""
    protocol = phase.import_module("protocol")
    examples = {
        "bare LF": b"GET / HTTP/1.1\nHost: h\n\n",
        "obs-fold": b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
        "control characters": b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n",
        "leading empty line": b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        "request-target form": b"GET relative HTTP/1.1\r\nHost: h\r\n\r\n",
        "HTTP major version": b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        "CONNECT": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        "Host value": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        "Content-Length and Transfer-Encoding": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding in HTTP/1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "chunk extensions": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0;;\r\n\r\n",
        "Content-Length list of equal numbers": (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 01\r\n\r\nx"
        ),
    }
    assert set(examples) == {difference.name for difference in DIFFERENCES}
    for difference in DIFFERENCES:
        data = examples[difference.name]
        assert difference.applies(data), difference.name
        assert ours(protocol, [data])[0] != theirs(data)[0], difference.name
