"""Sans-I/O HTTP/1.1 (RFC 9112): bytes in, requests out; responses to bytes. No sockets in here.

Theory of operation
-------------------
One `RequestParser` per connection parses one receive buffer, a `bytearray` with spare room at its end. The
server copies bytes in with `feed(data)`, or receives straight into the spare room with no copy at all:
`with parser.receive_buffer() as view: n = sock.recv_into(view)`, then `parser.received(n)`. It then calls
`next_request()` until that returns None ("need more bytes"); each call returns one complete `Request` or
raises `HttpError`, after which the connection gets that error's response and is closed. The buffer can be
one that every parser of an event loop shares: the loop serves one connection at a time, and when it is
done with one, `keep_unconsumed_bytes()` moves what that parser has not consumed (a partial request, or whole
ones that backpressure holds back) into a buffer of its own, which it gives back once everything in it is
consumed. An idle connection holds none.

The buffer is addressed by offsets, never sliced while we search it: `_start` is the first byte not yet
consumed, `_end` one past the last byte received, `_scan` where the current search resumes. A search that
fails remembers where it stopped (minus the length of a terminator that may straddle the old end), so bytes
are searched once however they are split: a client sending its head one byte at a time costs O(n) in total,
not O(n^2). (`scanned_bytes` counts them, so the tests can check this without timing anything.)

Only a complete request head is ever copied out of the buffer, as one `str` decoded from latin-1, which
maps every byte to one character and back, so the decoding can neither fail nor lose anything. One
compiled regular expression then validates the whole head in a single pass of C code, and plain `split` and
`partition` cut it into fields; errors are diagnosed on a slow path that only bad input takes. A body is
copied out once, since it outlives the buffer; chunked bodies are decoded as they arrive, so a long chunk
never has to fit the buffer at once.

The buffer is compacted only when it needs room (a shared one is never grown: a request that needs more
moves to a buffer of its own), and starts over at offset 0 for free whenever every received byte was
consumed, the common case for request/response traffic. A `bytearray` with an exported
`memoryview` cannot be resized (BufferError), so every view made here lives for one expression, and the one
handed to the server must be released (the `with` above) before the parser is called again.

The tradeoff: the parser is strict. Input that RFC 9112 lets a recipient either reject or repair (bare LF,
obs-fold, both Content-Length and Transfer-Encoding) is rejected, because two parsers that repair it
differently are how request smuggling happens; each such choice is noted where it is made.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus


# --8<-- [start:limits]
@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds on what one request may make us hold; exceeding one is an error response, not a crash."""

    max_request_line: int = 8 * 1024  # bytes, CRLF excluded -> 414
    max_header_bytes: int = 16 * 1024  # field lines with their CRLFs, and the final CRLF -> 431
    max_header_count: int = 100  # field lines -> 431 (trailers are held to the same two limits)
    max_body_bytes: int = 8 * 1024 * 1024  # decoded body, either framing, chunk extensions included -> 413
    max_chunk_line: int = 4 * 1024  # chunk size plus extensions, CRLF excluded -> 400


# --8<-- [end:limits]


