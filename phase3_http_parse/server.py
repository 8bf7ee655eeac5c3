"""An HTTP/1.1 server on the epoll loop: keep-alive, pipelining, bodies, limits and timeouts.

The event loop is the echo server's. What changes is what happens to the bytes: each connection feeds them
to its own sans-I/O parser (protocol.py), answers every complete request in order, and closes when the
protocol, a limit or a timeout says so. Closing is the subtle part: a server that closes while the client
is still sending makes the kernel answer with a reset, which can destroy the response the client has not
read yet, so we half-close and drain first (a "lingering close"). The application is tiny and hard-coded.
"""

import errno
import resource
import select
import signal
import socket
import sys
import time
from types import FrameType

from .protocol import (
    CONTINUE_RESPONSE,
    HttpError,
    Limits,
    Request,
    RequestParser,
    error_response,
    render_response,
)

# --8<-- [start:defaults]
LISTEN_BACKLOG = 1024
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_LIMITS = Limits()
# A client has this long to send a whole request head, however it trickles the bytes (slowloris).
DEFAULT_HEADER_TIMEOUT = 10.0
# After an answer that ends the connection, how long we keep draining what the client still sends.
LINGER_TIMEOUT = 2.0
# Backpressure: stop reading from a client that has this much of our output still unread...
DEFAULT_HIGH_WATER_MARK = 1024 * 1024
# ...and read again once its pending output has drained below this. The gap keeps us from flapping.
DEFAULT_LOW_WATER_MARK = 256 * 1024
# --8<-- [end:defaults]

EPOLLIN, EPOLLOUT, EPOLLET = select.EPOLLIN, select.EPOLLOUT, select.EPOLLET
HANGUP = select.EPOLLHUP | select.EPOLLERR
# accept() errors that say "the machine is out of something", not "this client failed".
RESOURCE_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


# --8<-- [start:app]
HELLO = b"Hello, World!"
NOT_FOUND = b"Not Found\n"


def handle(request: Request) -> bytes:
    """The whole application: `GET /` says hello, `POST /echo` returns the body, the rest is 404."""
    path = request.path
    if path == "/" and request.method in ("GET", "HEAD"):
        return render_response(request, 200, HELLO)
    if path == "/echo" and request.method == "POST":
        return render_response(request, 200, request.body)
    return render_response(request, 404, NOT_FOUND)


# --8<-- [end:app]


class StopServer(Exception):
    """Raised by the SIGINT and SIGTERM handler to unwind the server from wherever it is blocked."""


# --8<-- [start:stop]
def _raise_stop_server(signum: int, frame: FrameType | None) -> None:
    raise StopServer(signal.Signals(signum).name)


