"""In-process unit tests of the application (`app.py`, phase 4 on): `Application.respond` for each outcome of
the router, `render`, the demo routes, and the static files handler one function at a time: the path's
segments, the walk that opens them, conditional requests and ranges. Two tests of the router as the
application uses it are here too: mutation testing of router.py found them missing.

They call the phase's module in this process, with `Request` objects built as the parser builds them (names
lower-cased, values stripped) and a directory made for each test; a file body is read from the descriptor the
response holds, with os.pread, as sendfile would. Being in-process, they are what `make mutation` can run
against app.py (mutmut records only the calls a test makes in its own process); tests/test_static.py checks
the same rules over real sockets, through each server.py. Every test here must leave exactly the descriptors
it found: the fixture `no_descriptor_leaks` counts them.
"""

from __future__ import annotations

import errno
import json
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from test_static import write_lease

from conftest import Phase

pytestmark = pytest.mark.needs("static_files")

TEXT = b"0123456789abcdefghij"  # 20 bytes
SECRET = b"the secret outside the root"


@pytest.fixture
def app(phase: Phase) -> ModuleType:
    return phase.import_module("app")


@pytest.fixture
def protocol(phase: Phase) -> ModuleType:
    return phase.import_module("protocol")


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_descriptor_leaks() -> Iterator[None]:
    """Each test ends with the descriptors it began with: a response that forgets to close its file, or a
    walk that forgets a directory, fails the test that caused it. (Autouse, so set up first, torn down last:
    after the application's root descriptor is closed.)"""
    before = open_descriptors()
    yield
    assert open_descriptors() == before, "a descriptor was left open"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """tmp_path/root is served; what lies beside it, and the symlinks in it, must never be."""
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "hello.txt").write_bytes(TEXT)
    (root / "page.html").write_bytes(b"<p>hi</p>")
    (root / "one.txt").write_bytes(b"1")
    (root / "empty.txt").write_bytes(b"")
    (root / "LICENSE").write_bytes(b"no extension, no type")
    (root / "data:,x").write_bytes(b"a file name that guess_type would read as a data: URL")
    (root / "sub" / "data.json").write_bytes(b"{}")
    (root / "sub" / "deeper" / "more.txt").write_bytes(b"three levels down")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(SECRET)
    (tmp_path / "root-private").mkdir()  # a sibling whose name starts with the root's
    (tmp_path / "root-private" / "secret.txt").write_bytes(SECRET)
    (root / "escape").symlink_to(tmp_path / "outside")
    (root / "private").symlink_to(tmp_path / "root-private")
    (root / "inside-link.txt").symlink_to(root / "hello.txt")
    (root / "inside-dir").symlink_to(root / "sub")
    os.mkfifo(root / "pipe")
    return root


@pytest.fixture
def application(app: ModuleType, site: Path) -> Iterator[Any]:
    """The demo application serving `site`; its root descriptor is closed at teardown."""
    made = app.build_application(site)
    yield made
    os.close(static_handler(made).root_fd)


def static_handler(application: Any) -> Any:
    return application.router.lookup("GET", "/static/x").handler


def request(protocol: ModuleType, target: str, *headers: str, method: str = "GET", body: bytes = b"") -> Any:
    """A Request as the parser makes one: field names lower-cased, values stripped; HTTP/1.1, keep-alive."""
    fields = [(name.strip().lower(), value.strip()) for name, _, value in (h.partition(":") for h in headers)]
    path = target.partition("?")[0]
    return protocol.Request(method, target, path, "HTTP/1.1", fields, True, False, body)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # by name, as written: each in its usual case, so the head is the same bytes
    body: bytes
    sent_file: bool  # the body is a file range, for sendfile


def answer(application: Any, protocol: ModuleType, target: str, *headers: str, method: str = "GET") -> Answer:
    """What `respond` gives for the request, parsed; a file's range is read with pread and its fd closed."""
    rendered = application.respond(request(protocol, target, *headers, method=method))
    sent_file = not isinstance(rendered, bytes)
    if sent_file:
        head = rendered.head
        file = rendered.body
        try:
            body = os.pread(file.fd, file.length, file.offset)
        finally:
            os.close(file.fd)
        assert len(body) == file.length, "the range runs past the end of the file"
    else:
        head, _, body = rendered.partition(b"\r\n\r\n")
        head += b"\r\n\r\n"
    assert head.endswith(b"\r\n\r\n")
    status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    fields = {name: value for name, _, value in (line.partition(": ") for line in lines)}
    if not sent_file and "Content-Length" in fields and method != "HEAD":
        assert int(fields["Content-Length"]) == len(body)
    assert "Connection" not in fields, "a keep-alive request, answered as the end of its connection"
    return Answer(int(status_line.split(" ")[1]), fields, body, sent_file)


