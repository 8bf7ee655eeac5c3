"""A non-blocking TCP echo server on epoll: thousands of clients on one thread.

Phase 1 blocked in accept(), recv() or send() while every other client waited. Here no socket call ever
blocks: each one makes progress now or fails at once with EAGAIN, and epoll tells us which sockets can make
progress. The price is that what a blocking server kept on its stack (what is left to send to this client, is
it still sending to us) now lives in one Connection object per client, and the loop must never dwell on one.
"""

import errno
import resource
import select
import signal
import socket
import sys
import time
import traceback
from types import FrameType

DEFAULT_BUFFER_SIZE = 64 * 1024
# --8<-- [start:defaults]
LISTEN_BACKLOG = 1024
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_IDLE_TIMEOUT = 60.0
# Backpressure: stop reading from a client that has this much of our output still unread...
DEFAULT_HIGH_WATER_MARK = 1024 * 1024
# ...and read again once its pending output has drained below this. The gap keeps us from flapping.
DEFAULT_LOW_WATER_MARK = 256 * 1024
# --8<-- [end:defaults]

EPOLLIN, EPOLLOUT, EPOLLET = select.EPOLLIN, select.EPOLLOUT, select.EPOLLET
HANGUP = select.EPOLLHUP | select.EPOLLERR
# accept() errors that say "the machine is out of something", not "this client failed".
RESOURCE_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class StopServer(BaseException):
    """Raised by the SIGINT and SIGTERM handler to unwind the server from wherever it is blocked. A
    BaseException, like KeyboardInterrupt, so that the loop's guards (`except Exception`) let it through."""


# --8<-- [start:stop]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_stop_server(signum: int, frame: FrameType | None) -> None:
    # Only the first signal raises. A second one (an impatient Ctrl-C) must neither cut the shutdown short
    # nor kill the process as it exits: block the rest, and disarm this handler for one already caught.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _ignore_repeated_stop)
    raise StopServer(signal.Signals(signum).name)


def _ignore_repeated_stop(signum: int, frame: FrameType | None) -> None:
    """Not SIG_IGN: with it, a signal caught before the swap but not yet handled would be reported on
    stderr, with a traceback, as "Signal 15 ignored due to race condition"."""


def install_stop_handlers() -> None:
    # A signal interrupts the blocked epoll.poll(); Python runs this handler, and because it raises, the
    # call unwinds with StopServer instead of being retried (PEP 475 retries only if none raises).
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stop_server)


def log_exception(what: str) -> None:
    """One log entry on stderr: what happened, then the traceback of the exception being handled."""
    print(f"{what}:\n{traceback.format_exc()}", end="", file=sys.stderr, flush=True)


# --8<-- [end:stop]


# --8<-- [start:listen]
def create_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    # Without SO_REUSEADDR a restarted server cannot bind its port while old connections sit in TIME_WAIT.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    # The kernel completes handshakes on its own and queues up to LISTEN_BACKLOG clients for accept().
    listener.listen(LISTEN_BACKLOG)
    # accept() on an empty queue now fails with EAGAIN (BlockingIOError) instead of waiting.
    listener.setblocking(False)
    return listener


# --8<-- [end:listen]


