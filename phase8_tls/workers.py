"""Worker processes, or threads, and the supervisor that starts, watches, replaces, restarts and stops them.

One event loop uses one core, so to use them all we run one loop per core: a worker. The supervisor owns
everything that must outlive a worker. It opens the listening sockets and hands them to every worker it
starts: a worker that exits closes only its own descriptor, so the clients queued in the kernel wait for
another worker instead of being reset. It watches each worker through a pipe: one byte on it means "ready",
end of file means "gone", whatever the way it went (exit, crash, kill -9). It replaces a worker that died,
at once if it had served a while and after a doubling delay if it keeps dying, so a crash loop does not spin.
A worker also beats on its pipe while its loop turns: one silent for a while gets no new clients, and one
silent for the heartbeat timeout is stuck (stopped, or in an endless loop), so it is killed and replaced.
SIGTERM or SIGINT drains every worker; SIGHUP starts a new set of workers and drains the old one only once
the whole new one is ready, so no client is refused or reset while it happens; a new set that cannot start
(broken code) is given up, and the old one serves on.

Connections reach the workers by one of three models, for the chapter to measure side by side:
  reuseport  one listener per worker, all on one port (SO_REUSEPORT): the kernel hashes each connection to
             one listener's queue. No contention, but no balance either: a busy worker's queue still fills.
  shared     one listener for all: every worker waits on it with EPOLLEXCLUSIVE, so one wakes per client.
  threads    one process, one loop per thread, one shared listener: the GIL lets one thread run Python at a
             time, so this model shows what processes buy.
The tradeoff accepted: workers share nothing but the sockets. Each worker process is a fresh interpreter
(started with `python -m`, so a restart also loads new code; threads run the code the supervisor loaded),
with its own memory and its own copy of every cache.
"""

import ctypes
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from .server import (
    HEARTBEAT_INTERVAL,
    STOP_SIGNALS,
    Server,
    create_listener,
    install_stop_handlers,
    log_exception,
    raise_open_file_limit,
)

MODELS = ("reuseport", "shared", "threads")
# A worker that had served this long before it died is replaced at once...
HEALTHY_UPTIME = 1.0
# ...one that died sooner waits this long before its replacement starts, doubled at each death, up to the max.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 10.0
# After the shutdown timeout, how long the workers get to close what they cut before SIGKILL.
KILL_GRACE = 2.0
# A worker beats on its pipe every HEARTBEAT_INTERVAL (server.py). One silent this long gets no new clients
# (reuseport: the kernel is told which listeners to pick) until it is heard again...
ROTATION_SILENCE = 0.75
# ...and one silent for the heartbeat timeout is stuck (stopped, or in an endless loop): killed, and replaced.
DEFAULT_HEARTBEAT_TIMEOUT = 10.0
# A rolling restart whose new workers die this many times in a row before they are ready is given up: the code
# they load cannot serve, and the old workers, which never stopped, serve on.
RESTART_ATTEMPTS = 3
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

# How a worker runs its loop: server.serve(listener, ready) with every option of the command line already
# bound (see __main__.py).
ServeFunction = Callable[[socket.socket, Callable[[Server], None]], int]


def _wake_the_loop(signum: int, frame: FrameType | None) -> None:
    """Nothing to do: the signal's number is on its way to the supervisor's loop (see Supervisor.run)."""


# --8<-- [start:worker]
@dataclass(eq=False)
class Worker:
    """One worker as the supervisor sees it: a process (or a thread) and the read end of its pipe."""

    slot: int  # which worker of the set it is: 0 .. N-1; its replacement takes the same slot
    generation: int  # which set it belongs to: a rolling restart starts the next one
    pipe: int  # one byte arrives when it is ready; end of file when it is gone
    process: subprocess.Popen[bytes] | None = None
    thread: threading.Thread | None = None
    server: Server | None = None  # a thread's loop, once ready: where its stop requests go
    ready_since: float | None = None
    last_heard: float = 0.0  # when its pipe last carried a byte: its "ready", then its heartbeats
    draining: bool = False
    killed: bool = False  # silent for the heartbeat timeout: SIGKILL is sent, its end of file will follow

    def __str__(self) -> str:
        how = f"pid {self.process.pid}" if self.process else f"thread, generation {self.generation}"
        return f"worker {self.slot} ({how})"

    def stop(self, signum: int) -> None:
        """Ask it to drain (the first time) or to stop now (the second), as a stop signal asks a server."""
        self.draining = True
        if self.process is not None:
            self.process.send_signal(signum)
        elif self.server is not None:
            # What Python's signal handler would write to the loop's wakeup socket: the signal's number.
            try:
                self.server.wakeup_writer.send(bytes([signum]))
            except OSError:
                pass  # its loop has ended and closed the socket: it is stopping already
        # A thread not yet ready is told when it is (see on_ready).


