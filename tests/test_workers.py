"""Worker processes (or threads) and their supervisor, tested from outside, through `python -m PHASE`.

What a reader of the chapter is promised, each claim a test: load from many connections reaches every worker;
a worker killed by `kill -9` is replaced at once and costs only the requests it had in flight; SIGTERM
lets every begun answer finish, exits 0 and leaves no worker behind; SIGHUP replaces every worker without one
failed request; no zombie outlives a second; the workers die with their supervisor; a worker that keeps dying
young is replaced after growing delays. And the kernel's trap the supervisor exists to avoid, shown with plain
sockets: closing the last descriptor of a listener resets every client queued on it.

Servers run with two workers (conftest.py gives `--workers 2`), so no test depends on the machine's CPU count.
What a test waits for, it awaits (a line of the supervisor's log, an answer, a process's exit), each wait
bounded; the load comes from a few threads of this process, on 127.0.0.1, bounded in count or time.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest
from test_abuse import fds_settle_at
from test_http import HELLO, HttpClient, get, post_echo

from conftest import Phase, RunningServer, start_phase
from tools.phases import REPO_ROOT

pytestmark = pytest.mark.needs("http", "multi_process", "supervisor")

MODELS = ("reuseport", "shared", "threads")
PROCESS_MODELS = ("reuseport", "shared")  # the models whose workers are processes, each with a pid to kill
# From `kill -9` of a worker to its replacement answering takes well under a second here (bench.workers
# measures it), but a busy machine decides how long a new interpreter takes to start: a test waits this long.
REPLACEMENT_WITHIN = 20.0
ZOMBIE_DEADLINE = 1.0  # no exited worker may stay unreaped longer than this


# --- what the supervisor says, and who its workers are -----------------------------------------------------


def wait_for_log(
    server: RunningServer, pattern: str, *, after: int = 0, within: float = 5.0
) -> re.Match[str]:
    """The first line of the server's stderr, from offset `after` on, that matches `pattern`; waited for (the
    file is re-read every 10 ms) at most `within` seconds, else the test fails with what the log says."""
    deadline = time.monotonic() + within
    while True:
        log = server.stderr_so_far()
        match = re.compile(pattern, re.MULTILINE).search(log, after)
        if match is not None:
            return match
        if time.monotonic() > deadline:
            pytest.fail(f"no line matching {pattern!r} within {within} s; the log says:\n{log[after:]}")
        time.sleep(0.01)


def worker_processes(server: RunningServer) -> list[psutil.Process]:
    """The supervisor's children: its worker processes (zombies included, until reaped)."""
    return psutil.Process(server.pid).children()


def worker_threads(server: RunningServer) -> list[Any]:
    """The supervisor's threads other than its main one. io_uring's kernel workers (io-wq, named iou-wrk-N)
    are threads of the process too, in /proc/PID/task: they are not ours, so they are left out."""
    threads = []
    for thread in psutil.Process(server.pid).threads():
        try:
            name = Path(f"/proc/{server.pid}/task/{thread.id}/comm").read_text().strip()
        except FileNotFoundError:  # the thread has ended since the list was made
            continue
        if thread.id != server.pid and not name.startswith("iou-"):
            threads.append(thread)
    return threads


def worker_ids(server: RunningServer, model: str) -> set[int]:
    """Who serves: the worker processes' pids, or for the threads model the ids of the worker threads (a
    thread's id is its /proc/PID/task entry)."""
    if model == "threads":
        return {thread.id for thread in worker_threads(server)}
    return {process.pid for process in worker_processes(server)}


def cpu_seconds_by_worker(server: RunningServer, model: str) -> dict[int, float]:
    """User + system CPU seconds of each worker, a process (/proc/PID/stat) or a thread (/proc/PID/task/*)."""
    if model == "threads":
        return {thread.id: thread.user_time + thread.system_time for thread in worker_threads(server)}
    return {process.pid: sum(process.cpu_times()[:2]) for process in worker_processes(server)}


def is_gone(pid: int) -> bool:
    """True if the process has exited: reaped, or a zombie (an orphan's, whose new parent reaps it, or not:
    the init of a container may never)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def zombie_children(server: RunningServer) -> list[int]:
    """The supervisor's children that have exited and not been waited for (state Z in /proc/PID/stat)."""
    zombies = []
    for child in worker_processes(server):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child.pid)
        except psutil.NoSuchProcess:
            continue  # reaped since the listing
    return zombies


def owners_of_connections(server: RunningServer) -> dict[int, int]:
    """Which worker process holds each client connection: {client's local port: worker pid}."""
    owners = {}
    for worker in worker_processes(server):
        for connection in worker.net_connections(kind="tcp"):
            if connection.laddr.port == server.port and connection.raddr:
                owners[connection.raddr.port] = worker.pid
    return owners


# --- load ---------------------------------------------------------------------------------------------------


@dataclass
class Failure:
    """A request that got no complete answer: on which connection (the client's port) and why."""

    client_port: int | None  # None: the connection itself failed (refused, or reset before it was accepted)
    error: str