class HttpError(Exception):
    """A request we will not serve: `status` is the response's status code, `reason` says why in words."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


# --8<-- [start:request]
@dataclass(slots=True)
class Request:
    """One complete request. Names are lower-cased; values are latin-1 decoded, with their OWS stripped."""

    method: str
    target: str
    path: str  # the target's path, without its query (and without an absolute-form's scheme and authority)
    version: str  # "HTTP/1.0" or "HTTP/1.1" (a higher 1.x minor is handled, and reported, as 1.1)
    headers: list[tuple[str, str]]
    keep_alive: bool  # False: respond with `Connection: close`, then close; no later bytes were parsed
    expects_continue: bool  # an HTTP/1.1 `Expect: 100-continue`
    body: bytes = b""  # set once the whole body has arrived
    trailers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def is_head(self) -> bool:
        """A HEAD response carries the headers (Content-Length included) of the GET response, no body."""
        return self.method == "HEAD"

    def header(self, name: str) -> str | None:
        """The value of the first field named `name` (lower case), or None."""
        for field_name, value in self.headers:
            if field_name == name:
                return value
        return None


# --8<-- [end:request]

# --8<-- [start:grammar]
# RFC 9110 §5.6.2:  token = 1*tchar
#   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
#           / DIGIT / ALPHA
TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]++"
# RFC 9112 §5:  field-line = field-name ":" OWS field-value OWS
# RFC 9110 §5.5:  field-value = *field-content, built of field-vchar = VCHAR / obs-text, SP and HTAB.
# So a line is a token, a colon, then SP, HTAB, VCHAR (%x21-7E) or obs-text (%x80-FF): no CTL, hence no CR,
# LF or NUL. A space before the colon or a line that starts with SP/HTAB (obs-fold) fails to match: 400.
# (Possessive `++`/`*+` never backtrack, so no input can make these expressions slow.)
FIELD_LINE = rf"{TOKEN}:[\t\x20-\x7e\x80-\xff]*+"
# RFC 9112 §3:  request-line = method SP request-target SP HTTP-version
#   method = token;  HTTP-version = HTTP-name "/" DIGIT "." DIGIT
# and §2.1:  HTTP-message = start-line CRLF *( field-line CRLF ) CRLF
# The target is checked here only for VCHARs; its form is checked in `target_path`.
REQUEST_HEAD = re.compile(rf"{TOKEN} [\x21-\x7e]++ HTTP/[0-9]\.[0-9](?:\r\n{FIELD_LINE})*+")
FIELD_LINES = re.compile(rf"{FIELD_LINE}(?:\r\n{FIELD_LINE})*+")
REQUEST_LINE = re.compile(rf"{TOKEN} [\x21-\x7e]++ HTTP/[0-9]\.[0-9]")
# One line at a time, for the slow path that says which line is wrong.
FIELD_LINE_PATTERN = re.compile(FIELD_LINE)
TOKEN_PATTERN = re.compile(TOKEN)
# RFC 9110 §7.2:  Host = uri-host [ ":" port ]  (uri-host: an IP-literal in brackets, or a reg-name of
# unreserved / pct-encoded / sub-delims characters; an IPv4 address is a reg-name too. The regex checks the
# characters; `valid_host` then checks that an IP-literal is an address: "[zz]" has the right characters and
# names nothing, and "http://[/" once crashed a URL parser the application called.)
HOST = re.compile(r"(?:\[([0-9A-Za-z:.\-_~!$&'()*+,;=]++)\]|[0-9A-Za-z.\-_~!$&'()*+,;=%]*+)(?::[0-9]*+)?")
# RFC 3986 §3.2.2:  IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
IP_FUTURE = re.compile(r"[vV][0-9A-Fa-f]++\.[0-9A-Za-z\-._~!$&'()*+,;=:]++")
# RFC 9112 §3.2.2: a server MUST accept the absolute-form, which for us is an http(s) URI (RFC 9110 §4.2):
#   http-URI = "http" "://" authority path-abempty [ "?" query ]     (https-URI: the same with "https")
#   authority = [ userinfo "@" ] host [ ":" port ]  (RFC 3986 §3.2; RFC 9110 §4.2.4: a recipient SHOULD
#   "treat its presence as an error", so no "@" before the path);  path-abempty = *( "/" segment )
# A fragment is never part of a request-target (RFC 9112 §3.2), hence no "#". The scheme is case-insensitive.
ABSOLUTE_FORM = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?+://([^/?#@]++)(/[^?#]*+)?+(?:\?[^#]*+)?+")
# RFC 9112 §7.1:  chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF;  chunk-size = 1*HEXDIG
#   chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
#   chunk-ext-name = token;  chunk-ext-val = token / quoted-string
# At most 16 hex digits (64 bits): more is no size we would accept, and bounds the work of int().
QUOTED_STRING = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*+"'
CHUNK_EXT = rf"(?:[ \t]*+;[ \t]*+{TOKEN}(?:[ \t]*+=[ \t]*+(?:{TOKEN}|{QUOTED_STRING}))?+)*+"
CHUNK_SIZE_LINE = re.compile(rf"([0-9A-Fa-f]{{1,16}}+){CHUNK_EXT}")
# --8<-- [end:grammar]

# Fields that decide framing and connection handling; all others are only passed through.
FRAMING_FIELDS = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})
MAX_CONTENT_LENGTH_DIGITS = 18  # below 2**63; a longer value is no length we would accept (413)

# Parser states: plain ints, because the state is tested on every call and a global int is the cheapest test.
HEAD, FIXED_BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILERS, CLOSED = range(7)

INITIAL_CAPACITY = 16 * 1024  # a parser's own buffer: made when needed with a shared one, else at once
SHARED_CAPACITY = 64 * 1024  # the one buffer of an event loop, which every connection receives into
MIN_RECEIVE_ROOM = 4 * 1024  # receive_buffer() never offers less room than this
# RFC 9112 §2.2 asks a server to ignore "at least one" empty line before a request line. A few are tolerated;
# more is no client we know of, only one that would keep a connection open with bytes that are no request.
MAX_EMPTY_LINES = 4


class RequestParser:
    """Incremental, resumable HTTP/1.1 request parser for one connection (server side)."""

    # No per-object __dict__: ten thousand idle connections hold ten thousand parsers.
    __slots__ = (
        "_body_length",
        "_buffer",
        "_chunk_remaining",
        "_chunked_body",
        "_continue_due",
        "_empty_lines",
        "_end",
        "_error",
        "_extension_bytes",
        "_line_end",
        "_pending",
        "_scan",
        "_shared",
        "_start",
        "_state",
        "dropped_bytes",
        "limits",
        "scanned_bytes",
    )

    def __init__(self, limits: Limits | None = None, shared_buffer: bytearray | None = None) -> None:
        self.limits = limits if limits is not None else Limits()
        # With a shared buffer (one per event loop), the parser receives into it and keeps a buffer of its
        # own only while it holds unconsumed bytes between two events: see keep_unconsumed_bytes().
        self._shared = shared_buffer
        self._buffer = shared_buffer if shared_buffer is not None else bytearray(INITIAL_CAPACITY)
        self._start = 0  # first byte not yet consumed
        self._end = 0  # one past the last byte received
        self._scan = 0  # where the search in progress resumes
        self._line_end = -1  # offset of the request line's CR, once found
        self._empty_lines = 0  # CRLFs skipped before the request line in progress
        self._state = HEAD
        self._error: HttpError | None = None
        self._pending: Request | None = None  # the request whose head is parsed and whose body is not
        self._body_length = 0  # FIXED_BODY: bytes of body expected
        self._chunk_remaining = 0  # CHUNK_DATA: bytes left in this chunk
        self._chunked_body = bytearray()
        self._extension_bytes = 0  # CHUNK_*: the chunk extensions of this body so far (they count as body)
        self._continue_due = False
        self.scanned_bytes = 0  # bytes given to a search so far: the tests' proof that nothing is rescanned
        # Bytes that arrived after the last request (one that said "close", or close()) and were dropped: a
        # server that closes at once must know whether the client was still sending (server.py, quick close).
        self.dropped_bytes = 0

    # --8<-- [start:receive]
    def receive_buffer(self) -> memoryview:
        """A writable view of the buffer's free room (at least MIN_RECEIVE_ROOM bytes): recv_into it, then
        call received(n). Release the view (use `with`) before calling the parser again."""
        self._make_room(MIN_RECEIVE_ROOM)
        return memoryview(self._buffer)[self._end :]

    def received(self, nbytes: int) -> None:
        """Account for `nbytes` written into the view from receive_buffer()."""
        if not 0 <= nbytes <= len(self._buffer) - self._end:
            raise ValueError(f"received {nbytes} bytes into {len(self._buffer) - self._end} bytes of room")
        if self._state != CLOSED:  # after a final request, later bytes are dropped unparsed
            self._end += nbytes
        else:
            self.dropped_bytes += nbytes

    def feed(self, data: bytes) -> None:
        """Append `data` to the buffer (one copy; receive_buffer() avoids it)."""
        if self._state == CLOSED:
            self.dropped_bytes += len(data)
            return
        size = len(data)
        self._make_room(size)
        self._buffer[self._end : self._end + size] = data  # same length: a copy, never a resize
        self._end += size

    def keep_unconsumed_bytes(self) -> None:
        """The caller is done with this parser for now: move the bytes it has not consumed yet (a partial
        request, or whole ones that backpressure holds back) out of the shared buffer, which the next
        connection's bytes will overwrite, into a buffer of its own."""
        if self._buffer is not self._shared:
            return
        if self._end > self._start and self._state != CLOSED:
            self._move_to_own_buffer(0)
        else:  # nothing to keep (empty lines, or a closed parser, which parses no more): start at the front
            self._start = self._end = self._scan = 0

    # --8<-- [end:receive]

    @property
    def has_partial_request(self) -> bool:
        """True while part of a request is buffered: the clock of a header or body read timeout runs."""
        return self._state != CLOSED and (self._state != HEAD or self._end > self._start)

    @property
    def reading_head(self) -> bool:
        """True while part of a request head has arrived (an empty line before it counts): the header timeout
        runs."""
        return self._state == HEAD and (self._end > self._start or self._empty_lines > 0)

    @property
    def reading_body(self) -> bool:
        """True while a request's head is parsed and the rest of its body awaited: the body timeout runs."""
        return FIXED_BODY <= self._state <= TRAILERS

    def close(self) -> None:
        """Stop parsing: the connection is closing, and every later byte is dropped unparsed."""
        self._state = CLOSED
        self.dropped_bytes += self._end - self._start
        self._end = self._start

    def take_continue(self) -> bool:
        """True once for a request that asked for 100-continue, after its head and before its whole body
        arrived: the caller sends CONTINUE_RESPONSE now. (Never for HTTP/1.0, RFC 9110 §10.1.1.)"""
        due = self._continue_due
        self._continue_due = False
        return due

    # --8<-- [start:next_request]
    def next_request(self) -> Request | None:
        """The next complete request; None if more bytes are needed (or the connection is done); raises
        HttpError for a request we will not serve, and again on every later call."""
        if self._error is not None:
            raise self._error
        if self._start == self._end and self._state == HEAD:
            return None  # the usual end of a batch: every byte consumed, so there is nothing to search
        try:
            if self._state == HEAD and not self._read_head():
                return None
            if self._state == FIXED_BODY and not self._read_fixed_body():
                return None
            if CHUNK_SIZE <= self._state <= TRAILERS and not self._read_chunked_body():
                return None
            if self._state == CLOSED:
                return None
        except HttpError as error:
            self._error = error
            self._state = CLOSED
            raise
        return self._complete()

    # --8<-- [end:next_request]

    def _complete(self) -> Request:
        request = self._pending
        assert request is not None
        self._pending = None
        self._continue_due = False
        if request.keep_alive:
            self._state = HEAD
            self._scan = self._start
        else:
            self._state = CLOSED  # RFC 9112 §9.6: nothing after a "close" request is read
            self.dropped_bytes += self._end - self._start
            self._end = self._start
        if self._start == self._end:
            # Everything consumed: start over at offset 0, which costs nothing, and give back the buffer of
            # our own, if any, so that an idle connection holds no buffer at all.
            self._start = self._end = self._scan = 0
            if self._shared is not None:
                self._buffer = self._shared
            elif len(self._buffer) > INITIAL_CAPACITY:
                self._buffer = bytearray(INITIAL_CAPACITY)
        return request

    # --8<-- [start:read_head]
    def _read_head(self) -> bool:
        """True once a whole head is parsed into self._pending (state set for its body); False for more."""
        buffer, limits, end = self._buffer, self.limits, self._end
        if self._line_end < 0:
            start = self._start
            # RFC 9112 §2.2: "a server that is expecting to receive and parse a request-line SHOULD ignore
            # at least one empty line (CRLF) received prior to the request-line."
            while end - start >= 2 and buffer[start] == 13 and buffer[start + 1] == 10:
                start += 2
                self._empty_lines += 1
            if self._empty_lines > MAX_EMPTY_LINES:
                raise HttpError(400, "too many empty lines before the request line")
            self._start = start
            scan = max(self._scan, start)
            line_feed = buffer.find(b"\n", scan, end)
            if line_feed < 0:
                self.scanned_bytes += end - scan
                self._scan = end
                if end - start > limits.max_request_line + 1:  # + 1: its CR may have arrived
                    raise HttpError(414, "request line too long")
                return False
            self.scanned_bytes += line_feed + 1 - scan
            # RFC 9112 §2.2 lets a recipient accept a bare LF as a line terminator; we do not: a front end
            # that splits lines differently from us would see different requests in the same bytes.
            if line_feed == start or buffer[line_feed - 1] != 13:
                raise HttpError(400, "line terminated by a bare LF")
            if line_feed - 1 - start > limits.max_request_line:
                raise HttpError(414, "request line too long")
            self._line_end = self._scan = line_feed - 1
        # The empty line that ends the head; after the request line's CR, so that no fields is found too.
        scan = self._scan
        head_end = buffer.find(b"\r\n\r\n", scan, end)
        if head_end < 0:
            self.scanned_bytes += end - scan
            self._scan = max(self._line_end, end - 3)  # a CRLFCRLF may straddle what arrives next
            if end - self._line_end - 2 > limits.max_header_bytes:
                raise HttpError(431, "header section too large")
            return False
        self.scanned_bytes += head_end + 4 - scan
        if head_end + 2 - self._line_end > limits.max_header_bytes:
            raise HttpError(431, "header section too large")
        start, self._start = self._start, head_end + 4
        self._line_end = -1
        self._empty_lines = 0
        self._scan = self._start
        # The head's copy: latin-1 turns every byte into one character, so nothing can fail here. (Slicing
        # the bytearray copies twice; decoding a memoryview slice copies once, and neither wins in every
        # workload of bench/parser_micro.py, so the plainer line stays.)
        request, body_length = parse_head(buffer[start:head_end].decode("latin-1"), limits)
        self._pending = request
        if body_length >= 0:
            # The buffer grows as the body arrives, never ahead of it: what a connection holds follows what
            # its client sent, not the Content-Length it declared.
            self._state = FIXED_BODY
            self._body_length = body_length
            self._continue_due = request.expects_continue and self._end - self._start < body_length
        else:
            self._state = CHUNK_SIZE
            self._chunked_body = bytearray()
            self._extension_bytes = 0
            self._continue_due = request.expects_continue and self._end == self._start
        return True

    # --8<-- [end:read_head]

    def _read_fixed_body(self) -> bool:
        """True once the Content-Length body is in self._pending; False for more bytes."""
        start = self._start
        stop = start + self._body_length
        if stop > self._end:
            return False
        assert self._pending is not None
        if stop > start:
            self._pending.body = bytes(memoryview(self._buffer)[start:stop])  # the body's one copy
            self._start = stop
        return True

    # --8<-- [start:chunked]
    def _read_chunked_body(self) -> bool:
        """True once the chunked body and its trailers are in self._pending; False for more bytes."""
        buffer = self._buffer
        while True:
            start, end = self._start, self._end
            if self._state == CHUNK_SIZE:
                if not self._read_chunk_size():
                    return False
            elif self._state == CHUNK_DATA:
                taken = min(end - start, self._chunk_remaining)
                if taken == 0:
                    return False
                self._chunked_body += memoryview(buffer)[start : start + taken]
                self._start = start + taken
                self._chunk_remaining -= taken
                if self._chunk_remaining:
                    return False
                self._state = CHUNK_END
            elif self._state == CHUNK_END:
                if end - start < 2:
                    return False
                if buffer[start] != 13 or buffer[start + 1] != 10:
                    raise HttpError(400, "chunk data not followed by CRLF")
                self._start = self._scan = start + 2
                self._state = CHUNK_SIZE
            else:
                return self._read_trailers()

    def _read_chunk_size(self) -> bool:
        """True once a chunk size line is parsed (state set to CHUNK_DATA or TRAILERS); False for more."""
        buffer, limits, start, end = self._buffer, self.limits, self._start, self._end
        line_feed = buffer.find(b"\n", self._scan, end)
        if line_feed < 0:
            self.scanned_bytes += end - self._scan
            self._scan = end
            if end - start > limits.max_chunk_line + 1:
                raise HttpError(400, "chunk size line too long")
            return False
        self.scanned_bytes += line_feed + 1 - self._scan
        if line_feed - 1 - start > limits.max_chunk_line:
            raise HttpError(400, "chunk size line too long")
        if line_feed == start or buffer[line_feed - 1] != 13:
            raise HttpError(400, "chunk size line terminated by a bare LF")
        match = CHUNK_SIZE_LINE.fullmatch(buffer[start : line_feed - 1].decode("latin-1"))
        if match is None:
            raise HttpError(400, "malformed chunk size line")
        size = int(match[1], 16)  # the regex admitted hex digits only: no sign, "0x", "_" or space
        # Extensions mean nothing to us and are dropped, but a line of them per byte of body would make a few
        # bytes of body cost megabytes of reading: they count against the body's limit, as body.
        self._extension_bytes += line_feed - 1 - start - len(match[1])
        if len(self._chunked_body) + self._extension_bytes + size > limits.max_body_bytes:
            raise HttpError(413, "body too large")
        self._start = self._scan = line_feed + 1
        self._chunk_remaining = size
        self._state = CHUNK_DATA if size else TRAILERS
        return True

    def _read_trailers(self) -> bool:
        """True once the trailer section (RFC 9112 §7.1.2) is parsed; False for more bytes."""
        buffer, limits, start, end = self._buffer, self.limits, self._start, self._end
        assert self._pending is not None
        if end - start < 2:
            return False
        if buffer[start] == 13 and buffer[start + 1] == 10:
            trailers_end = start - 2  # no trailer fields: just the final CRLF
        else:
            scan = max(self._scan, start)
            found = buffer.find(b"\r\n\r\n", scan, end)
            if found < 0:
                self.scanned_bytes += end - scan
                self._scan = max(start, end - 3)
                if end - start > limits.max_header_bytes:
                    raise HttpError(431, "trailer section too large")
                return False
            self.scanned_bytes += found + 4 - scan
            trailers_end = found
            if found + 4 - start > limits.max_header_bytes:
                raise HttpError(431, "trailer section too large")
            self._pending.trailers = parse_fields(buffer[start:found].decode("latin-1"), limits, "trailer")
        self._start = self._scan = trailers_end + 4
        self._pending.body = bytes(self._chunked_body)
        self._chunked_body = bytearray()
        return True

    # --8<-- [end:chunked]

    # --8<-- [start:own_buffer]
    def _make_room(self, size: int) -> None:
        """Ensure `size` free bytes after _end: slide unconsumed bytes to the front, grow if still short."""
        buffer = self._buffer
        if len(buffer) - self._end >= size:
            return
        if buffer is self._shared:
            self._move_to_own_buffer(size)  # the shared buffer never grows: a large request gets its own
            return
        shift = self._start
        if shift:
            live = self._end - shift
            buffer[:live] = buffer[shift : self._end]  # same length: a move, not a resize
            self._start = 0
            self._end = live
            self._scan = max(0, self._scan - shift)
            if self._line_end >= 0:
                self._line_end -= shift
        needed = self._end + size
        if needed > len(buffer):
            buffer.extend(bytes(max(needed, 2 * len(buffer)) - len(buffer)))

    def _move_to_own_buffer(self, room: int) -> None:
        """Copy the unconsumed bytes to the front of a new buffer of our own, with `room` free bytes after."""
        start, live = self._start, self._end - self._start
        own = bytearray(max(INITIAL_CAPACITY, live + room))
        own[:live] = memoryview(self._buffer)[start : self._end]  # same length: a copy, never a resize
        self._buffer = own
        self._start, self._end = 0, live
        self._scan = max(0, self._scan - start)
        if self._line_end >= 0:
            self._line_end -= start

    # --8<-- [end:own_buffer]