# --8<-- [end:worker]


class Supervisor:
    """The supervisor's own small event loop: signals and worker pipes on one epoll, plus a few timers."""

    def __init__(
        self,
        listeners: list[socket.socket],
        *,
        model: str,
        worker_count: int,
        worker_command: list[str],
        serve_worker: ServeFunction,
        shutdown_timeout: float,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        pin: bool = False,
    ) -> None:
        self.listeners = listeners  # one per worker slot (reuseport), or one for all
        self.model = model
        self.worker_count = worker_count
        self.worker_command = worker_command
        self.serve_worker = serve_worker  # how a thread serves; a process runs worker_command
        self.shutdown_timeout = shutdown_timeout
        self.heartbeat_timeout = heartbeat_timeout
        # Pinning (--pin): worker slot i runs on the i-th CPU we may use (modulo), and only there. The
        # scheduler never moves a loop away from the caches it warmed, nor away from a busy CPU either.
        self.cpus = sorted(os.sched_getaffinity(0)) if pin else []
        self.epoll = select.epoll()
        self.workers: dict[int, Worker] = {}  # by the fd of their pipe
        self.generation = 0
        self.backoff = [0.0] * worker_count  # per slot: how long the next replacement waits
        self.respawns: dict[tuple[int, int], float] = {}  # (slot, generation) -> when its replacement starts
        self.start_failures = [0] * worker_count  # per slot: new workers of a restart dead before ready
        self.steered_to = list(range(worker_count))  # reuseport: the slots whose listeners get new clients
        self.listening = False  # every worker of the first set was ready, and we said so
        self.failed = False  # a worker of the first set died before it was ready: exit status 1
        self.stopping = False
        self.kill_deadline: float | None = None  # stopping: when the workers still running get SIGKILL
        self.restarting = False
        self.wakeup_reader, self.wakeup_writer = socket.socketpair()
        self.wakeup_reader.setblocking(False)
        self.wakeup_writer.setblocking(False)
        self.epoll.register(self.wakeup_reader.fileno(), select.EPOLLIN)

    # --8<-- [start:run]
    def run(self) -> int:
        """Start the workers, say where we listen once all are ready, supervise until stopped; exit status."""
        signal.set_wakeup_fd(self.wakeup_writer.fileno(), warn_on_full_buffer=False)
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            signal.signal(signum, _wake_the_loop)
        for slot in range(self.worker_count):
            self.start_worker(slot, self.generation)
        while not self.stopping and not self.all_ready():
            self.poll_safely()
        if not self.stopping:
            # Only now: a client that connects as soon as it reads this line finds a worker to serve it.
            host, port = self.listeners[0].getsockname()[:2]
            print(f"listening on {host}:{port}", flush=True)
            self.listening = True
        while self.workers or not self.stopping:
            self.poll_safely()
        self.log("all workers stopped")
        return 1 if self.failed else 0

    # --8<-- [end:run]

    def all_ready(self) -> bool:
        current = [w for w in self.workers.values() if w.generation == self.generation and not w.draining]
        return len(current) == self.worker_count and all(worker.ready_since for worker in current)

    def poll_safely(self) -> None:
        try:
            self.poll_once()
        except Exception:
            # The supervisor must outlive any bug of its own: if it died, every worker would drain and exit.
            log_exception("supervisor: unexpected error, which it survives")

    def poll_once(self) -> None:
        now = time.monotonic()
        timers = [*self.respawns.values(), *([self.kill_deadline] if self.kill_deadline is not None else [])]
        if self.model != "threads" and self.workers:
            timers.append(now + HEARTBEAT_INTERVAL)  # to hear the heartbeats that do not come
        timeout = max(0.0, min(timers) - now) if timers else None
        for fd, _mask in self.epoll.poll(timeout):
            if fd == self.wakeup_reader.fileno():
                self.on_signals()
            elif fd in self.workers:
                self.on_pipe(self.workers[fd])
        now = time.monotonic()
        for (slot, generation), when in list(self.respawns.items()):
            if when <= now:
                del self.respawns[slot, generation]
                self.start_worker(slot, generation)
        if self.kill_deadline is not None and now >= self.kill_deadline:
            self.kill_the_stragglers()
        self.check_heartbeats(now)

    # --8<-- [start:start]
    def start_worker(self, slot: int, generation: int) -> None:
        listener = self.listeners[slot % len(self.listeners)]
        try:
            read_end, write_end = os.pipe()
        except OSError as error:  # out of descriptors: try again later, as after a crash
            why = f"worker {slot}: cannot start ({error.strerror})"
            self.replace_later(slot, generation, young=True, why=why)
            return
        worker = Worker(slot, generation, read_end)
        cpu = self.cpus[slot % len(self.cpus)] if self.cpus else None
        if self.model == "threads":
            worker.thread = threading.Thread(
                target=self.run_thread, args=(worker, listener.dup(), write_end, cpu), name=f"worker {slot}"
            )
            worker.thread.start()
        else:
            # A fresh interpreter, handed the listener and the pipe's write end by descriptor number; every
            # other descriptor is closed on exec. Its own process group: a Ctrl-C in the terminal reaches the
            # supervisor alone, which decides what the workers do.
            fds = ["--listener-fd", str(listener.fileno()), "--ready-fd", str(write_end)]
            try:
                worker.process = subprocess.Popen(
                    [*self.worker_command, "--worker-of", str(os.getpid()), *fds],
                    pass_fds=(listener.fileno(), write_end),
                    process_group=0,
                )
            except OSError as error:  # out of processes or memory: try again later, as after a crash
                os.close(read_end)
                why = f"worker {slot}: cannot start ({error.strerror})"
                self.replace_later(slot, generation, young=True, why=why)
                return
            finally:
                os.close(write_end)  # the worker holds the only write end: its exit is our end of file
            if cpu is not None:
                try:
                    os.sched_setaffinity(worker.process.pid, {cpu})
                except ProcessLookupError:
                    pass  # it died already: its pipe's end of file says so
        self.workers[read_end] = worker
        self.epoll.register(read_end, select.EPOLLIN)
        self.log(f"{worker}: started" + (f" on CPU {cpu}" if cpu is not None else ""))

    def run_thread(self, worker: Worker, listener: socket.socket, ready_pipe: int, cpu: int | None) -> None:
        def ready(server: Server) -> None:
            worker.server = server
            os.write(ready_pipe, b"!")

        try:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})  # pid 0 in a thread: this thread alone
            self.serve_worker(listener, ready)
        except BaseException:
            log_exception(f"{worker} failed")
        finally:
            os.close(ready_pipe)

    # --8<-- [end:start]

    # --8<-- [start:pipe]
    def on_pipe(self, worker: Worker) -> None:
        if os.read(worker.pipe, 64):  # its "ready", then its heartbeats
            worker.last_heard = time.monotonic()
            if worker.ready_since is None:
                self.on_ready(worker)
            return
        # End of file: the worker is gone. Reap it now (a process is a zombie until waited for).
        self.epoll.unregister(worker.pipe)
        os.close(worker.pipe)
        del self.workers[worker.pipe]
        if worker.process is not None:
            worker.process.wait()
            status = worker.process.returncode
            how = (
                f"killed by {signal.Signals(-status).name}" if status < 0 else f"exited with status {status}"
            )
        else:
            assert worker.thread is not None
            worker.thread.join()
            how = "ended"
        if worker.draining or self.stopping:
            self.log(f"{worker}: {how}")
        elif not self.listening:  # the first set cannot start: its error is the worker's last words above
            self.log(f"error: {worker} {how} before it was ready; stopping")
            self.failed = True
            self.stop("start-up failed")
        elif (
            self.restarting
            and worker.generation == self.generation
            and worker.ready_since is None
            and (self.count_start_failure(worker.slot) >= RESTART_ATTEMPTS)
        ):
            self.give_up_restart(f"{worker} {how} before it was ready, {RESTART_ATTEMPTS} times in a row")
        else:  # it died unasked: at once if it had served a while, else a crash loop must not spin
            served = (
                worker.ready_since is not None and time.monotonic() - worker.ready_since >= HEALTHY_UPTIME
            )
            # An old worker during a restart too: until the whole new set is ready, it serves its slot.
            self.replace_later(worker.slot, worker.generation, young=not served, why=f"{worker}: {how}")
        self.check_restart_done()
        self.steer()

    def replace_later(self, slot: int, generation: int, *, young: bool, why: str) -> None:
        """Start a worker in `slot` after a backoff: none if it served, doubled at each young death."""
        self.backoff[slot] = min(max(2 * self.backoff[slot], FIRST_BACKOFF), MAX_BACKOFF) if young else 0.0
        self.log(f"{why}; its replacement starts in {self.backoff[slot]:.1f} s")
        self.respawns[slot, generation] = time.monotonic() + self.backoff[slot]

    # --8<-- [end:pipe]

    # --8<-- [start:restart]
    def on_ready(self, worker: Worker) -> None:
        worker.ready_since = time.monotonic()
        self.start_failures[worker.slot] = 0
        self.log(f"{worker}: ready")
        if worker.draining:  # a thread told to stop before it was ready
            worker.stop(signal.SIGTERM)
        if self.restarting and self.all_ready():
            old = [w for w in self.workers.values() if w.generation < self.generation and not w.draining]
            if old:
                self.log(f"rolling restart: the new workers are ready, draining {len(old)} old one(s)")
            for old_worker in old:
                old_worker.stop(signal.SIGTERM)
            # An old worker's replacement still to come is not needed any more.
            self.respawns = {key: when for key, when in self.respawns.items() if key[1] == self.generation}
            self.check_restart_done()
        self.steer()

    def count_start_failure(self, slot: int) -> int:
        """One more new worker of a restart dead before it was ready, in `slot`: how many in a row now."""
        self.start_failures[slot] += 1
        return self.start_failures[slot]

    def give_up_restart(self, why: str) -> None:
        """The new workers cannot start (their code fails, say): drain those that did, start no more, and make
        the old set, which never stopped serving, the current one again. The next SIGHUP tries anew."""
        self.log(f"rolling restart given up: {why}; the old workers serve on")
        self.restarting = False
        for worker in self.workers.values():
            if worker.generation == self.generation:
                worker.stop(signal.SIGTERM)
            elif not worker.draining:
                worker.generation = self.generation  # from now on, a death of theirs is replaced as ever
        # No new worker is started any more; an old worker's replacement still to come is one of the set.
        current = self.generation
        old = {slot: when for (slot, generation), when in self.respawns.items() if generation < current}
        self.respawns = {(slot, current): when for slot, when in old.items()}

    # --8<-- [end:restart]

    def check_restart_done(self) -> None:
        old_ones_left = any(worker.generation < self.generation for worker in self.workers.values())
        if self.restarting and self.all_ready() and not old_ones_left:
            self.restarting = False
            self.log(f"rolling restart done: {self.worker_count} new worker(s) serve")

    # --8<-- [start:signals]
    def on_signals(self) -> None:
        try:
            signal_numbers = self.wakeup_reader.recv(64)
        except BlockingIOError:
            return
        for signum in signal_numbers:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                self.rolling_restart(name)
            elif self.stopping:
                self.log(f"{name} again: stopping the workers now")
                for worker in self.workers.values():
                    worker.stop(signal.SIGTERM)  # a second stop signal: the workers stop at once too
            else:
                self.stop(name)

    def stop(self, reason: str) -> None:
        """Drain every worker; the shutdown timeout is theirs to keep, KILL_GRACE later we make sure."""
        self.stopping = True
        self.respawns.clear()
        self.kill_deadline = time.monotonic() + self.shutdown_timeout + KILL_GRACE
        self.log(f"{reason}: stopping {len(self.workers)} worker(s), at most {self.shutdown_timeout} s")
        for worker in self.workers.values():
            worker.stop(signal.SIGTERM)
        # Our descriptors of the listeners go too: once the workers have closed theirs, the kernel refuses
        # new clients instead of queueing them for nobody.
        for listener in self.listeners:
            listener.close()

    def rolling_restart(self, reason: str) -> None:
        """Start a new set of workers; on_ready drains the old set once every new worker is ready."""
        if self.stopping or self.restarting:
            self.log(f"{reason}: ignored, {'stopping' if self.stopping else 'a restart is under way'}")
            return
        self.restarting = True
        self.respawns.clear()  # a slot waiting for its replacement gets one of the new set
        self.generation += 1
        self.start_failures = [0] * self.worker_count
        self.log(f"{reason}: rolling restart, starting {self.worker_count} new worker(s)")
        for slot in range(self.worker_count):
            self.start_worker(slot, self.generation)

    # --8<-- [end:signals]

    # --8<-- [start:heartbeat]
    def check_heartbeats(self, now: float) -> None:
        """Kill a worker process silent for the heartbeat timeout: stuck (stopped, or in an endless loop), it
        would hold its clients for ever. Its end of file follows, then its replacement, as after any death."""
        for worker in self.workers.values():
            if worker.process is None or worker.ready_since is None or worker.draining or worker.killed:
                continue
            silence = now - worker.last_heard
            if silence >= self.heartbeat_timeout:
                self.log(f"{worker}: silent for {silence:.1f} s; SIGKILL")
                worker.killed = True
                worker.process.kill()
        self.steer()

    def steer(self) -> None:
        """reuseport: new clients go only to the listeners of slots whose worker was heard from lately. The
        kernel gives each new connection to a listener of the group whoever is behind it, so a slot whose
        worker is dead (a crash loop waits up to MAX_BACKOFF) or silent (stopped, stuck) would keep its share
        of the clients waiting. A classic BPF program attached to the group picks among the others instead."""
        if self.model != "reuseport" or self.worker_count < 2 or self.stopping or not self.listening:
            return
        now = time.monotonic()
        heard = {
            worker.slot
            for worker in self.workers.values()
            if worker.ready_since is not None
            and not worker.draining
            and not worker.killed
            and now - worker.last_heard < ROTATION_SILENCE
        }
        slots = sorted(heard) or list(range(self.worker_count))  # nobody: the kernel's hash, as without us
        if slots == self.steered_to:
            return
        self.steered_to = slots
        if len(slots) == self.worker_count:
            self.listeners[0].setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
            self.log("new clients go to every worker again")
        else:
            attach_steering(self.listeners[0], slots)
            listed = ", ".join(str(slot) for slot in slots)
            self.log(f"new clients go to worker(s) {listed} only: the others are dead or silent")

    # --8<-- [end:heartbeat]

    def kill_the_stragglers(self) -> None:
        for worker in self.workers.values():
            if worker.process is not None and worker.process.returncode is None:
                self.log(f"{worker}: still running {KILL_GRACE} s after the shutdown timeout; SIGKILL")
                worker.process.kill()
        self.kill_deadline = None

    def log(self, message: str) -> None:
        print(f"supervisor: {message}", file=sys.stderr, flush=True)