@dataclass
class Load:
    """Client threads that send `GET /` until told to stop, and what happened to their requests. A keep-alive
    client whose answer says `Connection: close` opens a new connection for its next request; a request
    without its whole answer is a failure, recorded and never retried."""

    server: RunningServer
    keep_alive: bool  # one connection per thread reused for every request, else one per request
    pace: float = 0.0  # seconds between two requests of a thread: steady load that leaves the CPUs room
    trickle: float = 0.0  # if not 0, each request is a POST whose body follows its head this much later
    answered: int = 0
    failures: list[Failure] = field(default_factory=list)
    ports_in_use: dict[int, int] = field(default_factory=dict)  # thread index -> its connection's port
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, thread_count: int) -> None:
        self.threads = [threading.Thread(target=self.run, args=(index,)) for index in range(thread_count)]
        for thread in self.threads:
            thread.start()

    def run(self, index: int) -> None:
        client: HttpClient | None = None
        while not self.stopping.is_set():
            port = None
            try:
                if client is None:
                    # Far past any wait a test makes a client sit out (a worker stopped until its replacement
                    # answers, say): a request that times out is a failure.
                    client = HttpClient(self.server, timeout=REPLACEMENT_WITHIN + 10)
                port = client.sock.getsockname()[1]
                with self.lock:
                    self.ports_in_use[index] = port
                ending = () if self.keep_alive else ("Connection: close",)
                if self.trickle:  # a request in flight a while: a worker that leaves meanwhile must answer
                    request = post_echo(HELLO, *ending)
                    client.send(request[: -len(HELLO)])
                    time.sleep(self.trickle)
                    client.send(HELLO)
                else:
                    client.send(get("/", *ending))
                response = client.response()
                if (response.status, response.body) != (200, HELLO):
                    raise http.client.HTTPException(f"{response.status} {response.body[:60]!r}")
                with self.lock:
                    self.answered += 1
                if not self.keep_alive or response.header("Connection") == "close":
                    client = self.close(client)  # a worker that drains says so: the next request reconnects
            except (OSError, http.client.HTTPException) as error:
                with self.lock:
                    self.failures.append(Failure(port, repr(error)))
                if client is None:  # refused (a server that stops): retry, but not in a tight loop
                    time.sleep(0.01)
                client = self.close(client)
            if self.pace:
                time.sleep(self.pace)
        self.close(client)

    @staticmethod
    def close(client: HttpClient | None) -> None:
        if client is not None:
            client.close()

    def wait_for_answers(self, count: int, within: float = 10.0) -> None:
        """Until `count` more requests have been answered (polled every 10 ms, at most `within` s)."""
        target = self.answered + count
        deadline = time.monotonic() + within
        while self.answered < target:
            assert time.monotonic() < deadline, f"{self.answered} answers of {target}; {self.failures[:3]}"
            time.sleep(0.01)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=15)
        assert not any(thread.is_alive() for thread in self.threads), "a client thread hangs"


# --- every worker serves ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_load_from_many_connections_reaches_every_worker(
    start_server: Callable[..., RunningServer], model: str
) -> None:
    """Each worker's CPU time grows under load, by a fair part of the total: one event loop per core is the
    point of the chapter, and a worker that the kernel never hands a client is a core left idle."""
    server = start_server("--model", model)
    before = cpu_seconds_by_worker(server, model)
    assert len(before) == 2, f"two workers asked for, {len(before)} found"
    load = Load(server, keep_alive=False)  # a new connection per request: the kernel places each one anew
    load.start(thread_count=6)
    # An idle worker's loop wakes a few times a second and uses no measurable CPU; one that takes its share
    # of clients uses about half. An eighth of the total tells the two apart with a wide margin. Where each
    # client goes is the scheduler's and the kernel's to decide, so the load runs until each worker has had
    # its share, or a minute, whichever comes first: on a busy machine a worker can wait its turn a while.
    deadline = time.monotonic() + 60
    try:
        while True:
            load.wait_for_answers(400, within=30)
            after = cpu_seconds_by_worker(server, model)
            growth = {worker: after[worker] - before[worker] for worker in before}
            total = sum(growth.values())
            starved = {
                worker: f"{seconds:.2f} s" for worker, seconds in growth.items() if seconds < total / 8
            }
            if load.answered >= 1200 and total > 0 and not starved:
                break
            assert time.monotonic() < deadline, (
                f"after a minute, workers with almost no CPU time: {starved} of {total:.2f} s in all"
            )
    finally:
        load.stop()
    assert load.failures == []


# --- kill -9 of a worker ------------------------------------------------------------------------------------


def first_answer(server: RunningServer, probes: int, within: float) -> tuple[int | None, int]:
    """Open `probes` connections at once, a request on each, each in a thread of its own (through TLS, a
    connection's handshake waits until a worker accepts it); wait for the first answer -> (the pid of the
    worker that holds its connection, how many probes were closed or reset unanswered before it). The others
    are left to their threads: answered later, or never, until their timeout or the server's stop."""
    outcomes: queue.Queue[HttpClient | BaseException] = queue.Queue()
    looked_up = threading.Event()

    def probe() -> None:
        try:
            with HttpClient(server, timeout=within) as client:
                client.send(get("/"))
                body = client.response().body
                outcomes.put(client if body == HELLO else AssertionError(f"a wrong answer: {body[:40]!r}"))
                looked_up.wait(within)  # the connection stays open while its worker is looked up
        except (OSError, http.client.HTTPException) as error:  # taken by a worker as it died (see below)
            outcomes.put(error)

    for _ in range(probes):
        threading.Thread(target=probe, daemon=True).start()
    deadline = time.monotonic() + within
    dropped = 0
    try:
        for _ in range(probes):
            try:
                outcome = outcomes.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"none of {probes} new connections answered within {within} s") from None
            if isinstance(outcome, HttpClient):
                return owners_of_connections(server).get(outcome.sock.getsockname()[1]), dropped
            if isinstance(outcome, AssertionError):
                raise outcome
            dropped += 1
        raise AssertionError(f"all {probes} new connections were closed unanswered")
    finally:
        looked_up.set()