# --- Application.respond: the router's outcomes, and the demo routes ------------------------------------


def test_the_demo_routes(application: Any, protocol: ModuleType) -> None:
    hello = answer(application, protocol, "/")
    assert (hello.status, hello.body, hello.headers["Content-Type"]) == (
        200,
        b"Hello, World!",
        protocol.TEXT_PLAIN,
    )
    hello_json = answer(application, protocol, "/json")
    assert (hello_json.status, hello_json.headers["Content-Type"]) == (200, "application/json")
    assert json.loads(hello_json.body) == {"message": "Hello, World!"}
    user = answer(application, protocol, "/users/7")
    assert (user.status, user.body, user.headers["Content-Type"]) == (200, b'{"id": 7}', "application/json")
    echoed = application.respond(request(protocol, "/echo", method="POST", body=b"\x00 some bytes"))
    assert echoed.endswith(b"\r\n\r\n\x00 some bytes")
    assert b"Content-Type: application/octet-stream\r\n" in echoed


def test_404_405_and_options(application: Any, protocol: ModuleType) -> None:
    missing = answer(application, protocol, "/nowhere")
    assert (missing.status, missing.body) == (404, b"Not Found\n")
    not_allowed = answer(application, protocol, "/json", method="POST")
    assert (not_allowed.status, not_allowed.body) == (405, b"Method Not Allowed\n")
    assert not_allowed.headers["Allow"] == "GET, HEAD, OPTIONS"  # RFC 9110 §15.5.6
    options = answer(application, protocol, "/echo", method="OPTIONS")
    assert (options.status, options.body, options.headers["Allow"]) == (204, b"", "OPTIONS, POST")


def test_a_raising_handler_costs_its_request_a_500_and_a_traceback(
    application: Any, protocol: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(request: Any, params: Any) -> Any:
        raise ZeroDivisionError("planted in a handler")

    application.router.add("GET", "/broken", broken)
    failed = answer(application, protocol, "/broken?x=1")
    assert (failed.status, failed.body) == (500, b"Internal Server Error\n")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("handler for GET /broken failed:\nTraceback (most recent call last):\n")
    assert captured.err.endswith("ZeroDivisionError: planted in a handler\n")


def test_a_file_response_with_a_bad_header_closes_its_file(
    app: ModuleType, application: Any, protocol: ModuleType, site: Path
) -> None:
    """render() owns the file until the server has it: if rendering the head raises (a CR or LF in a header
    value is response splitting, refused), the descriptor is closed before the error goes up."""

    def splitting(request: Any, params: Any) -> Any:
        fd = os.open(site / "hello.txt", os.O_RDONLY)
        return app.Response(200, app.FileRange(fd, 0, 20), headers=[("X-Note", "a\r\nSet-Cookie: b")])

    application.router.add("GET", "/splitting", splitting)
    with pytest.raises(ValueError, match="CR or LF"):
        application.respond(request(protocol, "/splitting"))


# --- the router, as the application uses it ------------------------------------------------------------
# Found by `make mutation` over router.py (tests/test_router.py's cases never met them).


def test_a_path_that_spells_a_pattern_is_no_route(application: Any, protocol: ModuleType) -> None:
    """Only a pattern without parameters is a path of its own (the router's dict of exact paths): a client
    that asks for "/users/{id:int}" literally gets a 404, not the handler without its parameter, nor a 500."""
    for target in ("/users/{id:int}", "/static/{path:path}"):
        missing = answer(application, protocol, target)
        assert (missing.status, missing.body) == (404, b"Not Found\n"), target


def test_a_route_with_a_bad_method_fails_naming_it(phase: Phase, application: Any) -> None:
    router = phase.import_module("router")
    with pytest.raises(
        router.RouteError, match=r"^'GET POST' is not an HTTP method \(RFC 9110 §9\.1: a token\)$"
    ):
        application.router.add("GET POST", "/both", lambda request, params: None)


# --- static files: what is served, and how ---------------------------------------------------------------


def test_a_file_with_its_headers(application: Any, protocol: ModuleType, site: Path) -> None:
    served = answer(application, protocol, "/static/hello.txt")
    info = (site / "hello.txt").stat()
    assert (served.status, served.body, served.sent_file) == (200, TEXT, True)
    assert served.headers["Content-Type"] == "text/plain"
    assert served.headers["Content-Length"] == "20"
    assert served.headers["ETag"] == f'"{info.st_mtime_ns:x}-{info.st_size:x}"'
    assert served.headers["Last-Modified"] == protocol.format_http_date(info.st_mtime)
    assert served.headers["Accept-Ranges"] == "bytes"
    assert "Content-Range" not in served.headers
    assert answer(application, protocol, "/static/sub/deeper/more.txt").body == b"three levels down"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("page.html", "text/html"),
        ("sub/data.json", "application/json"),
        ("LICENSE", "application/octet-stream"),  # unknown: bytes, never text a client might render
        ("data:,x", "application/octet-stream"),  # a file name, not a data: URL
    ],
)
def test_content_type_is_guessed_from_the_name(
    application: Any, protocol: ModuleType, name: str, content_type: str
) -> None:
    assert answer(application, protocol, f"/static/{name}").headers["Content-Type"] == content_type