# --8<-- [start:parse_head]
def parse_head(head: str, limits: Limits) -> tuple[Request, int]:
    """A head (request line and field lines, without the final CRLFCRLF) -> (Request without its body,
    body length: 0 for none, > 0 for Content-Length, -1 for chunked); raises HttpError."""
    if REQUEST_HEAD.fullmatch(head) is None:
        raise diagnose_head(head)
    lines = head.split("\r\n")
    if len(lines) - 1 > limits.max_header_count:
        raise HttpError(431, "too many header fields")
    method, target, version = lines[0].split(" ")
    if version[5] != "1":
        raise HttpError(505, f"{version} is not supported")
    is_http10 = version == "HTTP/1.0"
    if not is_http10:
        version = "HTTP/1.1"  # RFC 9112 §2.3: process a higher minor version as the highest we implement
    path = target.partition("?")[0] if target[0] == "/" else target_path(method, target)
    headers = []
    framing = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.lower()
        value = value.strip(" \t")  # RFC 9112 §5.1: OWS before and after the value is not part of it
        headers.append((name, value))
        if name in FRAMING_FIELDS:
            framing.append((name, value))
    if len(framing) == 1 and framing[0][0] == "host" and valid_host(framing[0][1]):
        # The common head: a valid Host and no other framing field, so no body; only HTTP/1.1 persists.
        body_length, keep_alive, expects_continue = 0, not is_http10, False
    else:
        body_length, keep_alive, expects_continue = apply_framing_fields(framing, is_http10, limits)
    # Positional arguments, in the order of Request's fields: CPython 3.11 binds them to a dataclass's
    # __init__ faster than keywords (`python3 -m timeit` shows it).
    request = Request(method, target, path, version, headers, keep_alive, expects_continue)
    return request, body_length


