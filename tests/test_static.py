"""Black-box tests of static files (phase 4 on): headers, conditional requests, ranges, path traversal (a
directory swapped for a symlink mid-request included), what is not a regular file (a FIFO), a server out of
descriptors, every file's descriptor closed once its answer is out, and large files sent with sendfile to
clients that read slowly, pipelined or not, with what may happen while one goes out: the file truncated, a
SIGTERM, a head begun before the pause a file makes, more bytes sent after a closing request.

In-process unit tests of the same handler (tests/test_app.py) pin each rule down one function at a time;
these check that each server.py carries the rule to the wire."""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_abuse import (
    answered_quickly,
    fds_settle_at,
    read_until_closed,
    unread_by_the_server,
)
from test_http import HELLO, HttpClient, get

from conftest import FullDuplex, Phase, RunningServer
from tools.phases import phase_command

pytestmark = pytest.mark.needs("static_files")

TEXT = b"0123456789abcdefghij"  # 20 bytes
SECRET = b"the secret outside the root"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """tmp_path/root is served; tmp_path/secret.txt and tmp_path/outside/ must never be."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "hello.txt").write_bytes(TEXT)
    (root / "page.html").write_bytes(b"<p>hi</p>")
    (root / "sub" / "data.json").write_bytes(b"{}")
    (root / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(SECRET)
    (root / "escape").symlink_to(tmp_path / "outside")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (root / "inside-link.txt").symlink_to(root / "hello.txt")
    (root / "inside-dir").symlink_to(root / "sub")
    # A sibling whose name starts with the root's: a containment check by string prefix would let it in.
    (tmp_path / "root-private").mkdir()
    (tmp_path / "root-private" / "secret.txt").write_bytes(SECRET)
    (root / "private").symlink_to(tmp_path / "root-private")
    (root / "LICENSE").write_bytes(b"no extension, no type")
    return root


@pytest.fixture
def files(site: Path, start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server("--static-dir", str(site))


def fetch(server: RunningServer, path: str, *headers: str, method: str = "GET") -> Any:
    with HttpClient(server) as client:
        client.send(get(path, *headers).replace(b"GET", method.encode(), 1))
        return client.response(method)


def test_a_file_with_its_headers(files: RunningServer, site: Path) -> None:
    response = fetch(files, "/static/hello.txt")
    assert response.status == 200 and response.body == TEXT
    assert response.header("Content-Type").startswith("text/plain")
    assert response.header("Content-Length") == "20"
    assert response.header("Accept-Ranges") == "bytes"
    modified = email.utils.parsedate_to_datetime(response.header("Last-Modified")).timestamp()
    assert modified == int((site / "hello.txt").stat().st_mtime)
    assert response.header("ETag").startswith('"')
    assert fetch(files, "/static/page.html").header("Content-Type") == "text/html"
    assert fetch(files, "/static/sub/data.json").header("Content-Type") == "application/json"
    # A type we cannot name is bytes, not text: a client must not render what it cannot know is text.
    assert fetch(files, "/static/LICENSE").header("Content-Type") == "application/octet-stream"


def test_head_of_a_file(files: RunningServer) -> None:
    response = fetch(files, "/static/hello.txt", method="HEAD")
    assert response.status == 200 and response.body == b"" and response.header("Content-Length") == "20"


def test_head_then_get_on_one_connection(files: RunningServer) -> None:
    """A HEAD answered with the file's bytes after its head would be read as the start of the next answer:
    the GET behind it on the same connection is what notices."""
    head = get("/static/hello.txt").replace(b"GET", b"HEAD", 1)
    head_of_a_range = get("/static/hello.txt", "Range: bytes=0-4").replace(b"GET", b"HEAD", 1)
    with HttpClient(files) as client:
        client.send(head + head_of_a_range + get("/static/hello.txt"))
        for _ in range(2):
            response = client.response("HEAD")
            assert (response.status, response.header("Content-Length")) == (200, "20")
        assert client.response().body == TEXT


def test_without_a_static_dir_the_route_is_404(server: RunningServer) -> None:
    assert fetch(server, "/static/hello.txt").status == 404


def test_a_missing_static_dir_is_one_line_and_exit_2(phase: Phase, tmp_path: Path) -> None:
    command = phase_command(phase.name, "--static-dir", str(tmp_path / "nope"))
    done = subprocess.run(command, cwd=phase.root, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: --static-dir {tmp_path / 'nope'}: not a directory"]


# --- conditional requests -----------------------------------------------------------------------------


def test_if_none_match_gives_304(files: RunningServer) -> None:
    etag = fetch(files, "/static/hello.txt").header("ETag")
    for value in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = fetch(files, "/static/hello.txt", f"If-None-Match: {value}")
        assert response.status == 304 and response.body == b"" and response.header("ETag") == etag
    assert fetch(files, "/static/hello.txt", 'If-None-Match: "other"').status == 200


def test_if_modified_since(files: RunningServer) -> None:
    modified = fetch(files, "/static/hello.txt").header("Last-Modified")
    assert fetch(files, "/static/hello.txt", f"If-Modified-Since: {modified}").status == 304
    an_hour_earlier = email.utils.parsedate_to_datetime(modified).timestamp() - 3600
    older = email.utils.formatdate(an_hour_earlier, usegmt=True)
    assert fetch(files, "/static/hello.txt", f"If-Modified-Since: {older}").status == 200
    assert fetch(files, "/static/hello.txt", "If-Modified-Since: not a date").status == 200
    # A zone offset of 20 digits: email.utils raises OverflowError, which must not be a 500.
    overflow = "If-Modified-Since: Mon, 01 Jan 2000 00:00:00 +99999999999999999999"
    assert fetch(files, "/static/hello.txt", overflow).status == 200
    etag_mismatch = ('If-None-Match: "other"', f"If-Modified-Since: {modified}")
    assert fetch(files, "/static/hello.txt", *etag_mismatch).status == 200  # If-None-Match wins


# --- ranges -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "body", "content_range"),
    [
        ("bytes=0-4", TEXT[0:5], "bytes 0-4/20"),
        ("bytes=15-", TEXT[15:], "bytes 15-19/20"),
        ("bytes=-3", TEXT[-3:], "bytes 17-19/20"),
        ("bytes=10-999", TEXT[10:], "bytes 10-19/20"),
        ("bytes=-100", TEXT, "bytes 0-19/20"),
        # Positions of any length: int() alone raises past 4,300 digits (sys.get_int_max_str_digits).
        ("bytes=-" + "9" * 5000, TEXT, "bytes 0-19/20"),
        ("bytes=0-" + "9" * 5000, TEXT, "bytes 0-19/20"),
        ("bytes=" + "0" * 5000 + "5-9", TEXT[5:10], "bytes 5-9/20"),
    ],
)
def test_a_single_range_is_206(files: RunningServer, spec: str, body: bytes, content_range: str) -> None:
    response = fetch(files, "/static/hello.txt", f"Range: {spec}")
    assert response.status == 206 and response.body == body
    assert response.header("Content-Range") == content_range


@pytest.mark.parametrize("spec", ["bytes=20-", "bytes=100-200", "bytes=-0", "bytes=" + "1" * 4301 + "-"])
def test_an_unsatisfiable_range_is_416(files: RunningServer, spec: str) -> None:
    response = fetch(files, "/static/hello.txt", f"Range: {spec}")
    assert response.status == 416 and response.header("Content-Range") == "bytes */20"


REVERSED_PAST_ANY_FILE = "bytes=" + "9" * 5000 + "-1"  # last-pos before first-pos: an invalid range-spec


@pytest.mark.parametrize(
    "spec",
    ["bytes=0-1,5-6", "bytes=5-2", "items=0-1", "bytes=a-b", "bytes=0x1-2", "bytes=", REVERSED_PAST_ANY_FILE],
)
def test_ranges_we_do_not_serve_get_the_whole_file(files: RunningServer, spec: str) -> None:
    response = fetch(files, "/static/hello.txt", f"Range: {spec}")
    assert response.status == 200 and response.body == TEXT


def test_a_range_is_for_get_only(files: RunningServer) -> None:
    """RFC 9110 §14.2: a server MUST ignore Range for any method but GET; HEAD gets the head of the 200."""
    response = fetch(files, "/static/hello.txt", "Range: bytes=0-4", method="HEAD")
    assert (response.status, response.header("Content-Length")) == (200, "20")
    assert response.header("Content-Range") is None


def test_every_file_answer_closes_the_file_it_opened(files: RunningServer, site: Path) -> None:
    """Every file answer opens the file; sent whole (a 200, a 206, a large file sent over many writes) or not
    at all (HEAD, 304, 416), its descriptor must be closed once the answer is out. One descriptor leaked per
    file sent shows here as 41 more, and on a real server as EMFILE after some thousand downloads."""
    etag = fetch(files, "/static/hello.txt").header("ETag")
    head = get("/static/hello.txt").replace(b"GET", b"HEAD", 1)
    answers = [
        (get("/static/hello.txt"), "GET", 200),
        (get("/static/hello.txt", "Range: bytes=2-5"), "GET", 206),
        (head, "HEAD", 200),
        (get("/static/hello.txt", f"If-None-Match: {etag}"), "GET", 304),
        (get("/static/hello.txt", "Range: bytes=100-"), "GET", 416),
    ]
    with HttpClient(files, timeout=20) as client:
        client.send(get("/"))
        client.response()
        baseline = files.open_fds()  # this connection included: it stays open throughout
        for _ in range(20):
            client.send(b"".join(request for request, _, _ in answers))
            assert [client.response(method).status for _, method, _ in answers] == [s for _, _, s in answers]
        client.send(get("/static/big.bin"))
        assert client.response().body == (site / "big.bin").read_bytes()
        # Each answer has been read whole: a descriptor still open once the server is done with it is a leak.
        assert fds_settle_at(files, baseline) == baseline


def test_if_range_with_another_etag_gets_the_whole_file(files: RunningServer) -> None:
    etag = fetch(files, "/static/hello.txt").header("ETag")
    assert fetch(files, "/static/hello.txt", "Range: bytes=0-1", f"If-Range: {etag}").status == 206
    assert fetch(files, "/static/hello.txt", "Range: bytes=0-1", 'If-Range: "old"').status == 200


# --- path traversal -----------------------------------------------------------------------------------

TRAVERSALS = [
    "/static/../secret.txt",
    "/static/%2e%2e/secret.txt",
    "/static/%2E%2E/secret.txt",
    "/static/..%2fsecret.txt",
    "/static/..%2Fsecret.txt",
    "/static/%2e%2e%2fsecret.txt",
    "/static/sub/../../secret.txt",
    "/static/sub/%2e%2e/%2e%2e/secret.txt",
    "/static/sub/../hello.txt",  # a ".." that stays inside is refused too: each path has one spelling
    "/static/sub/%2e%2e/hello.txt",
    "/static/sub/./data.json",
    "/static/..%5csecret.txt",
    "/static/%252e%252e/secret.txt",
    "/static/%252e%252e%252fsecret.txt",
    "/static/hello.txt%00.html",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/escape/secret.txt",
    "/static/escape.txt",
    "/static/private/secret.txt",  # root-private/, beside root/: inside by string prefix only
    "/static/./hello.txt",
    "/static/sub",
    "/static/sub/",
    "/static/",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_path_leads_out_of_the_root_and_no_directory_is_listed(files: RunningServer, path: str) -> None:
    with HttpClient(files) as client:
        client.send(get(path))
        response = client.response()
    assert 400 <= response.status < 500
    assert SECRET not in response.body and b"data.json" not in response.body


@pytest.mark.parametrize("path", ["/static/inside-link.txt", "/static/inside-dir/data.json"])
def test_no_symlink_is_followed_not_even_one_inside_the_root(files: RunningServer, path: str) -> None:
    """The walk opens every name with O_NOFOLLOW: a symlink is a 404 wherever it leads (nginx's
    `disable_symlinks on`), so that none can be swapped in while a request walks through it."""
    assert fetch(files, path).status == 404
    assert fetch(files, "/static/hello.txt").body == TEXT  # the same files, by their own names
    assert fetch(files, "/static/sub/data.json").body == b"{}"


RACE_SECONDS = 3.0  # issue 20 saw a check-then-open serve the outside file hundreds of times in 15 s


def test_a_directory_swapped_for_a_symlink_never_leads_out_of_the_root(
    files: RunningServer, site: Path, tmp_path: Path
) -> None:
    """The race of issue 20 (time of check to time of use): a thread swaps root/swap, a directory, for a
    symlink to a directory outside and back, as fast as it can, while requests for swap/secret.txt go on.
    Checking a path and then opening it by name would let some through; opening it one name at a time
    from the root lets none. Every answer is the inside file or a 404, never the outside one, never a 500."""
    (site / "swap").mkdir()
    (site / "swap" / "secret.txt").write_bytes(TEXT)  # the same name as outside/secret.txt, other bytes
    parked_directory, parked_link = tmp_path / "parked-directory", tmp_path / "parked-link"
    parked_link.symlink_to(tmp_path / "outside")
    stop = threading.Event()
    swaps = 0

    def swap() -> None:  # rename() is atomic: "swap" is the directory, nothing, or the symlink
        nonlocal swaps
        while not stop.is_set():
            os.rename(site / "swap", parked_directory)
            os.rename(parked_link, site / "swap")
            os.rename(site / "swap", parked_link)
            os.rename(parked_directory, site / "swap")
            swaps += 1

    statuses: dict[int, int] = {}
    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    try:
        with HttpClient(files) as client:
            # A few seconds of requests, and at least one answered from the directory and one not.
            started = time.monotonic()
            while time.monotonic() - started < RACE_SECONDS or len(statuses) < 2:
                assert time.monotonic() - started < 60, f"the race never showed both sides: {statuses}"
                client.send(get("/static/swap/secret.txt"))
                response = client.response()
                assert response.body != SECRET, f"served from outside the root after {statuses}"
                assert response.status in (200, 404), f"{response.status}: {response.body!r}"
                assert response.status == 404 or response.body == TEXT
                statuses[response.status] = statuses.get(response.status, 0) + 1
    finally:
        stop.set()
        swapper.join(timeout=10)
    assert swaps > 0, statuses


# --- what cannot be opened at once, or not now ------------------------------------------------------------


def test_a_fifo_is_404_and_never_blocks_the_server(files: RunningServer, site: Path) -> None:
    """Opening a FIFO for reading waits for a writer, for ever: the file is opened with O_NONBLOCK, then
    served only if fstat says it is a regular file."""
    os.mkfifo(site / "pipe")
    with HttpClient(files) as client:
        client.send(get("/static/pipe"))
        assert client.response().status == 404
        client.send(get("/"))
        assert client.response().body == HELLO


@contextlib.contextmanager
def write_lease(path: Path) -> Iterator[None]:
    """Hold a write lease on `path` (fcntl F_SETLEASE, as Samba takes them) for the `with` block: any other
    open() of the file must wait for this process to let go, or fail with EAGAIN if it is O_NONBLOCK. Skips
    where leases are refused (/proc/sys/fs/leases-enable at 0, a file system without them)."""
    # The holder hears of each open by SIGIO, whose default action is to end the process: this one.
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError as error:
            pytest.skip(f"no write lease on {path}: {error}")
        try:
            yield
        finally:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    finally:
        os.close(fd)
        signal.signal(signal.SIGIO, previous)


def test_a_file_another_process_holds_a_lease_on_is_503_then_served(files: RunningServer, site: Path) -> None:
    """An open() of a file under another process's write lease waits up to /proc/sys/fs/lease-break-time,
    45 s, for the holder to let go; with O_NONBLOCK it fails at once with EAGAIN: the file is there, just
    not now, so 503 and Retry-After."""
    with write_lease(site / "hello.txt"):
        response = fetch(files, "/static/hello.txt")
    assert (response.status, response.header("Retry-After")) == (503, "1")
    assert fetch(files, "/static/hello.txt").body == TEXT


FD_LIMIT = 64  # the server's hard RLIMIT_NOFILE in the next test: what a few dozen connections fill


@pytest.fixture
def files_with_few_descriptors(phase: Phase, site: Path) -> Iterator[RunningServer]:
    """The server of `files`, started with a hard limit of FD_LIMIT descriptors (the server raises its soft
    limit to the hard one, so the hard one is what must be low) and one worker, whose table is the one
    that fills. A Python prefix sets the limit and execs the server, so its pid is the server's."""
    set_limit_and_exec = (
        "import os, resource, sys;"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, {FD_LIMIT}));"
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    workers = ("--workers", "1") if "multi_process" in phase.capabilities else ()
    server = RunningServer(
        phase.name,
        "--static-dir",
        str(site),
        *workers,
        root=phase.root,
        prefix=(sys.executable, "-c", set_limit_and_exec),
    )
    yield server
    server.stop()
    failure = server.failure()
    if failure is not None:
        pytest.fail(f"server pid {server.pid} {failure}")


