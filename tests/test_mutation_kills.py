"""Unit tests of protocol.py that mutation testing (`make mutation`, tools/mutation.py) showed were missing.

Each checks one behaviour that a surviving mutant changed and no other test noticed: a response header that
carries a lone CR or a lone LF (either one ends a header line for some recipients: response splitting), the
errors a caller gets when it asks for a response we refuse to render, which name what is wrong, and the
`Connection: keep-alive` an HTTP/1.0 client needs, as a field line of its own (a substring test passed with
garbage around it).
"""

from __future__ import annotations

import re
from types import ModuleType

import pytest

from conftest import Phase

pytestmark = pytest.mark.needs("http")


@pytest.fixture
def protocol(phase: Phase) -> ModuleType:
    return phase.import_module("protocol")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Location", "/a\rSet-Cookie: b=c"),
        ("Location", "/a\nSet-Cookie: b=c"),
        ("X-A\rSet-Cookie", "b=c"),
        ("X-A\nSet-Cookie", "b=c"),
    ],
    ids=["CR in value", "LF in value", "CR in name", "LF in name"],
)
def test_a_lone_cr_or_lf_in_a_response_header_is_refused(protocol: ModuleType, name: str, value: str) -> None:
    with pytest.raises(ValueError, match=r"CR or LF in the .* response header"):
        protocol.render_response(None, 302, headers=[(name, value)])


@pytest.mark.parametrize("status", [100, 204, 304])
def test_a_body_for_a_status_that_has_none_is_refused_with_the_status_named(
    protocol: ModuleType, status: int
) -> None:
    with pytest.raises(ValueError, match=f"a {status} response has no body"):
        protocol.render_response(None, status, b"body")


# RFC 9112 §2.1:  HTTP-message = start-line CRLF *( field-line CRLF ) CRLF [ message-body ]
FIELD_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [\t\x20-\x7e]*")


def test_an_http10_keep_alive_response_says_keep_alive_in_a_field_line_of_its_own(
    protocol: ModuleType,
) -> None:
    parser = protocol.RequestParser()
    parser.feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    request = parser.next_request()
    assert request is not None and request.keep_alive
    head, separator, body = protocol.render_response(request, 200, b"hi").partition(b"\r\n\r\n")
    status_line, *field_lines = head.split(b"\r\n")
    assert (status_line, separator, body) == (b"HTTP/1.1 200 OK", b"\r\n\r\n", b"hi")
    assert all(FIELD_LINE.fullmatch(line) for line in field_lines), field_lines
    assert b"Connection: keep-alive" in field_lines