# --8<-- [end:parse_head]


# --8<-- [start:target]
def target_path(method: str, target: str) -> str:
    """The path of a `target` that is not origin-form (absolute-form or "*"); raises HttpError if it is no
    allowed request-target for `method`."""
    # RFC 9112 §3.2:  request-target = origin-form / absolute-form / authority-form / asterisk-form
    if target == "*":
        if method != "OPTIONS":  # §3.2.4: asterisk-form is only used for a server-wide OPTIONS request
            raise HttpError(400, "asterisk-form target for a method other than OPTIONS")
        return target
    if method == "CONNECT":
        # §3.2.3: authority-form is only for CONNECT, which asks a proxy for a tunnel. This is an origin
        # server; RFC 9110 §9.1: a method "not implemented SHOULD respond with the 501 (Not Implemented)".
        raise HttpError(501, "CONNECT is not implemented: this is not a proxy")
    match = ABSOLUTE_FORM.fullmatch(target)
    if match is None or not valid_host(match[1]):
        raise HttpError(400, "request target is neither a path, an http(s) URI nor '*'")
    # §3.2.2: the server then uses the target's authority instead of Host; we route by path alone.
    return match[2] or "/"


def valid_host(host: str) -> bool:
    """True if `host` (a Host field value, or an absolute-form's authority) is uri-host [ ":" port ]."""
    match = HOST.fullmatch(host)
    if match is None:
        return False
    ip_literal = match[1]  # RFC 3986 §3.2.2:  IP-literal = "[" ( IPv6address / IPvFuture ) "]"
    if ip_literal is None or IP_FUTURE.fullmatch(ip_literal) is not None:
        return True
    try:
        ipaddress.IPv6Address(ip_literal)
    except ValueError:
        return False
    return "%" not in ip_literal  # a zone ID ("%eth0") is no part of RFC 3986's IPv6address