def load_on_both_workers(server: RunningServer) -> tuple[Load, dict[int, set[int]]]:
    """16 keep-alive clients, steady, with connections on both workers: the load, and each worker's clients'
    ports. Where a connection goes is the kernel's choice (an idle worker of a shared listener may take all
    16): if one worker got none, the clients connect anew, a few times at most."""
    for _ in range(5):
        load = Load(server, keep_alive=True, pace=0.01)  # steady, and each client stays on one worker
        load.start(thread_count=16)
        try:
            load.wait_for_answers(16 * 5)
        except BaseException:
            load.stop()
            raise
        with load.lock:
            ports = set(load.ports_in_use.values())
        owners = owners_of_connections(server)
        clients_of = {
            pid: {port for port in ports if owners.get(port) == pid} for pid in set(owners.values())
        }
        if len(clients_of) == 2:
            return load, clients_of
        load.stop()
    pytest.fail(f"5 times 16 connections did not reach both workers: {clients_of}")


@pytest.mark.parametrize("model", PROCESS_MODELS)
def test_a_killed_worker_costs_only_its_requests_in_flight_and_is_replaced_at_once(
    start_server: Callable[..., RunningServer], model: str, phase: Phase
) -> None:
    # The survivor is stopped while the replacement starts, which a busy machine may make last a while: its
    # heartbeat must not run out meanwhile, or its own replacement could be the one that answers.
    server = start_server("--model", model, "--heartbeat-timeout", str(3 * REPLACEMENT_WITHIN))
    load, clients_of = load_on_both_workers(server)
    try:
        victim, survivor = sorted(clients_of, key=lambda pid: len(clients_of[pid]))  # the most witnesses stay
        mark = len(server.stderr_so_far())
        # The survivor is paused (SIGSTOP) until a new connection is answered, so that the answer can only
        # come from the replacement: an idle survivor would take every new client of a shared listener (its
        # epoll waits there first), and half of them with reuseport. Its clients wait, and must not fail.
        os.kill(survivor, signal.SIGSTOP)
        try:
            os.kill(victim, signal.SIGKILL)
            # The supervisor's part: a replacement at once, or after the first backoff of a worker that died
            # young (this one served for less than HEALTHY_UPTIME), never more.
            died = wait_for_log(
                server,
                rf"^supervisor: worker (\d+) \(pid {victim}\): killed by SIGKILL;"
                r" its replacement starts in 0\.[01] s$",
                after=mark,
                within=REPLACEMENT_WITHIN,
            )
            if model == "reuseport":
                # Until the stopped survivor has been silent a while, it is the one worker heard from, and new
                # clients are steered to it alone: wait until they are steered to the replacement instead.
                steered = rf"^supervisor: new clients go to worker\(s\) {died.group(1)} only"
                wait_for_log(server, steered, after=mark, within=REPLACEMENT_WITHIN)
            answerer, dropped = first_answer(server, probes=16, within=REPLACEMENT_WITHIN)
        finally:
            with contextlib.suppress(ProcessLookupError):  # it may have died: a test failure, told below
                os.kill(survivor, signal.SIGCONT)
        ready = wait_for_log(
            server, rf"^supervisor: worker {died.group(1)} \(pid (\d+)\): ready$", after=mark
        )
        load.wait_for_answers(16 * 5)  # every client goes on being served
    finally:
        load.stop()
    replacement = int(ready.group(1))
    assert answerer == replacement not in (victim, survivor), (answerer, replacement)
    # A loop that accepts with accept() leaves a client queued until a live worker takes it. An io_uring
    # accept is the kernel's: woken by a client as its worker dies, it can still complete, in the worker's
    # exit, and that client is closed with it (measured here: one of the 16 probes, in some runs).
    assert dropped == 0 or "io_uring" in phase.capabilities, f"{dropped} new client(s) closed unanswered"
    assert load.failures, "no request failed: was a worker with clients killed?"
    off_the_victim = [failure for failure in load.failures if failure.client_port not in clients_of[victim]]
    assert not off_the_victim, f"requests failed off the killed worker (its ports {clients_of[victim]})"
    assert len(load.failures) <= len(clients_of[victim]), "a client of the killed worker failed twice"


# --- SIGTERM: a drain ---------------------------------------------------------------------------------------


@dataclass
class SlowReader:
    """A client with a large answer begun and unread: an answer in flight for as long as we like."""

    sock: socket.socket
    body: bytes
    # Far more than the kernel's socket buffers hold (a few MiB at most): most of the answer is still the
    # server's to send when it is told to stop. Past the default --max-body-bytes: give it this.
    SIZE: ClassVar[int] = 16 * 1024 * 1024

    @classmethod
    def begin(cls, server: RunningServer) -> SlowReader:
        body = os.urandom(cls.SIZE)
        sock = server.connect(timeout=10, receive_buffer=65536)  # a small window: the answer must wait
        sock.sendall(post_echo(body))
        head = b""
        while len(head) < 12:
            head += sock.recv(12 - len(head))
        assert head == b"HTTP/1.1 200"  # the answer has begun; most of it waits for us
        return cls(sock, body)

    def read_the_rest(self) -> bytes:
        """The rest of the answer: up to the end of its body, or what came before the server closed."""
        received = bytearray()
        while not received.endswith(self.body):  # an answer that says keep-alive ends with its body, not EOF
            chunk = self.sock.recv(1 << 20)  # a reset raises here: the test fails with its error
            if not chunk:
                break
            received += chunk
        self.sock.close()
        return bytes(received)


def slow_readers_on_every_worker(server: RunningServer, model: str) -> list[SlowReader]:
    """An answer in flight on each worker process (the threads model has one process: one answer). With
    reuseport the kernel hashes each connection to a listener: connect until every worker has one. With one
    shared listener an idle worker whose epoll waits on it first takes every client (EPOLLEXCLUSIVE wakes
    the first waiter): the workers that have one are paused (SIGSTOP) while the next connects."""
    if model == "threads":
        return [SlowReader.begin(server)]
    workers = {process.pid for process in worker_processes(server)}
    readers: list[SlowReader] = []
    covered: set[int] = set()
    try:
        for _ in range(20):
            readers.append(SlowReader.begin(server))
            owner = owners_of_connections(server)[readers[-1].sock.getsockname()[1]]
            if model == "shared" and owner not in covered:
                os.kill(owner, signal.SIGSTOP)
            covered.add(owner)
            if covered == workers:
                return readers
    finally:
        for pid in covered if model == "shared" else ():
            os.kill(pid, signal.SIGCONT)
    pytest.fail(f"20 connections reached only {covered} of the workers {workers}")