def test_head_and_empty_files_send_no_file(application: Any, protocol: ModuleType) -> None:
    """RFC 9110 §9.3.2: HEAD gets GET's head, Content-Length included, and no body: the file is closed at
    once. So is an empty file's: there is nothing to send."""
    head = answer(application, protocol, "/static/hello.txt", method="HEAD")
    assert (head.status, head.body, head.sent_file, head.headers["Content-Length"]) == (200, b"", False, "20")
    empty = answer(application, protocol, "/static/empty.txt")
    assert (empty.status, empty.body, empty.sent_file, empty.headers["Content-Length"]) == (
        200,
        b"",
        False,
        "0",
    )
    one = answer(application, protocol, "/static/one.txt")
    assert (one.status, one.body, one.sent_file) == (200, b"1", True)


def test_a_root_that_is_not_a_directory_fails_at_start_up(app: ModuleType, site: Path) -> None:
    """Not with a 404 for every request later: O_DIRECTORY makes opening it fail at once."""
    with pytest.raises(NotADirectoryError):
        app.StaticFiles(site / "hello.txt")


def test_without_a_static_dir_every_path_is_404(app: ModuleType, protocol: ModuleType) -> None:
    application = app.build_application()
    assert static_handler(application).root_fd is None
    missing = answer(application, protocol, "/static/hello.txt")
    assert (missing.status, missing.body) == (404, b"Not Found\n")


# --- static files: the path, and the walk that opens it ----------------------------------------------------


def test_the_router_hands_dot_segments_to_the_handler_as_they_are(application: Any) -> None:
    """The first layer: the router neither resolves nor drops "." and "..": it decodes them once and hands
    them on. (A router that made "sub/../hello.txt" "hello.txt" would serve what the handler refuses.)"""
    static = static_handler(application)
    for path, captured in [
        ("/static/sub/../hello.txt", "sub/../hello.txt"),
        ("/static/sub/%2e%2e/hello.txt", "sub/../hello.txt"),
        ("/static/%2E%2E/secret.txt", "../secret.txt"),
        ("/static/./hello.txt", "./hello.txt"),
        ("/static/%2e%2e%2fsecret.txt", "../secret.txt"),
        ("/static/%252e%252e/x", "%2e%2e/x"),
    ]:
        found = application.router.lookup("GET", path)
        assert (found.handler, found.params) == (static, {"path": captured}), path


@pytest.mark.parametrize(
    "relative",
    [
        "..",
        "../secret.txt",
        "sub/../hello.txt",  # stays inside, but a file has one path only
        "sub/..",
        ".",
        "./hello.txt",
        "sub/./data.json",
        "",
        "/etc/passwd",  # what "%2fetc%2fpasswd" decodes to: its first segment is empty
        "sub//data.json",
        "sub/",
        "hello.txt\x00.html",
        "..\\secret.txt",
        "sub\\data.json",
    ],
)
def test_path_segments_refuses_anything_but_plain_names(app: ModuleType, relative: str) -> None:
    """The second layer: the handler's own check, on the decoded path, before any system call."""
    assert app.path_segments(relative) is None