# --8<-- [end:target]


# --8<-- [start:framing]
def apply_framing_fields(
    fields: list[tuple[str, str]], is_http10: bool, limits: Limits
) -> tuple[int, bool, bool]:
    """Check Host and the framing fields -> (body length: 0 for none, > 0 for Content-Length, -1 for
    chunked; keep_alive; expects_continue); raises HttpError."""
    hosts: list[str] = []
    lengths: list[str] = []
    codings: list[str] = []
    connection: set[str] = set()
    expects_continue = False
    for name, value in fields:
        if name == "host":
            hosts.append(value)
        elif name == "content-length":
            lengths.extend(value.split(","))
        elif name == "transfer-encoding":
            codings.extend(value.split(","))
        elif name == "connection":
            # RFC 9110 §7.6.1:  Connection = #connection-option;  connection-option = token (case-insensitive)
            connection.update(option.strip(" \t").lower() for option in value.split(","))
        elif value.lower() == "100-continue":  # "expect": other expectations are ignored (§10.1.1 MAY 417)
            expects_continue = not is_http10  # §10.1.1: an HTTP/1.0 100-continue MUST be ignored
    # RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1 request
    # message that lacks a Host header field and to any request message that contains more than one Host
    # header field line or a Host header field with an invalid field value."
    if len(hosts) != 1 and (hosts or not is_http10):
        raise HttpError(400, "more than one Host field" if hosts else "missing Host field")
    if hosts and not valid_host(hosts[0]):
        raise HttpError(400, "invalid Host field")
    # RFC 9112 §9.3: HTTP/1.1 persists unless "close" is sent; HTTP/1.0 persists only with "keep-alive".
    keep_alive = "close" not in connection and (not is_http10 or "keep-alive" in connection)
    if codings:
        return chunked_framing(codings, bool(lengths), is_http10), keep_alive, expects_continue
    if lengths:
        return content_length(lengths, limits), keep_alive, expects_continue
    return 0, keep_alive, expects_continue