# --8<-- [start:rlimit]
def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (to 2**20 if the hard limit is unlimited); return
    (old soft limit, new soft limit)."""
    # Every connection is a file descriptor, and the usual soft limit of 1024 would cap us near 1000 clients.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1024 * 1024
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return soft, wanted
    return soft, soft


# --8<-- [end:rlimit]


# --8<-- [start:connection]
class Connection:
    """What we know about one client between two events: everything a blocking server kept on its stack."""

    # __slots__: no per-object __dict__, so ten thousand idle connections cost ten thousand small objects.
    __slots__ = ("deadline", "fd", "interest", "peer_closed", "pending_output", "reading", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.pending_output = bytearray()  # bytes the kernel would not take yet, in order
        self.reading = True  # False while backpressure pauses reading, or once the client stopped sending
        self.peer_closed = False  # recv() returned 0: the client shut down its sending side
        self.interest = EPOLLIN  # the events epoll watches for on this socket now
        self.deadline = deadline  # close the connection if nothing happens on it before this time


# --8<-- [end:connection]


class Server:
    """The event loop: one epoll instance, one listener, a dict of connections by file descriptor."""

    def __init__(
        self,
        listener: socket.socket,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        high_water_mark: int = DEFAULT_HIGH_WATER_MARK,
        low_water_mark: int = DEFAULT_LOW_WATER_MARK,
        edge_triggered: bool = False,
    ) -> None:
        self.listener = listener
        self.listener_fd = listener.fileno()
        self.epoll = select.epoll()
        self.connections: dict[int, Connection] = {}
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        # Check deadlines ten times per timeout: a connection closes at most 10% late, for one O(n) scan.
        self.sweep_interval = min(idle_timeout / 10, 1.0)
        self.next_sweep = 0.0
        self.high_water_mark = high_water_mark
        self.low_water_mark = low_water_mark
        self.edge_triggered = edge_triggered
        self.trigger_flag = EPOLLET if edge_triggered else 0
        self.accepting = True
        # One receive buffer shared by every connection: the bytes are passed on before the next recv.
        self.read_buffer = bytearray(buffer_size)
        self.read_view = memoryview(self.read_buffer)

    # --8<-- [start:loop]
    def serve_forever(self) -> None:
        self.epoll.register(self.listener_fd, EPOLLIN | self.trigger_flag)
        while True:
            try:
                self.poll_once()
            except Exception:
                # The last resort, for a bug outside any one connection (accepting, the sweep): log it and
                # serve on. Level-triggered epoll reports again what this batch of events left unhandled.
                log_exception("unexpected error in the event loop, which serves on")

    def poll_once(self) -> None:
        connections = self.connections
        # EINTR needs no handling: Python retries poll() after a signal handler that does not raise.
        events = self.epoll.poll(self.sweep_interval)
        now = time.monotonic()
        for fd, mask in events:
            if fd == self.listener_fd:
                self.accept_clients(now)
                continue
            connection = connections.get(fd)
            if connection is None:  # closed earlier in this same batch of events
                continue
            try:
                if mask & HANGUP:  # reset, or both directions shut: nobody is left to echo to
                    self.close(connection)
                    continue
                connection.deadline = now + self.idle_timeout
                if mask & EPOLLIN:
                    self.on_readable(connection)
                if mask & EPOLLOUT and fd in connections:
                    self.on_writable(connection)
            except Exception:
                # A bug met while serving this connection costs this connection alone. Out here we cannot
                # know what it was in the middle of, so closing is all we can do.
                log_exception(f"unexpected error serving connection fd {fd}, which is closed")
                self.close(connection)
        if now >= self.next_sweep:
            self.close_idle_connections(now)

    # --8<-- [end:loop]

    # --8<-- [start:accept]
    def accept_clients(self, now: float) -> None:
        # One wakeup may stand for many queued clients: accept until EAGAIN says the queue is empty.
        while True:
            if len(self.connections) >= self.max_connections:
                self.pause_accepting()
                return
            try:
                sock, _address = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in RESOURCE_EXHAUSTED:
                    # Out of fds or memory: accepting again at once would spin. Wait for a close.
                    print(f"accept failed ({errno.errorcode[error.errno]}); pausing", file=sys.stderr)
                    self.pause_accepting()
                    return
                continue  # ECONNABORTED and the like: that client gave up, try the next
            sock.setblocking(False)  # an accepted socket does not inherit O_NONBLOCK from the listener
            connection = Connection(sock, now + self.idle_timeout)
            self.connections[connection.fd] = connection
            self.epoll.register(connection.fd, EPOLLIN | self.trigger_flag)

    def pause_accepting(self) -> None:
        # Clients keep queueing in the kernel's backlog while we do not watch the listener.
        self.accepting = False
        self.epoll.modify(self.listener_fd, 0)

    def resume_accepting(self) -> None:
        self.accepting = True
        # Re-arming also re-checks readiness, so clients that queued meanwhile are reported even in ET mode.
        self.epoll.modify(self.listener_fd, EPOLLIN | self.trigger_flag)

    # --8<-- [end:accept]

    # --8<-- [start:read]
    def on_readable(self, connection: Connection) -> None:
        # Level-triggered, one recv per wakeup is enough: epoll reports the socket again if bytes are left.
        # Edge-triggered, epoll reports only new arrivals, so we must read until EAGAIN or strand the rest.
        while connection.reading:
            try:
                count = connection.sock.recv_into(self.read_buffer)
            except BlockingIOError:
                return  # EAGAIN: nothing more to read for now
            except OSError:
                self.close(connection)  # ECONNRESET and the like: the client is gone
                return
            if count == 0:
                self.on_peer_closed(connection)
                return
            self.on_data(connection, self.read_view[:count])
            if not self.edge_triggered:
                return

    def on_data(self, connection: Connection, data: memoryview) -> None:
        """Echo: what came in goes back out."""
        self.send(connection, data)

    def on_peer_closed(self, connection: Connection) -> None:
        # A half-close (shutdown(SHUT_WR)) still expects its echo: finish sending, then close.
        connection.peer_closed = True
        connection.reading = False
        if connection.pending_output:
            self.update_interest(connection)
        else:
            self.close(connection)

    # --8<-- [end:read]

    # --8<-- [start:write]
    def send(self, connection: Connection, data: memoryview) -> None:
        """Send now what the kernel takes, queue the rest behind what is already waiting."""
        if not connection.pending_output:
            # Fast path: nothing queued, so hand the bytes straight to the kernel; it usually takes them all.
            try:
                sent = connection.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close(connection)  # EPIPE, ECONNRESET: the client is gone
                return
            if sent == len(data):
                return
            data = data[sent:]
        # Copy, because `data` is a view of the shared receive buffer that the next recv overwrites.
        connection.pending_output += data
        self.update_interest(connection)

    def on_writable(self, connection: Connection) -> None:
        try:
            sent = connection.sock.send(connection.pending_output)
        except BlockingIOError:
            return
        except OSError:
            self.close(connection)
            return
        # Deleting from the front of a bytearray is cheap in CPython: it moves a start offset, not the bytes.
        del connection.pending_output[:sent]
        if connection.peer_closed and not connection.pending_output:
            self.close(connection)
        else:
            self.update_interest(connection)

    # --8<-- [end:write]

    # --8<-- [start:backpressure]
    def has_room_for_output(self, connection: Connection) -> bool:
        """Backpressure's one test: below the high-water mark we read; at or above it, we do not."""
        return len(connection.pending_output) < self.high_water_mark

    def update_interest(self, connection: Connection) -> None:
        """Watch for EPOLLOUT only while output is pending; pause reading at the high-water mark."""
        pending = len(connection.pending_output)
        if connection.reading and not self.has_room_for_output(connection):
            connection.reading = False  # this client does not read its echo: stop reading what it sends
        elif not connection.reading and not connection.peer_closed and pending < self.low_water_mark:
            connection.reading = True
        interest = (EPOLLIN if connection.reading else 0) | (EPOLLOUT if pending else 0)
        if interest != connection.interest:  # epoll_ctl is a system call: make it only on a change
            connection.interest = interest
            self.epoll.modify(connection.fd, interest | self.trigger_flag)

    # --8<-- [end:backpressure]

    # --8<-- [start:close]
    def close(self, connection: Connection) -> None:
        del self.connections[connection.fd]
        connection.reading = False  # ends an edge-triggered read loop that is still running on it
        # Closing the only descriptor of a socket also removes it from epoll: no unregister call needed.
        connection.sock.close()
        if not self.accepting:
            self.resume_accepting()

    def close_idle_connections(self, now: float) -> None:
        # A client that neither sends nor reads holds a descriptor and a slot: reclaim both after a while.
        idle = [connection for connection in self.connections.values() if connection.deadline <= now]
        for connection in idle:
            self.close(connection)
        if not self.accepting and len(self.connections) < self.max_connections:
            # Paused for lack of fds or memory with no connection left to close: a close cannot resume us.
            self.resume_accepting()
        self.next_sweep = now + self.sweep_interval

    # --8<-- [end:close]

    def shutdown(self) -> None:
        for connection in list(self.connections.values()):
            self.close(connection)
        self.epoll.close()


def serve(
    host: str,
    port: int,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    edge_triggered: bool = False,
) -> int:
    """Serve until SIGINT or SIGTERM; return the exit status: 0, or 2 if it cannot listen on host:port."""
    try:
        listener = create_listener(host, port)
    except OSError as error:  # the port is taken, the address is not one of this machine's, ...
        print(f"error: cannot listen on {host}:{port}: {error.strerror}", file=sys.stderr)
        return 2
    old_limit, new_limit = raise_open_file_limit()
    change = f"raised from {old_limit} to" if new_limit != old_limit else "already at"
    print(f"open-file limit (RLIMIT_NOFILE) {change} {new_limit}", file=sys.stderr)
    with listener:
        server = Server(
            listener,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            buffer_size=buffer_size,
            edge_triggered=edge_triggered,
        )
        try:
            # Inside the try, and before we say where we listen: every stop signal lands in the except.
            install_stop_handlers()
            bound_host, bound_port = listener.getsockname()[:2]
            print(f"listening on {bound_host}:{bound_port}", flush=True)
            server.serve_forever()
        except StopServer:
            pass
        finally:
            server.shutdown()
    return 0