@pytest.mark.parametrize("model", MODELS)
def test_sigterm_under_load_finishes_every_begun_answer_and_leaves_no_worker(
    start_server: Callable[..., RunningServer], model: str
) -> None:
    shutdown_timeout = 5.0
    server = start_server(
        *("--model", model, "--shutdown-timeout", str(shutdown_timeout)),
        *("--max-body-bytes", str(SlowReader.SIZE)),
    )
    workers = worker_processes(server)
    in_flight = slow_readers_on_every_worker(server, model)
    load = Load(server, keep_alive=True)
    load.start(thread_count=4)
    try:
        load.wait_for_answers(100)
        signalled_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        for reader in in_flight:
            answer = reader.read_the_rest()
            complete = answer.endswith(reader.body)
            assert complete, f"an answer begun was cut: {len(answer)} bytes arrived"
        server.process.wait(timeout=shutdown_timeout + 5)
        exited_after = time.monotonic() - signalled_at
    finally:
        load.stop()
    # The load's requests after the signal fail, or not: only an answer cut once begun would be a bug, and
    # Load counts that as a failure like any other, so look at what the failures were.
    cut = [failure for failure in load.failures if "IncompleteRead" in failure.error]
    assert not cut, f"answers cut after they had begun: {cut}"
    # Nor may a request that reached a worker go unanswered: a drain answers it, with `Connection: close`.
    # (A new connection may be refused, or reset in a listener's queue: that request never reached one.)
    dropped = [failure for failure in load.failures if "RemoteDisconnected" in failure.error]
    assert not dropped, f"requests closed unanswered: {dropped}"
    assert server.process.returncode == 0, server.stderr_so_far()
    assert exited_after < shutdown_timeout + 1, f"exited {exited_after:.1f} s after SIGTERM"
    left = [worker.pid for worker in workers if not is_gone(worker.pid)]
    assert not left, f"worker processes still running after the supervisor exited: {left}"


# --- SIGHUP: a rolling restart ------------------------------------------------------------------------------


@pytest.mark.needs("rolling_restart")
@pytest.mark.parametrize("model", MODELS)
def test_sighup_under_connection_churn_replaces_every_worker_without_a_failed_request(
    start_server: Callable[..., RunningServer], model: str
) -> None:
    server = start_server("--model", model)
    old_workers = worker_ids(server, model)
    assert len(old_workers) == 2
    # Many short connections, each with a request in flight for 20 ms: some are always being accepted, and
    # some are always being served, whenever the old workers are told to go.
    load = Load(server, keep_alive=False, trickle=0.02)
    load.start(thread_count=4)
    try:
        load.wait_for_answers(50)
        mark = len(server.stderr_so_far())
        server.process.send_signal(signal.SIGHUP)
        done = wait_for_log(server, r"^supervisor: rolling restart done", after=mark, within=10)
        load.wait_for_answers(50)  # and the new workers serve
    finally:
        load.stop()
    assert load.failures == [], f"{len(load.failures)} failed requests, e.g. {load.failures[:3]}"
    # The old set is drained only once the whole new set is ready: both new workers said so before.
    restart = server.stderr_so_far()[mark : done.start()]
    draining = restart.index("rolling restart: the new workers are ready, draining")
    assert len(re.findall(r"\): ready$", restart[:draining], re.MULTILINE)) == 2, restart
    new_workers = worker_ids(server, model)
    assert len(new_workers) == len(old_workers), f"{old_workers} became {new_workers}"
    assert not new_workers & old_workers, f"not all new: {old_workers} became {new_workers}"


@pytest.mark.needs("rolling_restart")
@pytest.mark.parametrize("model", MODELS)
def test_sighups_under_keep_alive_load_fail_no_request(
    start_server: Callable[..., RunningServer], model: str
) -> None:
    """Keep-alive clients that send their next request as soon as the answer is read: whenever a worker is
    told to drain, a request may be on its way on any of its connections, even one whose last answer the
    worker has not yet seen leave. Each is answered (with `Connection: close`), never met with a close."""
    server = start_server("--model", model)
    load = Load(server, keep_alive=True)
    load.start(thread_count=4)
    try:
        for _ in range(4):
            load.wait_for_answers(50)
            mark = len(server.stderr_so_far())
            server.process.send_signal(signal.SIGHUP)
            wait_for_log(server, r"^supervisor: rolling restart done", after=mark, within=15)
        load.wait_for_answers(50)
    finally:
        load.stop()
    assert load.failures == [], f"{len(load.failures)} failed requests, e.g. {load.failures[:3]}"


@pytest.mark.needs("rolling_restart")
def test_rolling_restarts_of_thread_workers_leak_no_descriptor(
    start_server: Callable[..., RunningServer],
) -> None:
    """Thread workers live in the supervisor's process: whatever a stopped loop leaves open stays open, and a
    restart a day for a year would run the process out of descriptors. After SIGHUPs under load, once the
    clients are gone, the process holds the descriptors it held when it started."""
    server = start_server("--model", "threads")
    idle = server.open_fds()
    load = Load(server, keep_alive=True)
    load.start(thread_count=4)
    try:
        for _ in range(6):
            load.wait_for_answers(50)
            mark = len(server.stderr_so_far())
            server.process.send_signal(signal.SIGHUP)
            wait_for_log(server, r"^supervisor: rolling restart done", after=mark, within=15)
    finally:
        load.stop()
    assert load.failures == []
    settled = fds_settle_at(server, idle)
    assert settled == idle, f"{settled} descriptors open after 6 restarts, {idle} before"