def test_out_of_descriptors_an_existing_file_is_503_never_404(
    files_with_few_descriptors: RunningServer,
) -> None:
    """Issue 20: with the descriptor table full, opening a file fails with EMFILE, which says nothing about
    the file; a 404 would be wrong, and kept by any cache. Connections are opened one at a time, each one
    answered (so the server holds it), until a file can no longer be opened: every answer until then is a
    200 or a 503 with Retry-After, and once connections close the same files are served again."""
    server = files_with_few_descriptors
    prober = HttpClient(server)
    held: list[HttpClient] = []
    statuses: list[int] = []
    try:
        while not statuses or statuses[-1] != 503:  # until hello.txt, the cheaper of the two, fails too
            assert len(held) <= FD_LIMIT, f"the table never filled: {statuses}"
            client = HttpClient(server)  # accepted: the last answer shows a descriptor was free
            held.append(client)
            client.send(get("/"))
            assert client.response().body == HELLO
            # sub/data.json takes two descriptors at once (sub/, then the file), hello.txt one.
            for path, body in (("/static/sub/data.json", b"{}"), ("/static/hello.txt", TEXT)):
                prober.send(get(path))
                response = prober.response()
                statuses.append(response.status)
                if response.status != 200:
                    assert (response.status, response.header("Retry-After")) == (503, "1"), (
                        f"{path}: {statuses}"
                    )
                else:
                    assert response.body == body
        for client in held[-3:]:
            client.close()
        deadline = time.monotonic() + 10
        while (response := fetch_on(prober, "/static/sub/data.json")).status == 503:
            assert time.monotonic() < deadline, "the server never noticed the closes"
        assert (response.status, response.body) == (200, b"{}")
    finally:
        for client in (prober, *held):
            client.close()


