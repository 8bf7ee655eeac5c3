"""Tests for chapter 4's exercises that change what the server does: run them against your own solution.

No phase of this repository solves these exercises, so none declares their capabilities
(`exercise_phase4_...`) and every test here is deselected for our phases. To check your solution, copy the
phase inside the repository, change the copy, add the exercise's capability to the `CAPABILITIES` of its
`__init__.py`, and run:

    cp -r phase4_routing my_phase4
    .venv/bin/pytest tests/test_exercises_phase4.py --phase-dir my_phase4

The route-type exercise is tested like `tests/test_router.py`, on your copy's `router.py` with plain strings;
the static-file exercises are black-box, like `tests/test_static.py`: they start your copy with
`--static-dir` on a directory made for the test and talk to it over real sockets. The tradeoff: they check
the behaviour the exercise describes, not a particular solution, so the exercise's wording is the
specification.
"""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from test_http import HttpClient, get

from conftest import Phase, RunningServer

# --- exercise 1: a {name:uuid} route type ------------------------------------------------------------------

SOME_UUID = "123e4567-e89b-12d3-a456-426614174000"


@pytest.fixture
def router(phase: Phase) -> ModuleType:
    return phase.import_module("router")


def routes(router: ModuleType, *patterns: str) -> Any:
    """A Router with a GET route per pattern, each handler being its own pattern, so a result says which."""
    table = router.Router()
    for pattern in patterns:
        table.add("GET", pattern, pattern)
    return table


@pytest.mark.needs("routing", "exercise_phase4_uuid")
def test_phase4_uuid_segment_gives_the_handler_a_uuid(router: ModuleType) -> None:
    """Chapter 4, exercise 1: `{name:uuid}` matches one segment in the canonical 8-4-4-4-12 hexadecimal form,
    in either case, and the handler gets a `uuid.UUID`."""
    table = routes(router, "/orders/{order:uuid}")
    for spelling in (SOME_UUID, SOME_UUID.upper()):
        found = table.lookup("GET", f"/orders/{spelling}")
        assert isinstance(found, router.Found), f"/orders/{spelling} was not found"
        assert found.params == {"order": uuid.UUID(SOME_UUID)}
        assert isinstance(found.params["order"], uuid.UUID)


@pytest.mark.needs("routing", "exercise_phase4_uuid")
@pytest.mark.parametrize(
    "segment",
    [
        SOME_UUID.replace("-", ""),  # uuid.UUID() takes these four spellings: the route does not
        "{" + SOME_UUID + "}",
        "urn:uuid:" + SOME_UUID,
        SOME_UUID.replace("-", "%2D"),
        SOME_UUID[:-1],
        SOME_UUID + "0",
        SOME_UUID.replace("a", "g"),
        "123",
        "",
    ],
)
def test_phase4_uuid_segment_takes_the_canonical_form_only(router: ModuleType, segment: str) -> None:
    table = routes(router, "/orders/{order:uuid}")
    assert isinstance(table.lookup("GET", f"/orders/{segment}"), router.NotFound)


@pytest.mark.needs("routing", "exercise_phase4_uuid")
def test_phase4_uuid_precedence_and_conflicts(router: ModuleType) -> None:
    """Static beats {uuid}, {uuid} beats {name}; two {uuid} parameters at the same place conflict, a {uuid}
    and a {name} do not; a dead end under {uuid} backs up to {name}."""
    table = routes(router, "/orders/{slug}", "/orders/{order:uuid}", "/orders/new", "/orders/{slug}/items")
    assert table.lookup("GET", f"/orders/{SOME_UUID}").handler == "/orders/{order:uuid}"
    assert table.lookup("GET", "/orders/new").handler == "/orders/new"
    assert table.lookup("GET", "/orders/latest").params == {"slug": "latest"}
    backed_up = table.lookup("GET", f"/orders/{SOME_UUID}/items")
    assert (backed_up.handler, backed_up.params) == ("/orders/{slug}/items", {"slug": SOME_UUID})
    with pytest.raises(router.RouteError, match=r"/orders/\{order:uuid\}"):
        table.add("GET", "/orders/{other:uuid}", "again")
    table.add("POST", "/orders/{other:uuid}", "another method")  # another method: no conflict


