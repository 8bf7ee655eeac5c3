"""The application: the handler API, the demo routes, and static files served by the server with sendfile.

A handler takes the request and the parameters the router captured, and returns a `Response`: a status,
headers, and a body that is bytes or an open `FileRange`. Handlers never touch sockets; `Application.respond`
turns their responses into what the server sends: bytes, or a `FileReply` (the head as bytes, the body as a
file range that the server hands to os.sendfile, so the file's bytes never pass through Python).

The tradeoff: a handler runs on its worker's event loop, so a slow one (or a file read that misses the page
cache) stalls every connection of that worker while it runs; an application that blocks needs threads.

A `FixedResponse` is a handler whose response never changes. The application keeps the bytes it rendered for
one, and answers the same request with them until the `Date` line changes, a second later: no routing, no
handler, no rendering. The tradeoff: those bytes must be exactly what the handler and the renderer would
have produced, for every way a request can ask for them (tests/test_perf.py compares the two).
"""

from __future__ import annotations

import email.utils
import errno
import json
import mimetypes
import os
import stat
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .protocol import TEXT_PLAIN, Request, date_line, format_http_date, render_response
from .router import Found, MethodNotAllowed, NotFound, Options, Router


# --8<-- [start:api]
@dataclass(slots=True)
class FileRange:
    """The bytes [offset, offset + length) of an open file: a body the server sends, then closes."""

    fd: int
    offset: int
    length: int


@dataclass(slots=True)
class Response:
    """What a handler returns. The server adds Date, Content-Length and, when it closes, Connection."""

    status: int = 200
    body: bytes | FileRange = b""
    content_type: str = TEXT_PLAIN
    headers: Sequence[tuple[str, str]] = ()


Params = dict[str, str | int]
Handler = Callable[[Request, Params], Response]


@dataclass(slots=True)
class FileReply:
    """A rendered response whose body is a file: the server sends `head`, then `body` with os.sendfile."""

    head: bytes
    body: FileRange


@dataclass(frozen=True, slots=True)
class FixedResponse:
    """A handler whose response never changes: the application renders it once per second, not per request."""

    response: Response

    def __call__(self, request: Request, params: Params) -> Response:
        return self.response


# --8<-- [end:api]

HELLO = b"Hello, World!"
JSON = "application/json"


# --8<-- [start:respond]
class Application:
    """The routes, and the one method the server calls: a request in, the bytes to send out."""

    def __init__(self, router: Router[Handler], *, cache_responses: bool = True) -> None:
        self.router = router
        self.cache_responses = cache_responses
        # The bytes of FixedResponse routes, by what they depend on: method (HEAD has no body), path,
        # keep-alive (`Connection: close`) and version. Bounded: only a route without parameters is cached,
        # so each path is one the router knows. Emptied when the Date line changes: rendered once a second.
        self.rendered_responses: dict[tuple[str, str, bool, str], bytes] = {}
        self.rendered_date_line = ""

    def respond(self, request: Request) -> bytes | FileReply:
        """The response to `request`, rendered; a handler that raises costs its request a 500, no more."""
        key = (request.method, request.path, request.keep_alive, request.version)
        if self.cache_responses:
            if self.rendered_date_line is not date_line():  # date_line() returns one str object per second
                self.rendered_responses.clear()
                self.rendered_date_line = date_line()
            rendered = self.rendered_responses.get(key)
            if rendered is not None:  # the fast path: no routing, no handler, no rendering
                return rendered
        match = self.router.lookup(request.method, request.path)
        if isinstance(match, Found):
            try:
                response = match.handler(request, match.params)
            except Exception:
                # A bug in one handler: this request gets a 500, and the connection carries on.
                failed = f"handler for {request.method} {request.path} failed"
                print(f"{failed}:\n{traceback.format_exc()}", end="", file=sys.stderr, flush=True)
                return render_response(request, 500, b"Internal Server Error\n")
            reply = render(request, response)
            fixed = isinstance(match.handler, FixedResponse) and not match.params
            if self.cache_responses and fixed and isinstance(reply, bytes):
                self.rendered_responses[key] = reply
            return reply
        if isinstance(match, MethodNotAllowed):  # RFC 9110 §15.5.6: a 405 MUST say what is allowed
            allow = [("Allow", ", ".join(match.allow))]
            return render_response(request, 405, b"Method Not Allowed\n", headers=allow)
        if isinstance(match, Options):  # RFC 9110 §9.3.7: OPTIONS on a known path, answered with Allow
            return render_response(request, 204, headers=[("Allow", ", ".join(match.allow))])
        assert isinstance(match, NotFound)
        return render_response(request, 404, b"Not Found\n")


