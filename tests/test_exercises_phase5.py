"""Tests for chapter 5's exercises that change what the server does: run them against your own solution.

No phase of this repository solves these exercises, so none declares their capabilities
(`exercise_phase5_...`) and every test here is deselected for our phases. To check your solution, copy the
phase inside the repository, change the copy, add the exercise's capability to the `CAPABILITIES` of its
`__init__.py`, and run:

    cp -r phase5_concurrency my_phase5
    .venv/bin/pytest tests/test_exercises_phase5.py --phase-dir my_phase5

The tests are black-box, like tests/test_workers.py: they start your copy with two workers and the option the
exercise asks for, find its worker processes as the supervisor's children (psutil), stop or signal them, and
talk to the server over real sockets. Every wait is bounded and polls; no test measures speed. The tradeoff:
they see processes and sockets, not your code, so the exercise's wording is the specification: the acceptor
is seen as workers that serve clients without holding a listening socket.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import psutil
import pytest
from test_http import HELLO, HttpClient, get
from test_workers import Load

from conftest import RunningServer

WORKERS = ("--workers", "2")


# --- the server's processes ---------------------------------------------------------------------------------


def worker_processes(server: RunningServer) -> list[psutil.Process]:
    """The supervisor's children that still run: its worker processes (a zombie is a worker gone)."""
    return [child for child in psutil.Process(server.pid).children() if not is_gone(child)]


def is_gone(process: psutil.Process) -> bool:
    """True once the process has exited: reaped, or a zombie waiting to be."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for_workers(
    server: RunningServer, condition: Callable[[set[int]], bool], within: float, what: str
) -> set[int]:
    """The worker pids once `condition(pids)` holds, polled every 20 ms for at most `within` seconds."""
    deadline = time.monotonic() + within
    while not condition(pids := {process.pid for process in worker_processes(server)}):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}; the workers are {pids}")
        time.sleep(0.02)
    return pids


def tcp_sockets(process: psutil.Process) -> list[tuple[str, int, int | None]]:
    """(state, local port, remote port or None) of each TCP socket a process holds, from /proc; none once
    the process has exited (it may have, since it was listed)."""
    try:
        connections = process.net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return []
    return [(each.status, each.laddr.port, each.raddr.port if each.raddr else None) for each in connections]


def owner_of(server: RunningServer, client: HttpClient) -> int | None:
    """The pid of the worker that holds the server's end of this client's connection."""
    client_port = client.sock.getsockname()[1]
    for worker in worker_processes(server):
        for _state, _local_port, remote_port in tcp_sockets(worker):
            if remote_port == client_port:
                return worker.pid
    return None


def listening_pids(server: RunningServer) -> set[int]:
    """The server's processes that hold a socket listening on its port."""
    holders = set()
    for process in [psutil.Process(server.pid), *worker_processes(server)]:
        for state, local_port, _remote_port in tcp_sockets(process):
            if state == psutil.CONN_LISTEN and local_port == server.port:
                holders.add(process.pid)
    return holders


def cpu_seconds_by_worker(server: RunningServer) -> dict[int, float]:
    """User + system CPU seconds of each worker process, as /proc/PID/stat counts them."""
    return {process.pid: sum(process.cpu_times()[:2]) for process in worker_processes(server)}


def assert_answered(client: HttpClient) -> None:
    client.send(get("/"))
    response = client.response()
    assert (response.status, response.body) == (200, HELLO)


def clients_on_every_worker(server: RunningServer) -> dict[int, HttpClient]:
    """A keep-alive connection, answered once, held by each worker: {worker pid: its client}."""
    workers = {process.pid for process in worker_processes(server)}
    clients: dict[int, HttpClient] = {}
    spare: list[HttpClient] = []
    for _ in range(40):  # where the kernel (or an acceptor) puts a connection is not ours to choose
        client = HttpClient(server, timeout=10)  # a worker just started may still be starting: it queues
        assert_answered(client)
        owner = owner_of(server, client)
        if owner in workers and owner not in clients:
            clients[owner] = client
        else:
            spare.append(client)
        if set(clients) == workers:
            break
    for client in spare:
        client.close()
    if set(clients) != workers:
        for client in clients.values():
            client.close()
        pytest.fail(f"40 connections reached only the workers {set(clients)} of {workers}")
    return clients


# --- exercise 5: an acceptor --------------------------------------------------------------------------------


