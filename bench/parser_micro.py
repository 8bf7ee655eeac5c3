"""Microbenchmark of a phase's parser: time and allocations per request, for our design and alternatives.

    make bench-parser                                   # the newest phase with a protocol.py, published
    taskset -c 1 .venv/bin/python -m bench.parser_micro --phase phase3_http_parse   # exploratory

With --publish (`make bench-parser`) it writes bench/results/parser_micro-PHASE.json and
docs/generated/parser_micro-PHASE.md, one pair per phase, so that each chapter shows its own parser;
otherwise bench/results/exploratory-parser_micro-NAME.json alone. Four
questions, each measured with its alternatives in the same run: what a request costs end to end (our parser,
reused as on a keep-alive connection and fresh, against h11 as a peer); how to get a complete head out of the
receive buffer (a bytearray slice decoded to str, which we chose, against decoding a memoryview slice, bytes
fields, and zero-copy memoryview fields); what caching the Date line saves; and what not rescanning saves when
a head arrives one byte at a time. Times are medians of several repeats of timeit; allocations are what
tracemalloc sees retained and at peak. The tradeoff: a microbenchmark measures the parser in a hot cache with
no socket; the server chapter's wrk runs say what it is worth in a real server.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import h11

from bench import report
from bench.micro import REPEATS, TARGET_SECONDS, add_phase_option, seconds_per_call
from bench.results import add_publishing_options, document, harness_command, save_and_publish
from tools.phases import REPO_ROOT

PUBLISHED_NAME = "parser_micro"  # bench/results/parser_micro-PHASE.json: the results a chapter shows

SIMPLE_GET = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
BROWSER_GET = (
    b"GET /articles/2024/sans-io-parsers?page=2&sort=new HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Connection: keep-alive\r\n"
    b"Referer: https://example.com/articles/2024\r\n"
    b"Cookie: session=0123456789abcdef0123456789abcdef; theme=dark; consent=yes\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Priority: u=0, i\r\n\r\n"
)
POST_1K = (
    b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 1024\r\n\r\n"
    + (b"x" * 1024)
)
CHUNKED_1K = (
    b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"100\r\n" + b"x" * 256 + b"\r\n" for _ in range(4))
    + b"0\r\n\r\n"
)
WORKLOADS = {
    "simple GET": SIMPLE_GET,
    "browser GET": BROWSER_GET,
    "POST 1 KiB": POST_1K,
    "chunked 1 KiB": CHUNKED_1K,
}


# The measured phase's sans-I/O protocol module, imported by load_protocol() before anything is measured.
protocol: ModuleType


def load_protocol(phase: str) -> None:
    global protocol, HEAD_BYTES
    sys.path.insert(0, str(REPO_ROOT))
    protocol = importlib.import_module(f"{phase}.protocol")
    HEAD_BYTES = re.compile(protocol.REQUEST_HEAD.pattern.encode("latin-1"))


def allocations(function: Callable[[], object], calls: int = 1000) -> dict[str, float]:
    """tracemalloc over `calls` calls whose results are all kept: blocks and bytes retained per call (what
    outlives the parse), and the peak above that during one call (what the parse needs on the way)."""
    function()  # warm caches (regex, the Date line) so that they are not counted
    kept: list[object] = []
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(calls):
        kept.append(function())
    after = tracemalloc.take_snapshot()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    kept.append(function())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    statistics_diff = after.compare_to(before, "lineno")
    blocks = sum(stat.count_diff for stat in statistics_diff)
    size = sum(stat.size_diff for stat in statistics_diff)
    return {
        "retained_blocks_per_request": blocks / calls,
        "retained_bytes_per_request": size / calls,
        "peak_bytes_during_one": peak - current,
    }


# ------------------------------------------------------------------------------------------ end to end


def ours_reused(data: bytes) -> Callable[[], object]:
    """Our parser as on a keep-alive connection: one parser, a request in, a request out."""
    parser = protocol.RequestParser()

    def parse() -> object:
        parser.feed(data)
        return parser.next_request()

    return parse


def ours_fresh(data: bytes) -> Callable[[], object]:
    def parse() -> object:
        parser = protocol.RequestParser()
        parser.feed(data)
        return parser.next_request()

    return parse


def h11_fresh(data: bytes) -> Callable[[], object]:
    """h11, the peer: a fresh Connection per request (it reads the next request only after a response)."""

    def parse() -> object:
        connection = h11.Connection(h11.SERVER)
        connection.receive_data(data)
        request = connection.next_event()
        body = b""
        while isinstance(event := connection.next_event(), h11.Data):
            body += event.data
        return request, body

    return parse


# ------------------------------------------------------------------ getting the head out of the buffer

HEAD_BYTES: re.Pattern[bytes]  # protocol.REQUEST_HEAD as bytes, set by load_protocol()
FIELD_SPANS = re.compile(rb"\r\n([^:\r\n]+):[ \t]*+((?:[ \t]*+[^ \t\r\n]++)*+)")


def head_buffer(data: bytes) -> tuple[bytearray, int]:
    buffer = bytearray(data) + bytearray(4096)  # a receive buffer with spare room, like the parser's
    return buffer, data.index(b"\r\n\r\n")


def split_fields(method_target_version: str, lines: list[str]) -> object:
    method, target, version = method_target_version.split(" ")
    fields = []
    for line in lines:
        name, _, value = line.partition(":")
        fields.append((name.lower(), value.strip(" \t")))
    return method, target, version, fields


def head_via_bytearray_slice(data: bytes) -> Callable[[], object]:
    """Chosen: slice the bytearray (a copy), decode it as latin-1 (a second copy), validate, split."""
    buffer, end = head_buffer(data)

    def parse() -> object:
        head = buffer[0:end].decode("latin-1")
        if protocol.REQUEST_HEAD.fullmatch(head) is None:
            raise ValueError
        lines = head.split("\r\n")
        return split_fields(lines[0], lines[1:])

    return parse


def head_via_memoryview_slice(data: bytes) -> Callable[[], object]:
    """Alternative: decode straight from a memoryview slice (one copy, but two view objects)."""
    buffer, end = head_buffer(data)

    def parse() -> object:
        head = str(memoryview(buffer)[0:end], "latin-1")
        if protocol.REQUEST_HEAD.fullmatch(head) is None:
            raise ValueError
        lines = head.split("\r\n")
        return split_fields(lines[0], lines[1:])

    return parse


def head_as_bytes_fields(data: bytes) -> Callable[[], object]:
    """Alternative (h11's): one bytes copy, validated by the same expression, fields kept as bytes."""
    buffer, end = head_buffer(data)

    def parse() -> object:
        head = bytes(memoryview(buffer)[0:end])
        if HEAD_BYTES.fullmatch(head) is None:
            raise ValueError
        lines = head.split(b"\r\n")
        method, target, version = lines[0].split(b" ")
        fields = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields.append((name.lower(), value.strip(b" \t")))
        return method, target, version, fields

    return parse


def head_as_memoryview_fields(data: bytes) -> Callable[[], object]:
    """Alternative, zero-copy: validate in place, fields as memoryview slices of the buffer. Nothing is
    copied, but the views pin the buffer (no resize while a request is alive) and names are not lowered."""
    buffer, end = head_buffer(data)

    def parse() -> object:
        if HEAD_BYTES.fullmatch(buffer, 0, end) is None:
            raise ValueError
        view = memoryview(buffer)
        line_end = buffer.index(b"\r\n")
        method_end = buffer.index(b" ", 0, line_end)
        target_end = buffer.index(b" ", method_end + 1, line_end)
        fields = [
            (view[match.start(1) : match.end(1)], view[match.start(2) : match.end(2)])
            for match in FIELD_SPANS.finditer(buffer, line_end, end)
        ]
        return view[:method_end], view[method_end + 1 : target_end], view[target_end + 1 : line_end], fields

    return parse


# --------------------------------------------------------------------------------- Date and responses


def date_formatted_each_time() -> str:
    return f"Date: {protocol.format_http_date(time.time())}\r\n"


def render_hello() -> Callable[[], object]:
    parser = protocol.RequestParser()
    parser.feed(SIMPLE_GET)
    request = parser.next_request()
    return lambda: protocol.render_response(request, 200, b"Hello, World!")


# ---------------------------------------------------------------------------------- byte at a time


def rescanning_parser() -> type[Any]:
    """Our parser made to forget where its searches stopped, as a naive parser would: quadratic."""

    class RescanningParser(protocol.RequestParser):  # type: ignore[misc,name-defined]  # loaded at run time
        def next_request(self) -> Any:
            self._scan = self._start
            self._line_end = -1
            return super().next_request()

    return RescanningParser


def head_of(size: int) -> bytes:
    fields = "".join(f"X-Field-{i}: {'v' * 40}\r\n" for i in range(size // 54))
    return f"GET / HTTP/1.1\r\nHost: h\r\n{fields}\r\n".encode()


def byte_at_a_time(parser_class: type[Any], data: bytes) -> Callable[[], object]:
    pieces = [data[i : i + 1] for i in range(len(data))]
    limits = protocol.Limits(max_header_bytes=64 * 1024, max_header_count=10_000)

    def parse() -> object:
        parser = parser_class(limits)
        for piece in pieces:
            parser.feed(piece)
            request = parser.next_request()
        return request

    return parse


# ------------------------------------------------------------------------------------------------ run


def timed(factory: Callable[[bytes], Callable[[], object]], data: bytes, figure: str) -> dict[str, float]:
    """Microseconds per call (named `figure`) and the allocations of the parse `factory` makes for `data`."""
    return {figure: seconds_per_call(factory(data)) * 1e6, **allocations(factory(data))}


def run() -> dict[str, Any]:
    end_to_end = [
        {
            "workload": workload,
            "bytes": len(data),
            "variant": variant,
            **timed(factory, data, "us_per_request"),
        }
        for workload, data in WORKLOADS.items()
        for variant, factory in (
            ("ours, parser reused", ours_reused),
            ("ours, fresh parser", ours_fresh),
            ("h11, fresh connection", h11_fresh),
        )
    ]
    head_extraction = [
        {"workload": workload, "variant": variant, **timed(factory, WORKLOADS[workload], "us_per_head")}
        for workload in ("simple GET", "browser GET")
        for variant, factory in (
            ("str: bytearray slice + decode (chosen)", head_via_bytearray_slice),
            ("str: decode a memoryview slice", head_via_memoryview_slice),
            ("bytes fields (no decode)", head_as_bytes_fields),
            ("memoryview fields (zero-copy)", head_as_memoryview_fields),
        )
    ]
    responses = [
        {"what": "Date line, formatted each time", "us": seconds_per_call(date_formatted_each_time) * 1e6},
        {"what": "Date line, cached per second", "us": seconds_per_call(protocol.date_line) * 1e6},
        {"what": "render_response(200, 13-byte body)", "us": seconds_per_call(render_hello()) * 1e6},
    ]
    slowloris = []
    for size in (1024, 4096, 16384):
        data = head_of(size)
        for variant, parser_class in (
            ("resumable (ours)", protocol.RequestParser),
            ("rescanning", rescanning_parser()),
        ):
            total = seconds_per_call(byte_at_a_time(parser_class, data))
            slowloris.append(
                {
                    "head_bytes": len(data),
                    "variant": variant,
                    "ms_total": total * 1e3,
                    "us_per_byte": total * 1e6 / len(data),
                }
            )
    return {
        "end_to_end": end_to_end,
        "head_extraction": head_extraction,
        "responses": responses,
        "byte_at_a_time": slowloris,
    }


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.parser_micro", description=__doc__.splitlines()[0])
    add_phase_option(parser, "protocol.py")
    add_publishing_options(parser, f"{PUBLISHED_NAME}-PHASE", "make bench-parser")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)

    def measure(results_file: Path) -> dict[str, Any]:
        load_protocol(options.phase)
        settings = {"phase": options.phase, "repeats": REPEATS, "target_seconds": TARGET_SECONDS}
        command = harness_command("bench.parser_micro", argv)
        return document(PUBLISHED_NAME, f"{PUBLISHED_NAME}-{options.phase}", command, {}, settings, **run())

    def pages(contents: dict[str, Any], source: str) -> dict[Path, str]:
        published = f"{PUBLISHED_NAME}-{contents['settings']['phase']}"  # one table per phase
        return {REPO_ROOT / "docs" / "generated" / f"{published}.md": report.parser_micro_markdown(contents)}

    return save_and_publish(options, f"{PUBLISHED_NAME}-{options.phase}", measure, pages)


if __name__ == "__main__":
    sys.exit(main())