def chunked_framing(codings: list[str], has_content_length: bool, is_http10: bool) -> int:
    """-1 (chunked) if the Transfer-Encoding list is one we can frame by; raises HttpError otherwise."""
    # RFC 9112 §6.1: a server "MAY reject a request that contains both Content-Length and Transfer-Encoding
    # or process such a request in accordance with the Transfer-Encoding alone. Regardless, the server MUST
    # close the connection after responding". We reject: it is the request-smuggling message (CL.TE, TE.CL).
    if has_content_length:
        raise HttpError(400, "both Content-Length and Transfer-Encoding")
    # §6.1: an HTTP/1.0 message with Transfer-Encoding MUST be treated "as if the framing is faulty".
    if is_http10:
        raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
    names = [coding.strip(" \t").lower() for coding in codings]
    # §6.3: "If a Transfer-Encoding header field is present in a request and the chunked transfer coding is
    # not the final encoding, ... the server MUST respond with the 400 (Bad Request) status code". Empty list
    # elements (RFC 9110 §5.6.1 would skip them) get no such leniency in a framing field: they are 400 too.
    if names[-1] != "chunked" or "chunked" in names[:-1] or "" in names:  # §7.1: chunked at most once
        raise HttpError(400, "chunked is not the final transfer coding (exactly once)")
    if len(names) > 1:
        # §6.1: "A server that receives a request message with a transfer coding it does not understand
        # SHOULD respond with 501 (Not Implemented)." We decode no coding but chunked.
        raise HttpError(501, f"transfer coding {names[0]!r} is not implemented")
    return -1