@pytest.mark.parametrize(
    ("relative", "segments"),
    [
        ("hello.txt", ["hello.txt"]),
        ("sub/deeper/more.txt", ["sub", "deeper", "more.txt"]),
        ("...", ["..."]),  # three dots is a name like any other
        ("..hidden", ["..hidden"]),
        ("%2e%2e", ["%2e%2e"]),  # decoded once already: this is the name "%2e%2e"
    ],
)
def test_path_segments_splits_plain_names(app: ModuleType, relative: str, segments: list[str]) -> None:
    assert app.path_segments(relative) == segments


@pytest.mark.parametrize(
    "path",
    [
        "/static/sub/../hello.txt",
        "/static/sub/%2e%2e/hello.txt",
        "/static/../outside/secret.txt",
        "/static/escape/secret.txt",  # a symlink to a directory outside
        "/static/private/secret.txt",  # root-private/, beside root/: "inside" by string prefix only
        "/static/inside-link.txt",  # a symlink to a file inside: not followed either
        "/static/inside-dir/data.json",
        "/static/hello.txt/x",  # a file where a directory should be
        "/static/sub",  # a directory is never listed
        "/static/pipe",  # a FIFO: opening it must not wait for a writer
        "/static/missing.txt",
        "/static/" + "x" * 300,  # longer than a name may be (ENAMETOOLONG)
    ],
)
def test_what_is_not_a_plain_file_inside_the_root_is_404(
    application: Any, protocol: ModuleType, path: str
) -> None:
    """The third layer: the whole handler, through respond(), as the server calls it."""
    refused = answer(application, protocol, path)
    assert (refused.status, refused.body) == (404, b"Not Found\n")


def test_open_beneath_follows_no_symlink_and_holds_no_directory(app: ModuleType, site: Path) -> None:
    root_fd = os.open(site, os.O_PATH | os.O_DIRECTORY)
    try:
        for segments, error in [
            (["escape", "secret.txt"], errno.ENOTDIR),  # O_NOFOLLOW|O_DIRECTORY on a symlink: ENOTDIR
            (["inside-link.txt"], errno.ELOOP),  # O_NOFOLLOW on the last name: ELOOP
            (["hello.txt", "x"], errno.ENOTDIR),
            (["sub", "missing"], errno.ENOENT),
        ]:
            with pytest.raises(OSError) as raised:
                app.open_beneath(root_fd, segments)
            assert raised.value.errno == error, segments
        for _ in range(2):  # the root's descriptor is still open after a walk: the second one works too
            fd = app.open_beneath(root_fd, ["sub", "deeper", "more.txt"])
            try:
                assert os.pread(fd, 100, 0) == b"three levels down"
                assert os.get_blocking(fd) is False  # O_NONBLOCK: a FIFO or device would not wait
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)


def test_the_root_is_opened_once_and_renaming_it_changes_nothing(
    app: ModuleType, protocol: ModuleType, site: Path, tmp_path: Path
) -> None:
    """The walk starts from the root's descriptor, not its name: moved, or its name taken, it is the same
    directory."""
    application = app.build_application(site)
    try:
        site.rename(tmp_path / "moved")
        (tmp_path / "root").symlink_to(tmp_path / "outside")  # the old name now leads elsewhere
        assert answer(application, protocol, "/static/hello.txt").body == TEXT
        assert answer(application, protocol, "/static/secret.txt").status == 404
    finally:
        os.close(static_handler(application).root_fd)


def test_a_file_under_another_holders_lease_is_503(
    application: Any, protocol: ModuleType, site: Path
) -> None:
    """With O_NONBLOCK, opening a file on which a write lease is held fails at once with EAGAIN instead of
    waiting for the holder (up to /proc/sys/fs/lease-break-time): the file exists, it is just not ready."""
    with write_lease(site / "hello.txt"):
        busy = answer(application, protocol, "/static/hello.txt")
    assert (busy.status, busy.body, busy.headers["Retry-After"]) == (503, b"Service Unavailable\n", "1")


@pytest.mark.parametrize("free", [0, 1])
def test_out_of_descriptors_is_503_not_404(application: Any, protocol: ModuleType, free: int) -> None:
    """EMFILE says the server is short, not that the file is missing: 503 with Retry-After (RFC 9110
    §15.6.4), never a 404 that a cache would keep. With one descriptor free, sub/ opens and the file does
    not: the directory is closed all the same (no_descriptor_leaks checks)."""
    lowest_free = os.dup(
        0
    )  # open() takes the lowest free number, and fails with EMFILE if it is >= the limit
    os.close(lowest_free)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free + free, hard))
    try:
        short = answer(application, protocol, "/static/sub/data.json")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert (short.status, short.body, short.headers["Retry-After"]) == (503, b"Service Unavailable\n", "1")
    assert answer(application, protocol, "/static/sub/data.json").body == b"{}"