# --- a worker that stops, or keeps dying: the others take the new clients -----------------------------------

HEARTBEAT_TIMEOUT = 2.0  # what the tests give --heartbeat-timeout: seconds, not the default's ten
# What the issue asked: with one of two workers stopped or crash-looping, new clients are served within this.
SERVED_WITHIN = 1.0


def new_clients_are_served(server: RunningServer, count: int = 20, stranded_allowed: int = 0) -> None:
    """`count` new connections, one after the other, each with a request that must be answered within
    SERVED_WITHIN seconds (all but `stranded_allowed` of them): whatever listener the kernel puts each one
    on, a worker behind it serves."""
    stranded = []
    for number in range(count):
        with HttpClient(server, timeout=SERVED_WITHIN) as client:
            client.send(get("/", "Connection: close"))
            try:
                response = client.response()
            except (TimeoutError, ConnectionError, http.client.HTTPException) as error:
                stranded.append(f"new client {number + 1} of {count}: {error!r}")
                continue
        assert (response.status, response.body) == (200, HELLO)
    assert len(stranded) <= stranded_allowed, f"not answered within {SERVED_WITHIN} s: {stranded}"


@pytest.mark.parametrize("model", PROCESS_MODELS)
def test_a_stopped_worker_gets_no_new_clients_then_is_killed_and_replaced(
    start_server: Callable[..., RunningServer], model: str, phase: Phase
) -> None:
    """`kill -STOP` of a worker: a worker that never dies but never serves. Its heartbeat stops: it is taken
    out of the rotation of new clients (reuseport: the kernel would queue half of them on its listener), then,
    silent for the heartbeat timeout, killed and replaced. The other worker serves all along."""
    server = start_server("--model", model, "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT))
    victim = min(worker_ids(server, model))
    mark = len(server.stderr_so_far())
    os.kill(victim, signal.SIGSTOP)
    try:
        if model == "reuseport":  # a shared listener needs no steering: the other worker's accept takes all
            wait_for_log(server, r"^supervisor: new clients go to worker\(s\) \d+ only", after=mark)
        # One exception: on a shared listener, an io_uring worker's accept is the kernel's, armed before the
        # stop. It can still take one client, which waits for the stopped worker, then goes with it.
        io_uring_shared = "io_uring" in phase.capabilities and model == "shared"
        new_clients_are_served(server, stranded_allowed=1 if io_uring_shared else 0)
        died = wait_for_log(
            server, rf"^supervisor: worker (\d+) \(pid {victim}\): silent for [\d.]+ s; SIGKILL$", after=mark
        )
        wait_for_log(
            server, rf"^supervisor: worker {died.group(1)} \(pid \d+\): ready$", after=mark, within=10
        )
    finally:
        with contextlib.suppress(ProcessLookupError):  # a failed test must not leave a stopped process
            os.kill(victim, signal.SIGCONT)
    if model == "reuseport":
        wait_for_log(server, r"^supervisor: new clients go to every worker again$", after=mark)
    new_clients_are_served(server)
    assert victim not in worker_ids(server, model)


def test_new_clients_are_served_while_a_worker_crash_loops(
    start_server: Callable[..., RunningServer],
) -> None:
    """A worker that keeps dying young waits longer and longer for its replacement (up to MAX_BACKOFF):
    meanwhile its listener, with nobody behind it, must get no new clients. Killed as each replacement
    starts, the slot's backoff grows past a second; the new clients of that second are all served."""
    server = start_server("--model", "reuseport", "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT))
    victim = min(worker_ids(server, "reuseport"))
    mark = len(server.stderr_so_far())
    for _ in range(8):
        os.kill(victim, signal.SIGKILL)
        died = wait_for_log(
            server, rf"\(pid {victim}\): killed by SIGKILL; its replacement starts in ([\d.]+) s$"
        )
        if float(died.group(1)) >= 0.8:
            break
        started = wait_for_log(server, r"^supervisor: worker (\d+) \(pid (\d+)\): started", after=died.end())
        victim = int(started.group(2))
    else:
        pytest.fail("the slot's backoff never reached 0.8 s")
    wait_for_log(server, r"^supervisor: new clients go to worker\(s\) \d+ only", after=mark)
    new_clients_are_served(server)


def test_an_idle_or_busy_worker_is_never_killed(start_server: Callable[..., RunningServer]) -> None:
    """A worker with nothing to do beats all the same, and so does one whose loop always has events to
    handle: over three heartbeat timeouts of each, no worker is replaced or taken out of rotation."""
    server = start_server("--heartbeat-timeout", "1")
    workers = worker_ids(server, "reuseport")
    mark = len(server.stderr_so_far())
    time.sleep(3)  # three timeouts of idleness: what is measured is nothing happening
    assert worker_ids(server, "reuseport") == workers, "an idle worker was replaced"
    load = Load(server, keep_alive=False, pace=0.01)  # a new connection per request: both workers busy
    load.start(thread_count=4)
    try:
        busy_until = time.monotonic() + 3
        while time.monotonic() < busy_until:
            load.wait_for_answers(1, within=20)
            time.sleep(0.05)
    finally:
        load.stop()
    assert load.failures == [], f"{len(load.failures)} failed requests, e.g. {load.failures[:3]}"
    assert worker_ids(server, "reuseport") == workers, "a busy worker was replaced"
    assert "SIGKILL" not in server.stderr_so_far()[mark:]


@pytest.mark.needs("rolling_restart")
def test_a_rolling_restart_into_code_that_cannot_start_is_given_up_and_the_old_workers_serve_on(
    phase: Phase, tmp_path: Path
) -> None:
    """SIGHUP after a bad deploy: the new workers die before they are ready, again and again. The restart is
    given up (one line says so), the old workers serve on, and a dead one is replaced, or at least kept out of
    the rotation; once the code is mended, the next SIGHUP is accepted and replaces every worker."""
    shutil.copytree(REPO_ROOT / phase.name, tmp_path / phase.name)  # a deploy of our own, to break
    app = tmp_path / phase.name / "app.py"
    good_code = app.read_text()
    server = RunningServer(phase.name, "--workers", "2", root=tmp_path)
    try:
        old_workers = worker_ids(server, "reuseport")
        app.write_text(good_code + '\nraise RuntimeError("planted: this deploy cannot start")\n')
        mark = len(server.stderr_so_far())
        server.process.send_signal(signal.SIGHUP)
        wait_for_log(
            server, r"^supervisor: rolling restart given up: .*; the old workers serve on$", after=mark
        )
        new_clients_are_served(server)
        assert worker_ids(server, "reuseport") >= old_workers
        # An old worker dies: its replacement loads the broken code too and dies, but its slot is steered out.
        victim = min(old_workers)
        mark = len(server.stderr_so_far())
        os.kill(victim, signal.SIGKILL)
        wait_for_log(server, rf"\(pid {victim}\): killed by SIGKILL; its replacement starts in", after=mark)
        wait_for_log(server, r"^supervisor: new clients go to worker\(s\) \d+ only", after=mark)
        new_clients_are_served(server)
        app.write_text(good_code)  # mended
        mark = len(server.stderr_so_far())
        server.process.send_signal(signal.SIGHUP)
        wait_for_log(server, r"^supervisor: rolling restart done", after=mark, within=20)
        new_clients_are_served(server)
        assert not worker_ids(server, "reuseport") & old_workers
    finally:
        server.stop()
    # The broken deploy's workers printed their traceback as they started (a worker given up may be cut off
    # in the middle of it, and two workers' lines may interleave on the stderr they share); nothing else may
    # have: every frame of every traceback is the start-up's, runpy's or a module's import.
    assert server.process.returncode == 0, server.stderr
    frames = [line.strip() for line in server.stderr.splitlines() if line.strip().startswith('File "')]
    assert frames, server.stderr
    assert all("<frozen runpy>" in frame or frame.endswith("in <module>") for frame in frames), server.stderr


# --- the supervisor's own rules, in-process ---------------------------------------------------------------


def idle_supervisor(phase: Phase, listeners: list[socket.socket], **options: Any) -> Any:
    """A Supervisor of `phase`'s workers.py made in this process, to call its methods one by one."""
    workers = phase.import_module("workers")
    settings: dict[str, Any] = {"model": "reuseport", "worker_count": 1, "worker_command": []}
    settings |= {"serve_worker": lambda *_: 0, "shutdown_timeout": 1.0, **options}
    return workers.Supervisor(listeners, **settings)


def test_the_crash_loop_backoff_doubles_up_to_its_cap(phase: Phase) -> None:
    """A worker that keeps dying young waits 0.1 s, 0.2 s, 0.4 s... for its replacement, never more than
    MAX_BACKOFF; once one has served a while, the next replacement is immediate again."""
    supervisor = idle_supervisor(phase, [])
    max_backoff = phase.import_module("workers").MAX_BACKOFF
    delays = []
    for _ in range(10):
        supervisor.replace_later(0, 0, young=True, why="planted: a young death")
        delays.append(supervisor.backoff[0])
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, max_backoff, max_backoff, max_backoff]
    supervisor.replace_later(0, 0, young=False, why="planted: a death after serving")
    assert supervisor.backoff[0] == 0.0


def test_a_thread_worker_told_to_stop_before_it_is_ready_is_told_again_once_it_is(phase: Phase) -> None:
    """A stop that comes while a thread worker is still starting has nowhere to go (no loop yet, so no wakeup
    socket): the supervisor must tell it once it says it is ready, or the threads model hangs on SIGTERM."""
    go = threading.Event()
    told: list[bytes] = []

    class StartingLoop:
        """What the supervisor uses of a thread's loop: the socket its stop requests are written to."""

        def __init__(self) -> None:
            self.wakeup_reader, self.wakeup_writer = socket.socketpair()

    def serve(listener: socket.socket, ready: Callable[[Any], None]) -> int:
        loop = StartingLoop()
        go.wait(10)  # still starting while the stop comes
        ready(loop)
        loop.wakeup_reader.settimeout(10)
        try:
            told.append(loop.wakeup_reader.recv(1))
        except TimeoutError:
            told.append(b"")
        listener.close()
        return 0

    supervisor = idle_supervisor(phase, [socket.socket()], model="threads", serve_worker=serve)
    supervisor.start_worker(0, 0)
    supervisor.stop("planted: a stop during start-up")
    go.set()
    deadline = time.monotonic() + 10
    while supervisor.workers and time.monotonic() < deadline:
        supervisor.poll_once()
    assert told == [bytes([signal.SIGTERM])], "the thread worker was never told to stop"
    assert not supervisor.workers


def test_a_steering_program_gives_new_connections_to_the_listeners_it_names(phase: Phase) -> None:
    """The classic BPF program the supervisor attaches to a reuseport group: the kernel then gives each new
    connection to one of the listeners named, by their index in the group, and to no other."""
    workers = phase.import_module("workers")
    listeners = listeners_on_one_port(3)
    port = listeners[0].getsockname()[1]

    def accepted_by_each(count: int = 60) -> list[int]:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
        accepted = [accept_all(listener) for listener in listeners]
        for sock in [*clients, *(sock for each in accepted for sock in each)]:
            sock.close()
        return [len(each) for each in accepted]

    try:
        workers.attach_steering(listeners[0], [1])
        assert accepted_by_each() == [0, 60, 0]
        workers.attach_steering(listeners[0], [0, 2])
        to_each = accepted_by_each()
        assert to_each[1] == 0 and to_each[0] > 0 and to_each[2] > 0, to_each
        listeners[0].setsockopt(socket.SOL_SOCKET, workers.SO_DETACH_REUSEPORT_BPF, 0)
        assert all(accepted_by_each()), "detached: the kernel's hash spreads them again"
    finally:
        for listener in listeners:
            listener.close()


# --- Ctrl-C, and the shutdown's last resort ---------------------------------------------------------------


def test_ctrl_c_in_the_terminal_drains_the_server_without_cutting_an_answer(
    start_server: Callable[..., RunningServer],
) -> None:
    """A terminal's Ctrl-C sends SIGINT to its whole foreground process group. The workers are in groups of
    their own: the supervisor alone gets it, and drains them once. In its group, a worker would get SIGINT,
    then the supervisor's SIGTERM: a second stop signal, which stops at once and cuts the answer in flight."""
    server = start_server("--max-body-bytes", str(SlowReader.SIZE))
    reader = SlowReader.begin(server)
    os.killpg(
        server.pid, signal.SIGINT
    )  # the server is its group's leader, as in a terminal (tools/phases.py)
    answer = reader.read_the_rest()
    assert answer.endswith(reader.body), f"an answer begun was cut: {len(answer)} bytes arrived"
    server.process.wait(timeout=15)
    assert server.process.returncode == 0


def test_workers_that_cut_their_connections_at_the_shutdown_timeout_are_not_killed(
    start_server: Callable[..., RunningServer],
) -> None:
    """At the shutdown timeout each worker cuts what is left and exits by itself; SIGKILL, the supervisor's
    last resort, comes only KILL_GRACE later, for a worker that did not. A client that never reads its answer
    holds a connection open until the cut."""
    server = start_server("--shutdown-timeout", "1", "--max-body-bytes", str(SlowReader.SIZE))
    reader = SlowReader.begin(server)  # and never read: its answer is cut at the timeout
    try:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=15)
    finally:
        reader.sock.close()
    log = server.stderr_so_far()
    assert "connection(s) cut" in log, log
    assert "SIGKILL" not in log and log.count("exited with status 0") == 2, log
    assert server.process.returncode == 0


