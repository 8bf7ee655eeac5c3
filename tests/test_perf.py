"""Chapter 6's optimisations change how fast the server is, never what it answers: tested from outside.

Each switch of `--without OPTIMISATION` runs the same script of requests as the whole server, and the two
transcripts must be equal (the Date header aside). The script goes where the optimisations could break:
pipelined requests, a request head and a body split across reads while other connections read in between
(every connection receives into one shared buffer), a body larger than that buffer, HEAD, HTTP/1.0 and
`Connection: close` (cached responses differ by all three), errors. Then what the optimisations promise that
a transcript cannot show: an idle connection holds no receive buffer, a cached response's Date stays current,
and with `--pin` each worker runs on a CPU of its own.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable

import psutil
import pytest
from test_http import HELLO, HttpClient, chunked, get, post_echo

from conftest import Phase, RunningServer

Transcript = list[tuple[int, list[tuple[str, str]], bytes]]
LARGE_BODY = bytes(range(256)) * 800  # 200 KiB: more than the shared receive buffer holds


def answer(client: HttpClient, method: str = "GET") -> tuple[int, list[tuple[str, str]], bytes]:
    """The next response, without its Date (the one header that may differ between two runs)."""
    response = client.response(method)
    headers = [(name.lower(), value) for name, value in response.headers.items() if name.lower() != "date"]
    return response.status, headers, response.body


def split_while_others_read(server: RunningServer, request: bytes, at: int) -> Transcript:
    """Send `request` in two parts, and between them let another connection be served whole."""
    answers: Transcript = []
    with HttpClient(server) as slow, HttpClient(server) as other:
        slow.send(request[:at])
        time.sleep(0.05)  # the server reads the first part before the other connection's request
        other.send(get("/"))
        answers.append(answer(other))
        slow.send(request[at:])
        answers.append(answer(slow, request.split(b" ", 1)[0].decode()))
    return answers


def transcript(server: RunningServer) -> Transcript:
    """The script's answers, in order."""
    answers: Transcript = []
    with HttpClient(server) as client:
        for request, method in [
            (get("/"), "GET"),
            (get("/"), "GET"),
            (b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n", "HEAD"),
            (get("/json"), "GET"),
            (get("/users/7"), "GET"),
            (get("/missing"), "GET"),
            (b"DELETE / HTTP/1.1\r\nHost: test\r\n\r\n", "DELETE"),
            (get("/", "Connection: keep-alive", version="HTTP/1.0"), "GET"),
        ]:
            client.send(request)
            answers.append(answer(client, method))
        client.send(get("/") * 20 + post_echo(b"x" * 100) + get("/json"))  # pipelined, in one write
        answers += [answer(client) for _ in range(22)]
        client.send(get("/", "Connection: close"))
        answers.append(answer(client))
        assert client.is_closed_by_server()
    # Each split request is checked here, not only against the whole server's: a bug common to every
    # variant (as in the shared buffer, which all but one use) would otherwise compare equal.
    for request, at, expected in [
        (get("/users/42"), 9, json.dumps({"id": 42}).encode()),
        (post_echo(b"0123456789" * 10), 60, b"0123456789" * 10),
        (post_echo(LARGE_BODY), 70_000, LARGE_BODY),
    ]:
        other, mine = split_while_others_read(server, request, at)
        assert (other[0], mine[0], mine[2]) == (200, 200, expected), f"{request[:20]!r} split at {at}"
        answers += [other, mine]
    with HttpClient(server) as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        client.send(chunked(LARGE_BODY, chunk_size=50_000))
        answers.append(answer(client))
    with HttpClient(server) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: test\r\nBad Header: x\r\n\r\n")
        answers.append(answer(client))
        assert client.is_closed_by_server()
    return answers


def optimisations(phase: Phase) -> list[str]:
    return list(phase.import_module("__main__").OPTIMISATIONS)


@pytest.mark.needs("http", "routing", "optimisation_switches")
def test_no_switch_changes_an_answer(phase: Phase, start_server: Callable[..., RunningServer]) -> None:
    # One worker: with two, two connections may reach different workers, each with its own shared buffer.
    whole = transcript(start_server("--workers", "1"))
    statuses = [status for status, _, _ in whole]
    assert statuses.count(200) >= 30 and {404, 405, 400} <= set(statuses)  # the script went everywhere
    assert whole[-3][2] == LARGE_BODY and whole[-2][2] == LARGE_BODY
    for options in [*(("--without", name) for name in optimisations(phase)), ("--pin",), ("--gc-freeze",)]:
        variant = transcript(start_server("--workers", "1", *options))
        assert variant == whole, f"{' '.join(options)} answers differently"


@pytest.mark.needs("http", "keep_alive")
def test_a_head_split_across_reads_survives_other_connections_being_served(
    phase: Phase, start_server: Callable[..., RunningServer]
) -> None:
    """However the server buffers what it receives, bytes that one connection has not yet parsed belong to
    it alone: another connection's request, served in between, neither loses nor corrupts them. (That
    request, `GET /`, differs from this one from the sixth byte: its bytes in place of ours make a 400.)"""
    one_worker = ("--workers", "1") if "multi_process" in phase.capabilities else ()
    server = start_server(*one_worker)  # one worker, so that both connections meet in the same loop
    for at in (1, 9, 16, 30):
        request = get("/?" + "q" * 40, "X-Padding: p")
        (other, mine) = split_while_others_read(server, request, at)
        assert other[0] == 200 and mine[0] == 200 and mine[2] == HELLO, at


@pytest.mark.needs("http", "keep_alive")
def test_the_date_header_is_the_time_of_the_answer(server: RunningServer) -> None:
    """A Date formatted once per second (and a response cached with it) must still say the current second."""
    with HttpClient(server) as client:
        for _ in range(2):
            before = time.time()
            client.send(get("/"))
            date = client.response().header("Date")
            assert date is not None
            sent = email.utils.parsedate_to_datetime(date).timestamp()
            assert int(before) <= sent <= time.time()
            time.sleep(1.1)  # the next answer falls in another second


def idle_connection_cost(server: RunningServer, count: int = 400) -> float:
    """The server's resident memory per idle keep-alive connection, each having been served once. (400: the
    test process holds a descriptor per connection too, well under the usual limit of 1024.)"""
    time.sleep(0.2)  # let the server's start-up allocations settle before the baseline
    before = server.rss_bytes()
    clients = []
    try:
        for _ in range(count):
            client = HttpClient(server)
            clients.append(client)
            client.send(get("/"))
            assert client.response().body == HELLO
        return (server.rss_bytes() - before) / count
    finally:
        for client in clients:
            client.close()


@pytest.mark.needs("http", "keep_alive", "optimisation_switches")
def test_an_idle_connection_holds_no_receive_buffer(start_server: Callable[..., RunningServer]) -> None:
    """With the shared buffer an idle connection costs its objects, not 16 KiB of buffer; without, it does."""
    shared = idle_connection_cost(start_server("--workers", "1"))
    own = idle_connection_cost(start_server("--workers", "1", "--without", "shared_buffer"))
    assert shared < 4 * 1024, f"each idle connection costs {shared / 1024:.1f} KiB"
    assert own > 12 * 1024, f"without the shared buffer, {own / 1024:.1f} KiB: is the switch wired?"


def worker_cpus(server: RunningServer) -> list[set[int]]:
    deadline = time.monotonic() + 10
    while len(workers := server.processes()[1:]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return sorted((set(worker.cpu_affinity()) for worker in workers), key=sorted)


@pytest.mark.needs("multi_process", "optimisation_switches")
def test_with_pin_each_worker_runs_on_a_cpu_of_its_own(start_server: Callable[..., RunningServer]) -> None:
    allowed = sorted(psutil.Process().cpu_affinity())
    pinned = worker_cpus(start_server("--workers", "2", "--pin"))
    assert pinned == sorted(({allowed[slot % len(allowed)]} for slot in range(2)), key=sorted)
    assert worker_cpus(start_server("--workers", "2")) == [set(allowed)] * 2


@pytest.mark.needs("http", "optimisation_switches")
def test_an_unknown_optimisation_is_a_usage_error(phase: Phase) -> None:
    with pytest.raises(SystemExit) as stopped:
        phase.import_module("__main__").parse_args(["--without", "everything"])
    assert stopped.value.code == 2
