"""Black-box tests of static files (phase 4 on): headers, conditional requests, ranges, path traversal, and
large files sent with sendfile to clients that read slowly, pipelined or not."""

from __future__ import annotations

import email.utils
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_http import HELLO, HttpClient, get

from conftest import Phase, RunningServer
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


def test_head_of_a_file(files: RunningServer) -> None:
    response = fetch(files, "/static/hello.txt", method="HEAD")
    assert response.status == 200 and response.body == b"" and response.header("Content-Length") == "20"


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
    ],
)
def test_a_single_range_is_206(files: RunningServer, spec: str, body: bytes, content_range: str) -> None:
    response = fetch(files, "/static/hello.txt", f"Range: {spec}")
    assert response.status == 206 and response.body == body
    assert response.header("Content-Range") == content_range


@pytest.mark.parametrize("spec", ["bytes=20-", "bytes=100-200", "bytes=-0"])
def test_an_unsatisfiable_range_is_416(files: RunningServer, spec: str) -> None:
    response = fetch(files, "/static/hello.txt", f"Range: {spec}")
    assert response.status == 416 and response.header("Content-Range") == "bytes */20"


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "bytes=5-2", "items=0-1", "bytes=a-b", "bytes=0x1-2"])
def test_ranges_we_do_not_serve_get_the_whole_file(files: RunningServer, spec: str) -> None:
    response = fetch(files, "/static/hello.txt", f"Range: {spec}")
    assert response.status == 200 and response.body == TEXT


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
    "/static/..%5csecret.txt",
    "/static/%252e%252e/secret.txt",
    "/static/%252e%252e%252fsecret.txt",
    "/static/hello.txt%00.html",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/escape/secret.txt",
    "/static/escape.txt",
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


def test_a_symlink_inside_the_root_is_served(files: RunningServer) -> None:
    assert fetch(files, "/static/inside-link.txt").body == TEXT


# --- large files, slow readers, pipelines --------------------------------------------------------------


def test_a_large_file_to_a_client_that_does_not_read_never_blocks_the_others(
    files: RunningServer, site: Path
) -> None:
    big = (site / "big.bin").read_bytes()
    with socket.socket() as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        slow.settimeout(10)
        slow.connect(files.address)
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


def test_pipelined_files_nobody_reads_hold_one_descriptor_at_a_time(files: RunningServer) -> None:
    baseline = files.open_fds()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect(files.address)
        sender = threading.Thread(target=sock.sendall, args=(get("/static/big.bin") * 200,), daemon=True)
        sender.start()
        time.sleep(1)
        # The connection, and the one file being sent: 200 pipelined requests wait, unparsed.
        assert files.open_fds() <= baseline + 2
    assert fetch(files, "/").body == HELLO
    deadline = time.monotonic() + 5
    while files.open_fds() != baseline and time.monotonic() < deadline:
        time.sleep(0.05)  # the server notices the closes on its next turn of the loop
    assert files.open_fds() == baseline