# --- no zombie ------------------------------------------------------------------------------------------


def assert_no_zombie_outlives_a_second(server: RunningServer, exited: int) -> None:
    deadline = time.monotonic() + ZOMBIE_DEADLINE
    while zombie_children(server) or psutil.pid_exists(exited):
        assert time.monotonic() < deadline, f"zombies {zombie_children(server)} after {ZOMBIE_DEADLINE} s"
        time.sleep(0.01)


@pytest.mark.parametrize("model", PROCESS_MODELS)
def test_exited_workers_are_reaped_within_a_second(
    start_server: Callable[..., RunningServer], model: str
) -> None:
    server = start_server("--model", model)
    victim = min(worker_ids(server, model))
    mark = len(server.stderr_so_far())
    os.kill(victim, signal.SIGKILL)
    wait_for_log(server, rf"^supervisor: worker \d+ \(pid {victim}\): killed by SIGKILL", after=mark)
    assert_no_zombie_outlives_a_second(server, victim)
    wait_for_log(server, r"\): ready$", after=mark)
    old_workers = worker_ids(server, model)
    mark = len(server.stderr_so_far())
    server.process.send_signal(signal.SIGHUP)
    wait_for_log(server, r"^supervisor: rolling restart done", after=mark, within=10)
    for old_worker in old_workers:
        assert_no_zombie_outlives_a_second(server, old_worker)