def content_length(values: list[str], limits: Limits) -> int:
    """The body length that a Content-Length list gives; raises HttpError if it is not exactly one value."""
    # RFC 9110 §8.6:  Content-Length = 1*DIGIT. Python's int() would also take "+5", "1_0", " 5" and digits
    # of other scripts (U+0665, ARABIC-INDIC FIVE); isascii() and isdigit() together accept exactly 1*DIGIT.
    # RFC 9112 §6.3 item 5: a list (or repeated fields) whose "values are the same ... is processed with that
    # single value"; any other difference is "an unrecoverable error": 400.
    length = -1
    for value in values:
        digits = value.strip(" \t")
        if not (digits.isascii() and digits.isdigit()):
            raise HttpError(400, "Content-Length is not a decimal number")
        if len(digits) > MAX_CONTENT_LENGTH_DIGITS:
            raise HttpError(413, "body too large")
        if length >= 0 and int(digits) != length:
            raise HttpError(400, "conflicting Content-Length values")
        length = int(digits)
    if length > limits.max_body_bytes:
        raise HttpError(413, "body too large")
    return length


# --8<-- [end:framing]


def parse_fields(section: str, limits: Limits, what: str) -> list[tuple[str, str]]:
    """Field lines joined by CRLF (no final CRLF) -> [(lower-case name, value)]; raises HttpError."""
    if FIELD_LINES.fullmatch(section) is None:
        raise diagnose_field_lines(section.split("\r\n"), what)
    lines = section.split("\r\n")
    if len(lines) > limits.max_header_count:
        raise HttpError(431, f"too many {what} fields")
    fields = []
    for line in lines:
        name, _, value = line.partition(":")
        fields.append((name.lower(), value.strip(" \t")))
    return fields