# --8<-- [start:steering]
# From <asm-generic/socket.h>: a classic BPF program that picks, for each new connection, the listener of a
# reuseport group that gets it (by its index in the group: the order the listeners joined, slot order), and
# the option that removes it, leaving the kernel's hash (Linux 5.3).
SO_ATTACH_REUSEPORT_CBPF, SO_DETACH_REUSEPORT_BPF = 51, 68
# From <linux/filter.h>: the four instructions we need, and where a socket filter "loads" a random number.
BPF_LD_W_ABS, BPF_ALU_MOD_K, BPF_JMP_JEQ_K, BPF_RET_K = 0x20, 0x94, 0x15, 0x06
SKF_AD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_RANDOM, as the u32 an instruction holds
SOCK_FILTER = struct.Struct("=HBBI")  # one instruction: code, jump if true, jump if false, k
SOCK_FPROG = struct.Struct("=HxxxxxxQ")  # the program: its length, then the address of its instructions


def attach_steering(listener: socket.socket, slots: list[int]) -> None:
    """Make the kernel give each new connection of `listener`'s reuseport group to the listener of one of
    `slots`, at random:  A = random % len(slots);  return slots[A]  (a jump per slot: BPF has no table)."""
    program = [(BPF_LD_W_ABS, 0, 0, SKF_AD_RANDOM), (BPF_ALU_MOD_K, 0, 0, len(slots))]
    for index, slot in enumerate(slots[:-1]):
        program += [(BPF_JMP_JEQ_K, 0, 1, index), (BPF_RET_K, 0, 0, slot)]  # A == index: return that slot
    program.append((BPF_RET_K, 0, 0, slots[-1]))
    code = bytearray(b"".join(SOCK_FILTER.pack(*instruction) for instruction in program))
    instructions = (ctypes.c_char * len(code)).from_buffer(code)  # the kernel copies them from this address
    fprog = SOCK_FPROG.pack(len(program), ctypes.addressof(instructions))
    listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