@pytest.mark.needs("routing", "exercise_phase4_uuid")
def test_phase4_uuid_lookups_never_raise(router: ModuleType) -> None:
    table = routes(router, "/orders/{order:uuid}", "/orders/{order:uuid}/{rest:path}")
    for path in ("/orders/" + "f" * 100_000, "/orders/%zz", "/orders/\x00", "/orders/" + "-" * 36):
        assert isinstance(table.lookup("GET", path), router.NotFound), path
    found = table.lookup("GET", f"/orders/{SOME_UUID}/%zz")
    assert found.params == {"order": uuid.UUID(SOME_UUID), "rest": "%zz"}


# --- exercise 2: index.html for a directory ----------------------------------------------------------------

INDEX = b"<!doctype html><title>docs</title><p>the index</p>"
SECRET = b"the secret outside the root"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """root/docs/ has an index.html, root/empty/ has none, root/trap/index.html links out of the root;
    root/alias links to docs/, and root/linked/index.html to docs/index.html: symlinks that stay inside, which
    the static files never follow either."""
    root = tmp_path / "root"
    for directory in ("docs", "empty", "trap", "linked"):
        (root / directory).mkdir(parents=True)
    (root / "docs" / "index.html").write_bytes(INDEX)
    (root / "docs" / "other.txt").write_bytes(b"other")
    (root / "empty" / "listed.txt").write_bytes(b"never listed")
    (tmp_path / "secret.html").write_bytes(SECRET)
    (root / "trap" / "index.html").symlink_to(tmp_path / "secret.html")
    (root / "alias").symlink_to(root / "docs")
    (root / "linked" / "index.html").symlink_to(root / "docs" / "index.html")
    return root


def fetch(server: RunningServer, path: str, *headers: str, method: str = "GET") -> Any:
    with HttpClient(server) as client:
        client.send(get(path, *headers).replace(b"GET", method.encode(), 1))
        return client.response(method)


@pytest.mark.needs("static_files", "exercise_phase4_index_html")
def test_phase4_a_directory_with_a_slash_serves_its_index_html(
    site: Path, start_server: Callable[..., RunningServer]
) -> None:
    """Chapter 4, exercise 2: `/static/docs/` serves `docs/index.html`, as `/static/docs/index.html` does,
    with the same headers, HEAD and conditional requests included."""
    server = start_server("--static-dir", str(site))
    response = fetch(server, "/static/docs/")
    assert (response.status, response.body) == (200, INDEX)
    assert response.header("Content-Type") == "text/html"
    direct = fetch(server, "/static/docs/index.html")
    assert (direct.status, direct.body, direct.header("ETag")) == (200, INDEX, response.header("ETag"))
    head = fetch(server, "/static/docs/", method="HEAD")
    assert (head.status, head.body, head.header("Content-Length")) == (200, b"", str(len(INDEX)))
    etag = response.header("ETag")
    assert fetch(server, "/static/docs/", f"If-None-Match: {etag}").status == 304


@pytest.mark.needs("static_files", "exercise_phase4_index_html")
@pytest.mark.parametrize(
    "path",
    [
        "/static/docs",  # no slash: strict, as every route is (no redirect either)
        "/static/empty/",  # no index.html: still never a listing
        "/static/empty",
        "/static/trap/",  # an index.html that is a symlink out of the root
        "/static/alias/",  # a symlink to a directory inside the root: no symlink is followed
        "/static/linked/",  # an index.html that is a symlink to a file inside the root: not followed either
        "/static/docs//",
        "/static/docs/./",
        "/static/docs/other.txt/",
    ],
)
def test_phase4_no_index_no_listing_and_no_escape(
    site: Path, start_server: Callable[..., RunningServer], path: str
) -> None:
    server = start_server("--static-dir", str(site))
    response = fetch(server, path)
    assert 400 <= response.status < 500, f"{path}: {response.status}"
    assert SECRET not in response.body and b"listed.txt" not in response.body and INDEX not in response.body