# --- the workers die with their supervisor ---------------------------------------------------------------


def test_workers_exit_when_their_supervisor_is_killed(phase: Phase) -> None:
    """kill -9 of the supervisor: nobody is left to drain the workers, so each has asked the kernel for a
    SIGTERM when its parent dies (PR_SET_PDEATHSIG), and drains itself within the shutdown timeout."""
    shutdown_timeout = 2.0
    # Not the start_server fixture: a supervisor killed by SIGKILL is this test's point, not a failure.
    server = start_phase(phase, "--shutdown-timeout", str(shutdown_timeout))
    workers = [process.pid for process in worker_processes(server)]
    try:
        assert len(workers) == 2
        server.process.kill()
        server.process.wait(timeout=5)
        deadline = time.monotonic() + shutdown_timeout + 2  # the drain, and an interpreter's exit
        while left := [pid for pid in workers if not is_gone(pid)]:
            assert time.monotonic() < deadline, f"workers outlived their supervisor: {left}"
            time.sleep(0.01)
    finally:
        for pid in workers:  # if the test failed: the orphans it made are still ours to stop
            if not is_gone(pid):
                os.kill(pid, signal.SIGKILL)
        server.stop()


# --- a crash loop does not spin -----------------------------------------------------------------------------


def test_a_worker_that_keeps_dying_young_is_replaced_after_growing_delays(
    start_server: Callable[..., RunningServer],
) -> None:
    """The first death of a worker that had served a while is replaced at once; a replacement that dies
    before it has served one second waits 0.1 s, then 0.2 s, then 0.4 s... And the wait is real."""
    server = start_server("--workers", "1")
    time.sleep(1.2)  # ready before it said `listening on`: after a second of serving it counts as healthy
    (worker,) = worker_ids(server, "reuseport")
    delays, waited = [], []
    for _ in range(4):
        mark = len(server.stderr_so_far())
        killed_at = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        died = wait_for_log(
            server, rf"\(pid {worker}\): killed by SIGKILL; its replacement starts in (.+) s$", after=mark
        )
        delays.append(float(died.group(1)))
        started = wait_for_log(
            server, r"^supervisor: worker 0 \(pid (\d+)\): started(?: on CPU \d+)?$", after=mark
        )
        waited.append(time.monotonic() - killed_at)
        worker = int(started.group(1))
        wait_for_log(server, rf"^supervisor: worker 0 \(pid {worker}\): ready$", after=mark)
    assert delays == [0.0, 0.1, 0.2, 0.4]
    assert all(wait >= delay for wait, delay in zip(waited, delays, strict=True)), (delays, waited)


