"""Tests for chapter 6's exercise that changes what the server does: run them against your own solution.

No phase of this repository solves it, so none declares its capability (`exercise_phase6_head_cache`) and
every test here is deselected for our phases. To check your solution, copy the phase inside the repository,
change the copy, add the capability to the `CAPABILITIES` of its `__init__.py`, and run:

    cp -r phase6_perf my_phase6
    .venv/bin/pytest tests/test_exercises_phase6.py --phase-dir my_phase6

Exercise 4 puts a cache of parsed heads in front of `parse_head`. The tests are unit tests of your copy's
`protocol.py`, like tests/test_protocol.py, with plain bytes: a repeated head is parsed once (counted as calls
to the request-head grammar, `REQUEST_HEAD.fullmatch`, the first thing `parse_head` does); every request is
one of its own; the limits still apply; the cache is bounded (its memory stops growing, measured with
tracemalloc). That the server still answers the same is the shared suite's to say: tests/test_perf.py and
tests/test_protocol.py, run on your copy. The tradeoff: the count needs `parse_head` to look the grammar up
by its module-level name, as ours does; a solution that binds it elsewhere passes the count unchecked.
"""

from __future__ import annotations

import gc
import re
import tracemalloc
import uuid
from types import ModuleType
from typing import Any

import pytest

from conftest import Phase

pytestmark = pytest.mark.needs("http", "exercise_phase6_head_cache")

REPEATS = 50
# Distinct heads per batch in the bound test: far more than a bounded cache should hold ("a few thousand").
BATCH = 20_000
# What a second batch of distinct heads may add to the memory still held. Unbounded, each head keeps its text,
# its Request and its header list, about 800 bytes on CPython 3.11: 16 MiB a batch. A cache of a few thousand
# heads holds a few MiB at most, whatever it evicts and when; half the unbounded growth tells the two apart.
BOUNDED_GROWTH = 8 * 1024 * 1024


class CountingPattern:
    """Stands in for the compiled REQUEST_HEAD: counts fullmatch() calls, and answers as the pattern does."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.calls = 0

    def fullmatch(self, string: str, *args: Any) -> re.Match[str] | None:
        self.calls += 1
        return self.pattern.fullmatch(string, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pattern, name)


@pytest.fixture
def protocol(phase: Phase) -> ModuleType:
    return phase.import_module("protocol")


@pytest.fixture
def grammar(protocol: ModuleType, monkeypatch: pytest.MonkeyPatch) -> CountingPattern:
    counting = CountingPattern(protocol.REQUEST_HEAD)
    monkeypatch.setattr(protocol, "REQUEST_HEAD", counting)
    return counting


def unique_path() -> str:
    """A path no earlier test parsed, so that its head cannot already be in the cache."""
    return f"/{uuid.uuid4().hex}"


def parse_all(protocol: ModuleType, data: bytes, limits: Any = None) -> list[Any]:
    parser = protocol.RequestParser(limits)
    parser.feed(data)
    requests = []
    while (request := parser.next_request()) is not None:
        requests.append(request)
    return requests


def test_phase6_head_cache_parses_a_head_once(protocol: ModuleType, grammar: CountingPattern) -> None:
    """Chapter 6, exercise 4: the same head, pipelined and in later reads of other parsers, is parsed at most
    twice in all (a cache may wait for a head's second sight to keep it); every request is the right one."""
    path = unique_path()
    head = f"GET {path}?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: wrk\r\n\r\n".encode()
    requests = parse_all(protocol, head * (REPEATS // 2))
    for _ in range(REPEATS - REPEATS // 2):
        requests += parse_all(protocol, head)
    assert len(requests) == REPEATS
    expected = ("GET", f"{path}?q=1", path, "HTTP/1.1")
    for request in requests:
        assert (request.method, request.target, request.path, request.version) == expected
        assert request.headers == [("host", "example.com"), ("user-agent", "wrk")]
        assert request.keep_alive
    assert grammar.calls <= 2, f"{REPEATS} identical heads went through parse_head {grammar.calls} times"
    other = parse_all(protocol, f"GET {path}/other HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
    assert [request.path for request in other] == [f"{path}/other"], "another head got a cached request"


def test_phase6_head_cache_gives_every_request_its_own_copy(protocol: ModuleType) -> None:
    """Handlers may keep or change the request they are given: a hit is a copy, never the cached object.
    Two POSTs with one head and different bodies keep their own bodies."""
    head = f"POST {unique_path()} HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\n\r\n".encode()
    first, second, third = parse_all(protocol, head + b"aaaa" + head + b"bbbb" + head + b"cccc")
    assert (first.body, second.body, third.body) == (b"aaaa", b"bbbb", b"cccc")
    assert first is not second and first.headers is not second.headers
    second.headers.append(("x-added-by", "a handler"))
    second.method = "PUT"
    (fourth,) = parse_all(protocol, head + b"dddd")
    assert (fourth.method, fourth.body) == ("POST", b"dddd")
    assert fourth.headers == [("host", "example.com"), ("content-length", "4")]


def test_phase6_head_cache_keeps_the_limits(protocol: ModuleType) -> None:
    """A head cached under one parser's limits is not a pass under tighter ones: three fields where one is
    allowed is 431, before and after the same head was parsed under the default limits."""
    head = f"GET {unique_path()} HTTP/1.1\r\nHost: example.com\r\nA: 1\r\nB: 2\r\n\r\n".encode()
    tight = protocol.Limits(max_header_count=1)
    with pytest.raises(protocol.HttpError) as refused:
        parse_all(protocol, head, tight)
    assert refused.value.status == 431
    assert len(parse_all(protocol, head)) == 1  # under the default limits: parsed, and cached
    with pytest.raises(protocol.HttpError) as refused_again:
        parse_all(protocol, head, tight)
    assert refused_again.value.status == 431


def test_phase6_head_cache_never_caches_an_error(protocol: ModuleType) -> None:
    """A head that parse_head refuses is refused every time it comes, never turned into a request."""
    head = f"GET {unique_path()} HTTP/1.1\r\nHost: example.com\r\nBad Name: x\r\n\r\n".encode()
    for _ in range(3):
        with pytest.raises(protocol.HttpError) as raised:
            parse_all(protocol, head)
        assert raised.value.status == 400


def held_after(protocol: ModuleType, prefix: str) -> int:
    """Parse BATCH distinct heads, then return the memory tracemalloc still counts, after a collection."""
    parser = protocol.RequestParser()
    for number in range(BATCH):
        parser.feed(f"GET /{prefix}/{number} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
        parser.next_request()
    del parser
    gc.collect()
    current, _peak = tracemalloc.get_traced_memory()
    return current


def test_phase6_head_cache_is_bounded(protocol: ModuleType) -> None:
    """A client can send a million distinct heads: after a first batch of distinct heads fills the cache, a
    second batch adds little to the memory it holds."""
    prefix = uuid.uuid4().hex
    tracemalloc.start()
    try:
        after_first = held_after(protocol, f"{prefix}/first")
        after_second = held_after(protocol, f"{prefix}/second")
    finally:
        tracemalloc.stop()
    growth = after_second - after_first
    assert growth < BOUNDED_GROWTH, (
        f"{BATCH} more distinct heads kept {growth / 2**20:.1f} MiB more in memory: is the cache bounded?"
    )