# --- exercise 3: precompressed files -----------------------------------------------------------------------

TEXT = b"the same words, again and again. " * 64


@pytest.fixture
def compressed_site(tmp_path: Path) -> Path:
    """page.txt with a page.txt.gz beside it; plain.txt without one."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "page.txt").write_bytes(TEXT)
    (root / "page.txt.gz").write_bytes(gzip.compress(TEXT, mtime=0))
    (root / "plain.txt").write_bytes(TEXT)
    return root


@pytest.mark.needs("static_files", "exercise_phase4_gzip_static")
def test_phase4_a_client_that_accepts_gzip_gets_the_gz_file(
    compressed_site: Path, start_server: Callable[..., RunningServer]
) -> None:
    """Chapter 4, exercise 3: with `Accept-Encoding: gzip`, `/static/page.txt` is `page.txt.gz`'s bytes,
    with `Content-Encoding: gzip`, the original's `Content-Type`, `Vary: Accept-Encoding`, and an ETag of its
    own."""
    server = start_server("--static-dir", str(compressed_site))
    packed = fetch(server, "/static/page.txt", "Accept-Encoding: gzip, deflate")
    assert packed.status == 200 and packed.body == (compressed_site / "page.txt.gz").read_bytes()
    assert gzip.decompress(packed.body) == TEXT
    assert packed.header("Content-Encoding") == "gzip"
    assert packed.header("Content-Type").startswith("text/plain")
    assert "accept-encoding" in (packed.header("Vary") or "").lower()
    plain = fetch(server, "/static/page.txt")
    assert plain.status == 200 and plain.body == TEXT and plain.header("Content-Encoding") is None
    assert "accept-encoding" in (plain.header("Vary") or "").lower(), "a cache must know the answer varies"
    assert packed.header("ETag") != plain.header("ETag"), "two representations, one ETag"
    assert fetch(server, "/static/page.txt", f"If-None-Match: {plain.header('ETag')}").status == 304
    revalidated = fetch(
        server, "/static/page.txt", "Accept-Encoding: gzip", f"If-None-Match: {packed.header('ETag')}"
    )
    assert revalidated.status == 304


@pytest.mark.needs("static_files", "exercise_phase4_gzip_static")
@pytest.mark.parametrize("accept", ["identity", "gzip;q=0", "br", "deflate, gzip;q=0.0"])
def test_phase4_gzip_only_when_the_client_accepts_it(
    compressed_site: Path, start_server: Callable[..., RunningServer], accept: str
) -> None:
    server = start_server("--static-dir", str(compressed_site))
    response = fetch(server, "/static/page.txt", f"Accept-Encoding: {accept}")
    assert (response.status, response.body, response.header("Content-Encoding")) == (200, TEXT, None)


@pytest.mark.needs("static_files", "exercise_phase4_gzip_static")
def test_phase4_gzip_without_a_gz_file_and_ranges_of_the_gz(
    compressed_site: Path, start_server: Callable[..., RunningServer]
) -> None:
    """No .gz beside the file: the file itself. A range applies to the representation sent, the .gz."""
    server = start_server("--static-dir", str(compressed_site))
    plain = fetch(server, "/static/plain.txt", "Accept-Encoding: gzip")
    assert (plain.status, plain.body, plain.header("Content-Encoding")) == (200, TEXT, None)
    packed = (compressed_site / "page.txt.gz").read_bytes()
    part = fetch(server, "/static/page.txt", "Accept-Encoding: gzip", "Range: bytes=0-9")
    assert (part.status, part.body) == (206, packed[:10])
    assert part.header("Content-Range") == f"bytes 0-9/{len(packed)}"
    assert fetch(server, "/static/page.txt.gz").body == packed  # the .gz is still a file of its own