# --- the command line ---------------------------------------------------------------------------------------


def run_to_exit(phase: Phase, *options: str) -> subprocess.CompletedProcess[str]:
    """`python -m PHASE --host 127.0.0.1 OPTIONS`, run to its exit (a server that starts times out)."""
    return subprocess.run(
        [sys.executable, "-m", phase.name, "--host", "127.0.0.1", *options],
        check=False,  # the exit status is what the tests look at
        cwd=phase.root,
        env={**os.environ, "PYTHONPATH": str(phase.root), "PYTHONDONTWRITEBYTECODE": "1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
    )


def test_zero_workers_is_a_usage_error(phase: Phase) -> None:
    result = run_to_exit(phase, "--port", "0", "--workers", "0")
    assert result.returncode == 2 and result.stdout == ""
    assert "--workers" in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("model", MODELS)
def test_a_port_another_server_of_ours_listens_on_is_busy(
    start_server: Callable[..., RunningServer], phase: Phase, model: str
) -> None:
    """A port already served is busy, even by a server that listens with SO_REUSEPORT like ours: the kernel
    lets any socket of the same user with that option join the port, so a second server would silently take
    half the first one's clients. (tests/test_startup.py covers a port held by a plain listener.)"""
    first = start_server("--model", model)
    second = subprocess.Popen(
        [sys.executable, "-m", phase.name, "--host", first.host, "--port", str(first.port), "--model", model],
        cwd=phase.root,
        env={**os.environ, "PYTHONPATH": str(phase.root), "PYTHONDONTWRITEBYTECODE": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert second.stdout is not None
    said = second.stdout.readline()  # `listening on ...` if it started; end of file once it has exited
    if said:
        second.terminate()
    _, stderr = second.communicate(timeout=15)
    assert said == "", f"a second server started on the port the first one serves: {said}"
    assert stderr.startswith(f"error: cannot listen on 127.0.0.1:{first.port}: "), stderr
    assert second.returncode == 2


# --- the kernel's trap, with no server -------------------------------------------------------------------


def listeners_on_one_port(count: int) -> list[socket.socket]:
    listeners: list[socket.socket] = []
    port = 0  # the first gets a free port; the others join it
    for _ in range(count):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        port = listener.getsockname()[1]
        listeners.append(listener)
    return listeners


def accept_all(listener: socket.socket) -> list[socket.socket]:
    """Every client queued on `listener` now, accepted."""
    listener.setblocking(False)
    accepted = []
    while True:
        try:
            accepted.append(listener.accept()[0])
        except BlockingIOError:
            return accepted


def ended(client: socket.socket) -> bool:
    """True if the server's side of the connection is gone: a reset, or an end of file, with no data."""
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.usefixtures("phase")  # no server: run once, for the phases whose chapter this is
@pytest.mark.parametrize("kept_by", ["nobody", "a dup", "a child process"])
def test_closing_the_last_descriptor_of_a_reuseport_listener_resets_its_queued_clients(kept_by: str) -> None:
    """Two SO_REUSEPORT listeners on one port; the kernel hashes each client to one of them, where it waits,
    handshake done, to be accepted. Closing a listener whose socket nobody else holds resets the clients
    queued on it: a worker that exits with the only descriptor of its listener takes its queue down with it.
    Kept open by another descriptor (a dup, or a supervisor's copy in another process), the socket lives on,
    and its clients wait for whoever accepts next. (Linux 5.14 and later can move them to another listener
    instead, with the sysctl net.ipv4.tcp_migrate_req = 1: off by default; if on, nobody is reset.)"""
    migrating = Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip() == "1"
    closing, staying = listeners_on_one_port(2)
    keeper: socket.socket | subprocess.Popen[bytes] | None = None
    if kept_by == "a dup":
        keeper = closing.dup()
    elif kept_by == "a child process":
        keeper = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"],  # holds what it inherits until stdin ends
            stdin=subprocess.PIPE,
            pass_fds=(closing.fileno(),),
        )
    clients = [socket.create_connection(staying.getsockname(), timeout=5) for _ in range(32)]
    served: dict[int, socket.socket] = {}  # client's port -> our side of its connection
    try:
        closing.close()
        served = {peer.getpeername()[1]: peer for peer in accept_all(staying)}
        queued_elsewhere = [client for client in clients if client.getsockname()[1] not in served]
        if migrating and kept_by == "nobody":
            assert queued_elsewhere == [], "with tcp_migrate_req = 1, every client moves to the open listener"
        else:
            assert 0 < len(queued_elsewhere) < len(clients), "32 clients all hashed to one of two listeners"
        # Resets are sent as the listener closes: over loopback they have arrived. Wait a little all the same.
        select.select(queued_elsewhere, [], [], 0.2)
        reset = [
            client for client in queued_elsewhere if select.select([client], [], [], 0)[0] and ended(client)
        ]
        if kept_by == "nobody":
            assert len(reset) == len(queued_elsewhere), (
                f"{len(reset)} of {len(queued_elsewhere)} queued reset"
            )
        else:
            assert reset == [], f"{len(reset)} of {len(queued_elsewhere)} queued clients reset"
        for peer in served.values():  # and the clients of the listener that stayed are served as ever
            peer.sendall(b"x")
        assert all(client.recv(1) == b"x" for client in clients if client.getsockname()[1] in served)
    finally:
        for sock in [*clients, *served.values(), staying]:
            sock.close()
        if isinstance(keeper, socket.socket):
            keeper.close()
        elif keeper is not None:
            keeper.communicate(timeout=5)