def fetch_on(client: HttpClient, path: str) -> Any:
    client.send(get(path))
    return client.response()


# --- large files, slow readers, pipelines --------------------------------------------------------------


def test_a_large_file_to_a_client_that_does_not_read_never_blocks_the_others(
    files: RunningServer, site: Path
) -> None:
    big = (site / "big.bin").read_bytes()
    with files.connect(timeout=10, receive_buffer=65536) as slow:
        slow.sendall(get("/static/big.bin"))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # two seconds of other clients, answered fast
            started = time.monotonic()
            assert fetch(files, "/").body == HELLO
            assert time.monotonic() - started < 0.5
        reader = slow.makefile("rb")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += reader.read(1)
        assert reader.read(len(big)) == big


def test_a_file_pipelined_between_two_small_answers_stays_in_order(files: RunningServer, site: Path) -> None:
    big = (site / "big.bin").read_bytes()
    with HttpClient(files, timeout=20) as client:
        client.send(
            get("/") + get("/static/big.bin") + get("/static/hello.txt", "Range: bytes=0-1") + get("/")
        )
        assert client.response().body == HELLO
        assert client.response().body == big
        assert client.response().body == TEXT[:2]
        assert client.response().body == HELLO


def small_window_socket(server: RunningServer, timeout: float = 20.0) -> socket.socket:
    """A client socket with a small receive buffer, set before connect() so that the window is small from the
    start: what the server sends and the client does not read soon fills it, then the server's socket."""
    return server.connect(timeout, receive_buffer=65536)