def render(request: Request, response: Response) -> bytes | FileReply:
    """A handler's response -> the bytes to send, or the head and the file range the server sends after it."""
    body = response.body
    if isinstance(body, bytes):
        return render_response(
            request, response.status, body, content_type=response.content_type, headers=response.headers
        )
    try:
        head = render_response(
            request,
            response.status,
            content_type=response.content_type,
            headers=response.headers,
            body_length=body.length,
        )
    except BaseException:
        os.close(body.fd)  # the file is ours until the server has it: a bad header must not leak it
        raise
    if request.is_head or body.length == 0:  # RFC 9110 §9.3.2: HEAD gets the headers of GET, no content
        os.close(body.fd)
        return head
    return FileReply(head, body)


# --8<-- [end:respond]


# --8<-- [start:routes]
hello = FixedResponse(Response(body=HELLO))
hello_json = FixedResponse(Response(body=b'{"message":"Hello, World!"}', content_type=JSON))


def user(request: Request, params: Params) -> Response:
    return Response(body=json.dumps({"id": params["id"]}).encode(), content_type=JSON)


def echo(request: Request, params: Params) -> Response:
    return Response(body=request.body, content_type="application/octet-stream")


def build_application(static_dir: Path | None = None, *, cache_responses: bool = True) -> Application:
    """The demo application; /static/... serves files under `static_dir` (404 without one)."""
    router: Router[Handler] = Router()
    router.add("GET", "/", hello)
    router.add("GET", "/json", hello_json)
    router.add("GET", "/users/{id:int}", user)
    router.add("POST", "/echo", echo)
    router.add("GET", "/static/{path:path}", StaticFiles(static_dir))
    return Application(router, cache_responses=cache_responses)


# --8<-- [end:routes]


# --8<-- [start:static]
# A request's path is opened one name at a time, each name in the directory opened before it (openat), from a
# descriptor of the root: no name is looked up twice, so none can be swapped between a check and the open,
# and O_NOFOLLOW makes a symlink anywhere on the way an error, never a detour. O_PATH opens a directory only
# to open names in it (nothing is read). O_CLOEXEC is what os.open adds anyway (PEP 446), written out here.
DIRECTORY_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO or a device never waits for a writer, nor a file for the holder of a lease to
# let go; a regular file ignores it otherwise, and sendfile reads it the same.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# open() failing for want of descriptors or memory (or, with O_NONBLOCK, because another process holds a
# lease on the file) says nothing about the file: a 503, never a 404 that a cache would keep.
UNAVAILABLE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})


class StaticFiles:
    """A handler for the files under one directory: conditional requests, one byte range, no listings, and
    no symlink followed."""

    def __init__(self, root: Path | None) -> None:
        # Opened once: every walk starts from this descriptor, never from the root's name.
        self.root_fd = None if root is None else os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def __call__(self, request: Request, params: Params) -> Response:
        segments = path_segments(str(params["path"]))
        if self.root_fd is None or segments is None:
            return Response(404, b"Not Found\n")
        try:
            fd = open_beneath(self.root_fd, segments)
        except OSError as error:
            if error.errno in UNAVAILABLE:  # RFC 9110 §15.6.4, with §10.2.3's Retry-After: seconds
                return Response(503, b"Service Unavailable\n", headers=[("Retry-After", "1")])
            return Response(404, b"Not Found\n")  # no such name, a symlink, a file where a directory was
        try:
            return self.file_response(request, fd, segments[-1])
        except BaseException:
            os.close(fd)
            raise

    def file_response(self, request: Request, fd: int, name: str) -> Response:
        """The response for an open file (fd is owned by the response, or closed here)."""
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # a directory never lists its contents; a FIFO is never read
            os.close(fd)
            return Response(404, b"Not Found\n")
        size = info.st_size
        etag = f'"{info.st_mtime_ns:x}-{size:x}"'
        validators = [("ETag", etag), ("Last-Modified", format_http_date(info.st_mtime))]
        if not_modified(request, etag, int(info.st_mtime)):
            os.close(fd)
            return Response(304, headers=validators)
        # guess_type reads a name such as "data:,x" as a data: URL; after a "/" it is always a file name.
        content_type = mimetypes.guess_type(f"/{name}")[0] or "application/octet-stream"
        headers = [*validators, ("Accept-Ranges", "bytes")]
        byte_range = requested_range(request, etag, size)
        if byte_range is None:
            return Response(200, FileRange(fd, 0, size), content_type, headers)
        if byte_range == UNSATISFIABLE:  # RFC 9110 §15.5.17: 416, with the current length
            os.close(fd)
            return Response(416, b"Range Not Satisfiable\n", headers=[("Content-Range", f"bytes */{size}")])
        first, last = byte_range
        headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
        return Response(206, FileRange(fd, first, last - first + 1), content_type, headers)