# --8<-- [start:diagnose]
def diagnose_head(head: str) -> HttpError:
    """The error for a head that REQUEST_HEAD rejected, with the most specific reason (slow path)."""
    lines = head.split("\r\n")
    request_line = lines[0]
    if REQUEST_LINE.fullmatch(request_line) is None:
        if "\r" in request_line or "\n" in request_line:
            return HttpError(400, "bare CR or LF in the request line")
        return HttpError(400, "malformed request line")
    return diagnose_field_lines(lines[1:], "header")


def diagnose_field_lines(lines: list[str], what: str) -> HttpError:  # noqa: PLR0911 (one return per diagnosis)
    """The error for field lines that FIELD_LINE rejected (slow path)."""
    for line in lines:
        if FIELD_LINE_PATTERN.fullmatch(line) is not None:
            continue
        if "\r" in line or "\n" in line:
            return HttpError(400, f"bare CR or LF in a {what} line")
        if line[:1] in (" ", "\t"):
            # RFC 9112 §5.2: a server that receives an obs-fold "MUST either reject the message by sending
            # a 400 (Bad Request) ... or replace each received obs-fold with one or more SP octets". Reject.
            return HttpError(400, f"obsolete line folding in a {what} line")
        name, colon, _ = line.partition(":")
        if not colon:
            return HttpError(400, f"{what} line without a colon")
        if name != name.rstrip(" \t"):
            # §5.1: "A server MUST reject, with a response status code of 400 (Bad Request), any received
            # request message that contains whitespace between a header field name and colon."
            return HttpError(400, f"whitespace between a {what} field name and the colon")
        if TOKEN_PATTERN.fullmatch(name) is None:
            return HttpError(400, f"invalid {what} field name")
        return HttpError(400, f"invalid character in a {what} field value")
    return HttpError(400, f"malformed {what} section")


# --8<-- [end:diagnose]

# --8<-- [start:render]
CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"
TEXT_PLAIN = "text/plain; charset=utf-8"
# Python 3.11's HTTPStatus still has RFC 7231's phrases for these; RFC 9110 §15 renamed them.
RFC9110_PHRASES = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}
STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {RFC9110_PHRASES.get(status.value, status.phrase)}\r\n"
    for status in HTTPStatus
}
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_http_date(epoch_seconds: float) -> str:
    """RFC 9110 §5.6.7 IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT" (strftime's %a is locale-bound)."""
    t = time.gmtime(epoch_seconds)
    return (
        f"{WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


_date_second = -1
_date_line = ""


def date_line() -> str:
    """The "Date: ...\\r\\n" line for now, formatted at most once per second (see bench/parser_micro.py)."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second, _date_line = now, f"Date: {format_http_date(now)}\r\n"
    return _date_line


def render_response(
    request: Request | None,
    status: int,
    body: bytes = b"",
    *,
    content_type: str = TEXT_PLAIN,
    headers: Sequence[tuple[str, str]] = (),
    close: bool = False,
    body_length: int | None = None,
) -> bytes:
    """The bytes of a response to `request` (None: to a request we could not parse, so close). The caller
    closes the connection after it when `close`, `request is None` or `not request.keep_alive`. A body the
    caller sends itself (a file) is not passed: its `body_length` is."""
    keep_alive = request is not None and request.keep_alive and not close
    lines = [STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n", date_line()]
    # RFC 9110 §8.6: no Content-Length in a 1xx or 204 response; §15.4.5: a 304 has no content (its length
    # would be that of the 200 it stands for, which we do not know here, so we send none).
    if status < 200 or status in (204, 304):
        if body:
            raise ValueError(f"a {status} response has no body")
    else:
        length = len(body) if body_length is None else body_length
        lines.append(f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n")
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:  # response splitting
            raise ValueError(f"CR or LF in the {name!r} response header")
        lines.append(f"{name}: {value}\r\n")
    if not keep_alive:
        lines.append("Connection: close\r\n")
    elif request is not None and request.version == "HTTP/1.0":
        lines.append("Connection: keep-alive\r\n")  # an HTTP/1.0 client closes unless told otherwise
    lines.append("\r\n")
    head = "".join(lines).encode("latin-1")
    # RFC 9110 §9.3.2: the response to HEAD is that of GET, Content-Length included, without the content.
    if not body or (request is not None and request.is_head):
        return head
    return head + body


def error_response(error: HttpError) -> bytes:
    """The response to a request that raised `error`: its status, its reason as the body, then close."""
    return render_response(None, error.status, f"{error.status} {error.reason}\n".encode())


# --8<-- [end:render]