class SmallWindowClient(HttpClient):
    """An HttpClient on a small_window_socket()."""

    def __init__(self, server: RunningServer, timeout: float = 20.0) -> None:
        super().__init__(server, timeout, receive_buffer=65536)


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Receive until the end of an answer's head -> (the head, the bytes of the body received with it)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the end of the head: {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body


def unread_by_the_client(sock: socket.socket) -> int:
    """The bytes waiting in `sock`'s receive queue (FIONREAD)."""
    count: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    return count


def wait_until_the_answer_stops_arriving(sock: socket.socket, within: float = 20.0) -> None:
    """Wait, reading nothing, until what the server sends us has filled the socket buffers: our receive queue
    holds bytes and has not grown for half a second. A server sending a file then meets a full socket (its
    sendfile fails with EAGAIN), and backpressure pauses its reading. (A server stalled that long by a busy
    machine would end the wait early: the test that waits then proves less, and still passes.)"""
    deadline = time.monotonic() + within
    queued, unchanged_since = unread_by_the_client(sock), time.monotonic()
    while not queued or time.monotonic() - unchanged_since < 0.5:
        assert time.monotonic() < deadline, f"the answer kept arriving for {within} s, unread"
        time.sleep(0.01)
        now_queued = unread_by_the_client(sock)
        if now_queued != queued:
            queued, unchanged_since = now_queued, time.monotonic()