def path_segments(relative: str) -> list[str] | None:
    """The names to open, from the root down, for the path `relative`; None if it names nothing we serve."""
    # The router decoded the percent-escapes once: "%2e%2e" is ".." here, "%252e" is the name "%2e".
    if "\x00" in relative or "\\" in relative:
        return None
    segments = relative.split("/")
    # openat() takes ".." from any directory, the root's included: this check alone keeps the walk inside.
    # No "." or "//" either, so that a file has one path; no "" first, so "/etc" is no absolute path.
    if any(segment in ("", ".", "..") for segment in segments):
        return None
    return segments


def open_beneath(root_fd: int, segments: list[str]) -> int:
    """The file named by `segments` under the directory `root_fd`, opened read-only with no symlink followed;
    raises OSError (ENOENT, ELOOP for a symlink, ENOTDIR, EMFILE, ...)."""
    directory = root_fd
    try:
        for segment in segments[:-1]:
            parent = directory
            directory = os.open(segment, DIRECTORY_FLAGS, dir_fd=parent)
            if parent != root_fd:
                os.close(parent)  # one directory held at a time, however deep the path
        return os.open(segments[-1], FILE_FLAGS, dir_fd=directory)
    finally:
        if directory != root_fd:
            os.close(directory)


# --8<-- [end:static]


# --8<-- [start:conditional]
def not_modified(request: Request, etag: str, mtime: int) -> bool:
    """RFC 9110 §13.1.2 and §13.1.3: True if the client's copy is current, so a 304 will do."""
    if_none_match = request.header("if-none-match")
    if if_none_match is not None:  # §13.2.2: If-None-Match wins over If-Modified-Since
        # §13.1.2: weak comparison, so W/"x" matches "x"; "*" matches any current representation.
        tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
        return "*" in tags or etag in tags
    if_modified_since = request.header("if-modified-since")
    if if_modified_since is None:
        return False
    try:
        since = email.utils.parsedate_to_datetime(if_modified_since).timestamp()
    except (TypeError, ValueError, OverflowError):  # OverflowError: a zone offset too large for a timedelta
        return False  # §13.1.3: an invalid date is ignored
    return mtime <= since


UNSATISFIABLE = (-1, -1)
# A file holds fewer than 2**63 bytes, a number of 19 digits: a longer position is past the end of any file,
# whatever its digits, and int() of more than 4,300 digits would raise (sys.get_int_max_str_digits).
MAX_POSITION_DIGITS = 19
PAST_ANY_FILE = 10**MAX_POSITION_DIGITS


def requested_range(request: Request, etag: str, size: int) -> tuple[int, int] | None:
    """The one byte range asked for, as (first, last) inclusive; None for the whole file; UNSATISFIABLE."""
    header = request.header("range")
    if header is None or request.method != "GET":
        return None
    if_range = request.header("if-range")  # §13.1.5: the range only if the client's copy is this one
    if if_range is not None and if_range != etag:
        return None
    # RFC 9110 §14.1.2:  ranges-specifier = range-unit "=" range-set;  we take one int-range or suffix-range:
    #   int-range = first-pos "-" [ last-pos ];  suffix-range = "-" suffix-length.  Anything else, including
    #   several ranges, is served whole (§14.2: a server MAY ignore the Range header field).
    unit, _, spec = header.partition("=")
    first_text, dash, last_text = spec.strip().partition("-")
    digits = first_text + last_text
    if unit.strip().lower() != "bytes" or not dash or not (digits.isascii() and digits.isdigit()):
        return None
    if not first_text:  # the last N bytes
        suffix = byte_position(last_text)
        return (max(0, size - suffix), size - 1) if suffix and size else UNSATISFIABLE
    first = byte_position(first_text)
    last = min(byte_position(last_text), size - 1) if last_text else size - 1
    if last_text and byte_position(last_text) < first:
        return None  # an invalid range-spec: ignored, like a header we cannot parse
    return (first, last) if first < size else UNSATISFIABLE


def byte_position(digits: str) -> int:
    """A first-pos, last-pos or suffix-length (1*DIGIT) as an int; PAST_ANY_FILE if it is longer than any
    file's size, which compares with a size the same way."""
    significant = digits.lstrip("0")  # leading zeros change nothing, and int() counts them against its limit
    return int(significant or "0") if len(significant) <= MAX_POSITION_DIGITS else PAST_ANY_FILE


# --8<-- [end:conditional]