# --8<-- [end:steering]


# --8<-- [start:listeners]
def open_listeners(host: str, port: int, model: str, worker_count: int) -> list[socket.socket]:
    """The listening sockets: one per worker for reuseport, all on the port the first one got; else one."""
    if model != "reuseport":
        return [create_listener(host, port)]
    if port != 0:
        # SO_REUSEPORT lets any socket of the same user join a port: a second server of ours would share the
        # first one's clients, and a busy port would go unnoticed. A plain listener fails there as usual.
        create_listener(host, port).close()
    listeners = [create_listener(host, port, reuse_port=True)]
    port = listeners[0].getsockname()[1]  # with --port 0: the port the kernel chose, for the others too
    for _ in range(worker_count - 1):
        listeners.append(create_listener(host, port, reuse_port=True))
    return listeners


# --8<-- [end:listeners]


# --8<-- [start:in-worker]
def run_worker_process(
    serve_worker: ServeFunction, supervisor_pid: int, listener_fd: int, ready_fd: int
) -> int:
    """A worker process's start-up: die with the supervisor, serve the listener it handed us, say "ready"."""
    # Ask the kernel for SIGTERM (a drain) when our parent dies, however it dies: no orphan serves on.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != supervisor_pid:
        return 0  # it died before we asked: nobody would ever stop us

    def beat() -> None:
        try:
            os.write(ready_fd, b".")
        except OSError:  # full (the supervisor has beats enough to read), or the supervisor is gone
            pass

    def ready(server: Server) -> None:
        install_stop_handlers(server.wakeup_writer.fileno())
        os.set_blocking(ready_fd, False)  # a heartbeat must never block the loop
        server.keep_heartbeat(beat)
        os.write(ready_fd, b"!")  # and keep the pipe open: its end of file tells the supervisor we are gone

    return serve_worker(socket.socket(fileno=listener_fd), ready)