def server_stops_reading_before(client: FullDuplex, within: float = 30.0) -> bool:
    """Send on, reading nothing, until the server leaves what `client` sent unread (its receive queue holds
    bytes, unchanged for half a second: it has stopped reading, and TCP's window stops us) -> True; or until
    everything is sent -> False (the server read it all)."""
    deadline = time.monotonic() + within
    unread, unchanged_since = -1, time.monotonic()
    while client.unsent and client.send_error is None:
        assert time.monotonic() < deadline, f"the server neither paused nor read it all in {within} s"
        now_unread = unread_by_the_server(client.sock)
        if now_unread != unread:
            unread, unchanged_since = now_unread, time.monotonic()
        elif unread and time.monotonic() - unchanged_since >= 0.5:
            return True
        client.run(None, within=0.01, reading=False)
    return False


PIPELINE_BEHIND_A_FILE = 32 * 1024 * 1024  # bytes of requests: many times what the socket buffers hold


def test_requests_pipelined_behind_a_file_read_slowly_then_not_at_all_wait_in_the_kernel(
    files: RunningServer,
) -> None:
    """A client pipelines request after request behind a large file, reads half of it slowly, then no more.
    Nothing can be answered before that file, so while it is in flight the server must read nothing more from
    the client, however often the socket has room for more of the file: whatever it read it would have to
    hold, and 32 MiB of requests would be 32 MiB of its memory, or all of it. Unread, they wait in the kernel,
    whose buffers fill and stop the client (TCP's window). And only the one file being sent is open: the
    800,000 requests behind it wait, unparsed."""
    baseline_fds, baseline_rss = files.open_fds(), files.rss_bytes()
    request = get("/static/big.bin")
    with small_window_socket(files) as sock:
        client = FullDuplex(sock)
        client.queue(request * (PIPELINE_BEHIND_A_FILE // len(request)))
        while len(client.received) < 4 * 1024 * 1024:  # each read makes room: the server sends more of it
            assert client.receive_more(within=10), f"{client.ended or 'nothing'} after {len(client.received)}"
            time.sleep(0.005)
        assert server_stops_reading_before(client), "the server read every request behind the file"
        growth = files.rss_bytes() - baseline_rss
        assert growth < 8 * 1024 * 1024, f"the server holds {growth / 2**20:.0f} MiB more for one client"
        # The connection, and the one file being sent.
        assert files.open_fds() <= baseline_fds + 2
    assert fetch(files, "/").body == HELLO
    assert fds_settle_at(files, baseline_fds) == baseline_fds


def test_a_file_truncated_while_it_is_sent_ends_its_answer_and_the_server_serves_on(
    phase: Phase, site: Path, start_server: Callable[..., RunningServer]
) -> None:
    """The head promised the file's length; once the file is shorter than the offset reached, sendfile
    returns 0 at once, and will for ever. The server must then close the connection (a body shorter than its
    Content-Length is how HTTP/1.1 says "cut short"), not call sendfile again and again at 100 % CPU while
    every other client of that loop waits."""
    shrinking = site / "shrinking.bin"
    size = 8 * 1024 * 1024
    shrinking.write_bytes(os.urandom(size))
    # One worker, the loop that must serve on. A supervisor kills a worker stuck for --heartbeat-timeout (10 s
    # by default) and starts another, which hides a stuck loop, but only from clients that waited that long.
    one_patient_worker = ("--workers", "1", "--heartbeat-timeout", "120")
    supervised = one_patient_worker if "supervisor" in phase.capabilities else ()
    files = start_server("--static-dir", str(site), *supervised)
    with small_window_socket(files) as sock:
        sock.sendall(get("/static/shrinking.bin"))
        head, body = read_head(sock)  # the answer has begun: the rest waits for us to read it
        assert head.startswith(b"HTTP/1.1 200 ") and f"Content-Length: {size}".encode() in head
        os.truncate(shrinking, 0)
        rest, ending = read_until_closed(sock, within=20)
    assert ending in ("eof", "reset"), f"{len(body + rest)} body bytes, and the connection still open"
    assert len(body + rest) < size
    assert answered_quickly(files, within=5)


@pytest.mark.needs("graceful_shutdown")
def test_sigterm_lets_a_file_download_in_progress_finish(
    phase: Phase, site: Path, start_server: Callable[..., RunningServer]
) -> None:
    """A drain finishes every answer that has begun, a file's too, however slowly the client reads it: this
    one reads the head, then nothing for longer than DRAIN_GRACE (the second an idle connection gets to send
    a last request: a download is not idle), then the rest. It gets every byte, then the server's close."""
    one_worker = ("--workers", "1") if "multi_process" in phase.capabilities else ()
    server = start_server("--static-dir", str(site), "--shutdown-timeout", "60", *one_worker)
    big = (site / "big.bin").read_bytes()
    with small_window_socket(server) as sock:
        sock.sendall(get("/static/big.bin"))
        _, body = read_head(sock)
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not re.search(r"draining \d+ connection", server.stderr_so_far()):
            assert time.monotonic() < deadline, f"no drain began: {server.stderr_so_far()}"
            time.sleep(0.01)
        time.sleep(1.5)  # the client's pause, not a wait for the server: a slow link, a busy phone
        rest, ending = read_until_closed(sock, within=20)
    received = body + rest
    assert received == big, f"{len(received)} of {len(big)} bytes, then {ending}"
    assert ending == "eof"
    assert server.process.wait(timeout=20) == 0


@pytest.mark.needs("http_timeouts")
def test_a_head_begun_before_a_file_paused_the_reading_is_timed_once_the_reading_resumes(
    site: Path, start_server: Callable[..., RunningServer]
) -> None:
    """A file in flight pauses the reading (backpressure), and no clock runs while the server itself is not
    reading. But the client sent, with the file's request, the start of a head that it never finishes: once
    the file is read and reading resumes, that head is a slowloris like any other, cut by the header timeout
    with a 408, not left open until the idle timeout. Its first bytes arrived before the pause, so no new
    byte comes to start its clock: the resumption must."""
    server = start_server("--static-dir", str(site), "--header-timeout", "1", "--idle-timeout", "60")
    big = (site / "big.bin").read_bytes()
    with SmallWindowClient(server) as client:
        client.send(get("/static/big.bin") + b"GET / HTTP/1.1\r\nHost: test\r\n")  # never finished
        wait_until_the_answer_stops_arriving(client.sock)  # the server has met a full socket, and paused
        assert client.response().body == big
        client.sock.settimeout(15)  # far past the header timeout, far short of the idle timeout
        try:
            response = client.response()
        except TimeoutError:
            pytest.fail("no 408 within 15 s: the unfinished head escaped the header timeout")
        assert response.status == 408
        assert client.is_closed_by_server()


def test_what_a_client_sends_while_a_closing_file_answer_goes_out_is_drained(
    files: RunningServer, site: Path
) -> None:
    """`Connection: close` on a large file, and the client sends more while the file goes out (the next
    request of its pipeline, sent before it saw the close), when the server is not reading (a file in flight
    pauses the reading). Once the file is sent, the lingering close half-closes and must read again, draining
    those bytes: left unread in the server's receive queue, they make its close() send a reset, which destroys
    whatever of the answer the client has not read yet."""
    big = (site / "big.bin").read_bytes()
    with small_window_socket(files) as sock:
        sock.sendall(get("/static/big.bin", "Connection: close"))
        _, body = read_head(sock)  # the file goes out, and the server's reading is paused
        sock.sendall(get("/"))
        rest, ending = read_until_closed(sock, within=20)
        assert (body + rest, ending) == (big, "eof")
        deadline = time.monotonic() + 10
        try:
            while unread_by_the_server(sock):
                assert time.monotonic() < deadline, "our bytes lay unread in the server's receive queue"
                time.sleep(0.01)
        except (LookupError, OSError):  # its end is gone, and ours was reset (ENOTCONN)
            pytest.fail("the server closed the connection with our bytes unread: its close sent a reset")