def test_a_handler_that_fails_after_the_open_closes_the_file(
    app: ModuleType, application: Any, protocol: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(request: Any, etag: str, size: int) -> Any:
        raise ZeroDivisionError("planted after the open")

    monkeypatch.setattr(app, "requested_range", broken)
    with pytest.raises(ZeroDivisionError):
        static_handler(application)(request(protocol, "/static/hello.txt"), {"path": "hello.txt"})


# --- conditional requests -----------------------------------------------------------------------------


def test_conditional_requests(application: Any, protocol: ModuleType, site: Path) -> None:
    served = answer(application, protocol, "/static/hello.txt")
    etag, modified = served.headers["ETag"], served.headers["Last-Modified"]
    for value in (etag, f"W/{etag}", f'"other", {etag}', f' "other" ,W/{etag} ', "*"):
        fresh = answer(application, protocol, "/static/hello.txt", f"If-None-Match: {value}")
        assert (fresh.status, fresh.body, fresh.sent_file) == (304, b"", False), value
        assert (fresh.headers["ETag"], fresh.headers["Last-Modified"]) == (etag, modified)
        assert "Content-Length" not in fresh.headers  # RFC 9110 §15.4.5
    for value in ('"other"', etag.strip('"'), f'W/"{etag}"'):
        assert answer(application, protocol, "/static/hello.txt", f"If-None-Match: {value}").status == 200
    assert answer(application, protocol, "/static/hello.txt", f"If-Modified-Since: {modified}").status == 304
    # If-None-Match wins (RFC 9110 §13.2.2), whatever If-Modified-Since says.
    both = ('If-None-Match: "other"', f"If-Modified-Since: {modified}")
    assert answer(application, protocol, "/static/hello.txt", *both).status == 200


@pytest.mark.parametrize(
    ("since", "modified"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", True),  # the same second as the file: not modified since
        ("Sun, 06 Nov 1994 08:49:38 GMT", True),
        ("Sun, 06 Nov 1994 08:49:36 GMT", False),  # a second earlier: modified since
        ("Sun, 06 Nov 1994 09:49:37 +0100", True),  # another zone, the same instant
        ("not a date", False),  # §13.1.3: an invalid date is ignored
        ("", False),
        ("Mon, 01 Jan 2000 00:00:00 +99999999999999999999", False),  # OverflowError in email.utils
        ("Mon, 01 Jan 99999 00:00:00 GMT", False),
        ("Mon, 31 Feb 2000 00:00:00 GMT", False),
    ],
)
def test_not_modified_by_date(app: ModuleType, protocol: ModuleType, since: str, modified: bool) -> None:
    mtime = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT
    conditional = request(protocol, "/static/x", f"If-Modified-Since: {since}")
    assert app.not_modified(conditional, '"tag"', mtime) is modified


def test_not_modified_without_a_condition(app: ModuleType, protocol: ModuleType) -> None:
    assert app.not_modified(request(protocol, "/static/x"), '"tag"', 0) is False


# --- ranges -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "body", "content_range"),
    [
        ("bytes=0-4", TEXT[0:5], "bytes 0-4/20"),
        ("bytes=5-5", TEXT[5:6], "bytes 5-5/20"),  # first == last: one byte, a valid range
        ("bytes=15-", TEXT[15:], "bytes 15-19/20"),
        ("bytes=19-", TEXT[19:], "bytes 19-19/20"),
        ("bytes=-3", TEXT[-3:], "bytes 17-19/20"),
        ("bytes=-20", TEXT, "bytes 0-19/20"),
        ("bytes=-100", TEXT, "bytes 0-19/20"),
        ("bytes=10-999", TEXT[10:], "bytes 10-19/20"),
        ("bytes=0-19", TEXT, "bytes 0-19/20"),
        ("BYTES=0-4", TEXT[0:5], "bytes 0-4/20"),  # RFC 9110 §14.1: range units are case-insensitive
        ("bytes = 0-4 ", TEXT[0:5], "bytes 0-4/20"),
        ("bytes=-" + "9" * 5000, TEXT, "bytes 0-19/20"),  # int() alone raises past 4,300 digits
        ("bytes=0-" + "9" * 5000, TEXT, "bytes 0-19/20"),
        ("bytes=" + "0" * 5000 + "5-9", TEXT[5:10], "bytes 5-9/20"),
    ],
)
def test_a_single_range_is_206(
    application: Any, protocol: ModuleType, spec: str, body: bytes, content_range: str
) -> None:
    partial = answer(application, protocol, "/static/hello.txt", f"Range: {spec}")
    assert (partial.status, partial.body, partial.sent_file) == (206, body, True)
    assert partial.headers["Content-Range"] == content_range
    assert partial.headers["Content-Length"] == str(len(body))
    assert partial.headers["Content-Type"] == "text/plain" and partial.headers["Accept-Ranges"] == "bytes"