@pytest.mark.needs("http", "multi_process", "supervisor", "exercise_phase5_acceptor")
def test_phase5_acceptor_the_supervisor_listens_and_the_workers_serve(
    start_server: Callable[..., RunningServer],
) -> None:
    """Chapter 5, exercise 5: with `--model acceptor` only the supervisor holds a listening socket; every
    connection it accepts is served by a worker, which holds it, keep-alive or `Connection: close`."""
    server = start_server(*WORKERS, "--model", "acceptor")
    assert listening_pids(server) == {server.pid}, "a worker listens: that is the shared or reuseport model"
    workers = {process.pid for process in worker_processes(server)}
    with HttpClient(server) as client:
        for _ in range(3):
            client.send(get("/"))
            response = client.response()
            assert (response.status, response.body, response.header("Connection")) == (200, HELLO, None)
        assert owner_of(server, client) in workers, "no worker holds the connection"
        client.send(get("/", "Connection: close"))
        response = client.response()
        assert (response.status, response.body) == (200, HELLO)
        assert client.is_closed_by_server()


@pytest.mark.needs("http", "multi_process", "supervisor", "exercise_phase5_acceptor")
def test_phase5_acceptor_load_from_many_connections_reaches_both_workers(
    start_server: Callable[..., RunningServer],
) -> None:
    """Each worker's CPU time grows under load, by a fair part of the total: round robin or fewest
    connections, the acceptor hands clients to both."""
    server = start_server(*WORKERS, "--model", "acceptor")
    before = cpu_seconds_by_worker(server)
    assert len(before) == 2, f"two workers asked for, {len(before)} found"
    load = Load(server, keep_alive=False)
    load.start(thread_count=6)  # several connections open at any time
    try:
        load.wait_for_answers(1000, within=30)
    finally:
        load.stop()
    assert load.failures == [], f"{len(load.failures)} failed requests, e.g. {load.failures[:3]}"
    after = cpu_seconds_by_worker(server)
    assert set(after) == set(before), f"the workers changed under load: {set(before)} became {set(after)}"
    growth = {worker: after[worker] - before[worker] for worker in before}
    total = sum(growth.values())
    assert total > 0
    # An idle worker's loop wakes a few times a second and uses no measurable CPU; one that gets its share
    # of the clients uses about half. An eighth of the total tells the two apart with a wide margin.
    starved = {worker: f"{seconds:.2f} s" for worker, seconds in growth.items() if seconds < total / 8}
    assert not starved, f"workers with almost no CPU time under load: {starved} of {total:.2f} s in all"


@pytest.mark.needs("http", "multi_process", "supervisor", "exercise_phase5_acceptor")
def test_phase5_acceptor_sigterm_answers_the_requests_in_flight_and_exits_0(
    start_server: Callable[..., RunningServer],
) -> None:
    """SIGTERM drains: the supervisor stops listening, a request half-sent to each worker before the signal
    is answered once it is complete, its connection then closed; the server exits 0, no worker left."""
    shutdown_timeout = 5.0
    server = start_server(*WORKERS, "--model", "acceptor", "--shutdown-timeout", str(shutdown_timeout))
    workers = worker_processes(server)
    clients = clients_on_every_worker(server)
    try:
        for client in clients.values():
            client.send(b"GET / HTTP/1.1\r\nHost: test\r\n")  # a head begun: a request in flight
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while listening_pids(server):  # new clients are refused from now on: the stop has begun
            assert time.monotonic() < deadline, "the supervisor still listens 5 s after SIGTERM"
            time.sleep(0.02)
        for pid, client in clients.items():
            client.send(b"\r\n")
            response = client.response()
            assert (response.status, response.body) == (200, HELLO), f"worker {pid}"
            assert client.is_closed_by_server(), f"worker {pid} kept the connection open"
    finally:
        for client in clients.values():
            client.close()
    server.process.wait(timeout=shutdown_timeout + 5)
    assert server.stop() == 0, server.stderr
    left = [worker.pid for worker in workers if not is_gone(worker)]
    assert not left, f"workers still running after the supervisor exited: {left}"


@pytest.mark.needs("http", "multi_process", "supervisor", "rolling_restart", "exercise_phase5_acceptor")
def test_phase5_acceptor_sighup_under_churn_replaces_every_worker_without_a_failed_request(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(*WORKERS, "--model", "acceptor")
    old_workers = {process.pid for process in worker_processes(server)}
    assert len(old_workers) == 2
    short, kept = Load(server, keep_alive=False, pace=0.005), Load(server, keep_alive=True, pace=0.005)
    short.start(thread_count=2)
    kept.start(thread_count=1)
    try:
        short.wait_for_answers(30, within=20)
        kept.wait_for_answers(30, within=20)
        server.process.send_signal(signal.SIGHUP)
        new_workers = wait_for_workers(
            server, lambda pids: len(pids) == 2 and not pids & old_workers, 20, "two new workers, no old one"
        )
        short.wait_for_answers(30, within=20)  # and the new workers serve
        kept.wait_for_answers(30, within=20)
    finally:
        short.stop()
        kept.stop()
    failures = short.failures + kept.failures
    assert failures == [], f"{len(failures)} failed requests, e.g. {failures[:3]}"
    assert {process.pid for process in worker_processes(server)} == new_workers