# --8<-- [end:in-worker]


# --8<-- [start:supervise]
def supervise(
    serve_worker: ServeFunction,
    worker_command: list[str],
    *,
    host: str,
    port: int,
    model: str,
    worker_count: int,
    shutdown_timeout: float,
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
    static_dir: Path | None,
    pin: bool = False,
) -> int:
    """Open the listeners, start and supervise the workers until a stop; the exit status: 0, 1 if the workers
    could not start, 2 if the supervisor could not (the address, or a static directory that is not one)."""
    if static_dir is not None and not static_dir.is_dir():
        print(f"error: --static-dir {static_dir}: not a directory", file=sys.stderr)
        return 2
    try:
        listeners = open_listeners(host, port, model, worker_count)
    except OSError as error:  # the port is taken, the address is not one of this machine's, ...
        print(f"error: cannot listen on {host}:{port}: {error.strerror}", file=sys.stderr)
        return 2
    old_limit, new_limit = raise_open_file_limit()  # inherited by every worker
    change = f"raised from {old_limit} to" if new_limit != old_limit else "already at"
    print(f"open-file limit (RLIMIT_NOFILE) {change} {new_limit}", file=sys.stderr)
    supervisor = Supervisor(
        listeners,
        model=model,
        worker_count=worker_count,
        worker_command=worker_command,
        serve_worker=serve_worker,
        shutdown_timeout=shutdown_timeout,
        heartbeat_timeout=heartbeat_timeout,
        pin=pin,
    )
    try:
        return supervisor.run()
    finally:
        # As in a worker: a signal that arrives while the interpreter exits must not kill us half-way.
        signal.pthread_sigmask(signal.SIG_BLOCK, (*STOP_SIGNALS, signal.SIGHUP))


# --8<-- [end:supervise]