@pytest.mark.parametrize(
    ("path", "spec", "length"),
    [
        ("hello.txt", "bytes=20-", 20),
        ("hello.txt", "bytes=100-200", 20),
        ("hello.txt", "bytes=-0", 20),
        ("hello.txt", "bytes=" + "1" * 4301 + "-", 20),
        ("empty.txt", "bytes=-5", 0),  # no last bytes of nothing
        ("empty.txt", "bytes=0-", 0),
    ],
)
def test_an_unsatisfiable_range_is_416(
    application: Any, protocol: ModuleType, path: str, spec: str, length: int
) -> None:
    refused = answer(application, protocol, f"/static/{path}", f"Range: {spec}")
    assert (refused.status, refused.body) == (416, b"Range Not Satisfiable\n")
    assert refused.headers["Content-Range"] == f"bytes */{length}"  # RFC 9110 §15.5.17


@pytest.mark.parametrize(
    "headers",
    [
        ("Range: bytes=0-1,5-6",),
        ("Range: bytes=5-2",),
        ("Range: bytes=9999999999999999999-1000000000000000000",),  # 19 digits each: still compared
        ("Range: bytes=" + "9" * 5000 + "-1",),
        ("Range: items=0-1",),
        ("Range: bytes=a-b",),
        ("Range: bytes=0x1-2",),
        ("Range: bytes=\u00b2-",),  # a superscript two: str.isdigit() says yes, it is no ASCII digit
        ("Range: bytes=",),
        ("Range: bytes=-",),
        ("Range: bytes 0-4",),
        ("Range: bytes=0-4", 'If-Range: "stale"'),  # §13.1.5: the client's copy is another one
    ],
)
def test_ranges_we_do_not_serve_get_the_whole_file(
    application: Any, protocol: ModuleType, headers: tuple[str, ...]
) -> None:
    whole = answer(application, protocol, "/static/hello.txt", *headers)
    assert (whole.status, whole.body) == (200, TEXT)
    assert "Content-Range" not in whole.headers


def test_if_range_with_the_current_etag_gets_the_range(application: Any, protocol: ModuleType) -> None:
    etag = answer(application, protocol, "/static/hello.txt").headers["ETag"]
    partial = answer(application, protocol, "/static/hello.txt", "Range: bytes=0-1", f"If-Range: {etag}")
    assert (partial.status, partial.body) == (206, TEXT[:2])


def test_a_range_is_for_get_only(application: Any, protocol: ModuleType) -> None:
    """RFC 9110 §14.2: Range is ignored for any method but GET; a HEAD gets the head of the whole 200."""
    head = answer(application, protocol, "/static/hello.txt", "Range: bytes=0-4", method="HEAD")
    assert (head.status, head.headers["Content-Length"], head.sent_file) == (200, "20", False)
    assert "Content-Range" not in head.headers


@pytest.mark.parametrize(
    ("digits", "value"),
    [
        ("0", 0),
        ("007", 7),
        ("9" * 19, 10**19 - 1),  # the longest position read as it is: more than any file's size
        ("0" * 5000 + "42", 42),  # leading zeros do not count
    ],
)
def test_byte_position_reads_positions_a_file_can_have(app: ModuleType, digits: str, value: int) -> None:
    assert app.byte_position(digits) == value


@pytest.mark.parametrize("digits", ["1" + "0" * 19, "9" * 4301, "9" * 50_000])
def test_byte_position_caps_longer_ones_past_any_file(app: ModuleType, digits: str) -> None:
    assert app.byte_position(digits) == app.PAST_ANY_FILE > 2**63