def install_stop_handlers() -> None:
    # A signal interrupts the blocked epoll.poll(); Python runs this handler, and because it raises, the
    # call unwinds with StopServer instead of being retried (PEP 475 retries only if none raises).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_stop_server)


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
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (old soft limit, new soft limit)."""
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
    __slots__ = (
        "closing",
        "deadline",
        "fd",
        "interest",
        "parser",
        "peer_closed",
        "pending_output",
        "reading",
        "sock",
        "strict_deadline",
    )

    def __init__(self, sock: socket.socket, deadline: float, limits: Limits) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.pending_output = bytearray()  # bytes the kernel would not take yet, in order
        self.reading = True  # False while backpressure pauses reading, or once the client stopped sending
        self.peer_closed = False  # recv() returned 0: the client shut down its sending side
        self.interest = EPOLLIN  # the events epoll watches for on this socket now
        self.deadline = deadline  # close the connection if nothing happens on it before this time
        # A deadline that activity does not push back: the header timeout, then the lingering close.
        self.strict_deadline: float | None = None
        self.parser = RequestParser(limits)  # owns the receive buffer: what is not yet a whole request
        self.closing = False  # the answer that ends this connection is queued: read nothing more into it


# --8<-- [end:connection]


class Server:
    """The event loop: one epoll instance, one listener, a dict of connections by file descriptor."""

    def __init__(
        self,
        listener: socket.socket,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        limits: Limits = DEFAULT_LIMITS,
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
        self.header_timeout = header_timeout
        self.limits = limits
        # Check deadlines ten times per timeout: a connection closes at most 10% late, for one O(n) scan.
        self.sweep_interval = min(idle_timeout / 10, header_timeout / 10, 1.0)
        self.next_sweep = 0.0
        self.high_water_mark = high_water_mark
        self.low_water_mark = low_water_mark
        self.edge_triggered = edge_triggered
        self.trigger_flag = EPOLLET if edge_triggered else 0
        self.accepting = True

    # --8<-- [start:loop]
    def serve_forever(self) -> None:
        self.epoll.register(self.listener_fd, EPOLLIN | self.trigger_flag)
        connections = self.connections
        while True:
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
                if mask & HANGUP:  # reset, or both directions shut: nobody is left to answer
                    self.close(connection)
                    continue
                connection.deadline = now + self.idle_timeout
                if mask & EPOLLIN:
                    self.on_readable(connection)
                if mask & EPOLLOUT and fd in connections:
                    self.on_writable(connection)
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
            # Each response leaves in one send(); Nagle would hold back the next one behind a delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = Connection(sock, now + self.idle_timeout, self.limits)
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
                # Straight into the parser's buffer, where the bytes will be parsed: no copy on the way.
                with connection.parser.receive_buffer() as room:
                    count = connection.sock.recv_into(room)
            except BlockingIOError:
                return  # EAGAIN: nothing more to read for now
            except OSError:
                self.close(connection)  # ECONNRESET and the like: the client is gone
                return
            if count == 0:
                self.on_peer_closed(connection)
                return
            self.on_data(connection, count)
            if not self.edge_triggered:
                return

    def on_data(self, connection: Connection, count: int) -> None:
        connection.parser.received(count)  # a closing connection's parser drops the bytes: we drain
        if not connection.closing:
            self.process_requests(connection)
            self.time_request_head(connection)

    def time_request_head(self, connection: Connection) -> None:
        # The header timeout runs from the first byte of a head; more bytes do not push it back (slowloris).
        if connection.closing:
            return  # the lingering close has its own deadline
        if not connection.parser.reading_head:
            connection.strict_deadline = None
        elif connection.strict_deadline is None:
            connection.strict_deadline = time.monotonic() + self.header_timeout

    def on_peer_closed(self, connection: Connection) -> None:
        # A half-close (shutdown(SHUT_WR)) still expects its answers: finish sending, then close.
        connection.peer_closed = True
        connection.reading = False
        if connection.pending_output:
            self.update_interest(connection)
        else:
            self.close(connection)

    # --8<-- [end:read]

    # --8<-- [start:requests]
    def process_requests(self, connection: Connection) -> None:
        """Answer every complete request the parser holds, in order, then send the answers in one go."""
        parser = connection.parser
        responses = []
        # Pipelining: one read may hold many requests. Stop at a closing one, or when the client is not
        # reading our answers (backpressure): the rest waits, unparsed, in the parser.
        while not connection.closing and len(connection.pending_output) < self.high_water_mark:
            try:
                request = parser.next_request()
            except HttpError as error:
                responses.append(error_response(error))
                connection.closing = True
                break
            if request is None:
                if parser.take_continue():  # the client waits for our go-ahead before sending the body
                    responses.append(CONTINUE_RESPONSE)
                break
            responses.append(handle(request))
            if not request.keep_alive:
                connection.closing = True
        if responses:
            connection.strict_deadline = None  # a head is complete: the next one starts its own clock
            self.send(connection, responses[0] if len(responses) == 1 else b"".join(responses))
        if connection.closing and not connection.pending_output and connection.fd in self.connections:
            self.linger(connection)

    # --8<-- [end:requests]

    # --8<-- [start:write]
    def send(self, connection: Connection, data: bytes | memoryview) -> None:
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
        if connection.pending_output:
            self.update_interest(connection)
            return
        if connection.closing:
            self.linger(connection)
            return
        # Drained: answer the pipelined requests that backpressure left waiting in the parser.
        self.process_requests(connection)
        if connection.fd not in self.connections:
            return
        if connection.peer_closed and not connection.pending_output:
            self.close(connection)
        else:
            self.update_interest(connection)

    # --8<-- [end:write]

    # --8<-- [start:backpressure]
    def update_interest(self, connection: Connection) -> None:
        """Watch for EPOLLOUT only while output is pending; pause reading above the high-water mark."""
        pending = len(connection.pending_output)
        if connection.reading and pending > self.high_water_mark:
            connection.reading = False  # this client does not read its echo: stop reading what it sends
        elif not connection.reading and not connection.peer_closed and pending < self.low_water_mark:
            connection.reading = True
        interest = (EPOLLIN if connection.reading else 0) | (EPOLLOUT if pending else 0)
        if interest != connection.interest:  # epoll_ctl is a system call: make it only on a change
            connection.interest = interest
            self.epoll.modify(connection.fd, interest | self.trigger_flag)

    # --8<-- [end:backpressure]

    # --8<-- [start:close]
    def linger(self, connection: Connection) -> None:
        """Half-close after the last answer, then drain what the client still sends until it closes too."""
        if connection.peer_closed:
            self.close(connection)
            return
        try:
            # FIN after our last byte: the client reads the whole answer, then end of stream. A plain close()
            # with its unread bytes in our receive queue would send RST, which can destroy that answer.
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(connection)
            return
        connection.reading = True
        connection.strict_deadline = time.monotonic() + LINGER_TIMEOUT
        self.update_interest(connection)

    def close(self, connection: Connection) -> None:
        del self.connections[connection.fd]
        connection.reading = False  # ends an edge-triggered read loop that is still running on it
        # Closing the only descriptor of a socket also removes it from epoll: no unregister call needed.
        connection.sock.close()
        if not self.accepting:
            self.resume_accepting()

    def close_idle_connections(self, now: float) -> None:
        # A client that neither sends nor reads holds a descriptor and a slot: reclaim both after a while.
        for connection in list(self.connections.values()):
            if connection.strict_deadline is not None and connection.strict_deadline <= now:
                self.on_strict_deadline(connection)
            elif connection.deadline <= now:
                self.close(connection)
        self.next_sweep = now + self.sweep_interval

    def on_strict_deadline(self, connection: Connection) -> None:
        if connection.closing:
            self.close(connection)  # the lingering close is over, drained or not
            return
        # A request head did not arrive in time: tell the client so, then close.
        connection.closing = True
        connection.parser.close()
        self.send(connection, error_response(HttpError(408, "request head not received in time")))
        if connection.fd in self.connections and not connection.pending_output:
            self.linger(connection)

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
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    limits: Limits = DEFAULT_LIMITS,
    edge_triggered: bool = False,
) -> int:
    """Serve until SIGINT or SIGTERM; return the exit status."""
    install_stop_handlers()
    old_limit, new_limit = raise_open_file_limit()
    change = f"raised from {old_limit} to" if new_limit != old_limit else "already at"
    print(f"open-file limit (RLIMIT_NOFILE) {change} {new_limit}", file=sys.stderr)
    with create_listener(host, port) as listener:
        bound_host, bound_port = listener.getsockname()[:2]
        print(f"listening on {bound_host}:{bound_port}", flush=True)
        server = Server(
            listener,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            header_timeout=header_timeout,
            limits=limits,
            edge_triggered=edge_triggered,
        )
        try:
            server.serve_forever()
        except StopServer:
            pass
        finally:
            server.shutdown()
    return 0
