"""An HTTP/1.1 server on the epoll loop: keep-alive, pipelining, bodies, limits, timeouts, files by sendfile.

The event loop is the echo server's. What changes is what happens to the bytes: each connection feeds them
to its own sans-I/O parser (protocol.py), answers every complete request in order, and closes when the
protocol, a limit or a timeout says so. Closing is the subtle part: a server that closes while the client
is still sending makes the kernel answer with a reset, which can destroy the response the client has not
read yet, so we half-close and drain first (a "lingering close"), unless the client asked for the answer to
be its last and sent nothing after it (the quick close). Stopping is closing for everyone at once:
a signal makes the loop drain (no new clients, requests in flight finished) instead of dropping them. The
application (app.py) answers each request with bytes, or with a head and a file that we send with
os.sendfile, one file at a time per connection: the kernel copies it to the socket, Python never sees it.

Every timeout measures the client, never the server: a head must arrive within the header timeout, a body
at a minimum rate, and neither clock runs while the server itself has stopped reading (backpressure). And no
input, nor any bug it finds, may stop the server: an exception while serving one connection costs that
connection alone.

This loop is one worker: it serves on a listening socket that the supervisor (workers.py) opened and handed
in, and says when it is ready. Several loops, each in its own process (or thread), serve the same port.

With a certificate, every connection speaks TLS (tls.py), and the loop drives it like everything else: a
new connection is handshaking until OpenSSL says the handshake is done, its own clock running
(--handshake-timeout), each step taken when epoll says the socket is ready for what OpenSSL waits for. A
first byte that cannot open a TLS handshake is a cleartext client, answered 400 in cleartext. Then the
socket is an `ssl.SSLSocket`: the same calls move plaintext, and "would block" comes as SSLWantReadError
or SSLWantWriteError, a record not yet whole, or a socket full. sendfile cannot encrypt, so a file goes
through OpenSSL a record's worth at a time, read into one buffer of the loop's. Every orderly close sends
a close_notify first; a client that closes without one is served as any that closes.
"""

import errno
import gc
import os
import resource
import select
import signal
import socket
import ssl
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from .app import Application, FileRange, FileReply, build_application
from .protocol import (
    CONTINUE_RESPONSE,
    SHARED_CAPACITY,
    HttpError,
    Limits,
    RequestParser,
    error_response,
)
from .tls import CLEARTEXT_ANSWER, is_tls, server_context

# --8<-- [start:defaults]
LISTEN_BACKLOG = 1024
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_LIMITS = Limits()
# A client has this long to send a whole request head, however it trickles the bytes (slowloris), counted
# from its first byte, or from accept() (the end of the TLS handshake) for the first request of a connection.
DEFAULT_HEADER_TIMEOUT = 10.0
# A TLS client has this long from accept() to finish its handshake, however it trickles its records.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# A body has this long from the end of its head, plus a second for every DEFAULT_BODY_MIN_RATE bytes that
# arrive, but never more than this much ahead (Apache's mod_reqtimeout default: body=20,MinRate=500).
DEFAULT_BODY_TIMEOUT = 20.0
DEFAULT_BODY_MIN_RATE = 500  # bytes per second
# After SIGTERM or SIGINT, how long requests in flight have to finish before they are cut.
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
# After a stop signal, how long an idle connection has to send one last request before it is closed.
DRAIN_GRACE = 1.0
# A worker's sign of life for its supervisor (workers.py), given at least this often while its loop turns.
HEARTBEAT_INTERVAL = 0.25
# After an answer that ends the connection, how long we keep draining what the client still sends.
LINGER_TIMEOUT = 2.0
# The quick close (close_after_answer) follows a last answer of at most this many bytes: about what TCP sends
# at once on any path (RFC 6928's initial window: 10 segments). A larger one leaves over round trips, during
# which a client that breaks its promise and sends would draw a reset, and the reset drops the unsent rest.
QUICK_CLOSE_MAX_ANSWER = 16 * 1024
# Backpressure: stop reading from a client that has this much of our output still unread...
DEFAULT_HIGH_WATER_MARK = 1024 * 1024
# ...and read again once its pending output has drained below this. The gap keeps us from flapping.
DEFAULT_LOW_WATER_MARK = 256 * 1024
# A file sent through TLS goes this much at a time: a TLS record's largest payload (RFC 8446 §5.1: 2^14).
TLS_FILE_CHUNK = 16 * 1024
# --8<-- [end:defaults]

EPOLLIN, EPOLLOUT, EPOLLET = select.EPOLLIN, select.EPOLLOUT, select.EPOLLET
EPOLLEXCLUSIVE = select.EPOLLEXCLUSIVE
HANGUP = select.EPOLLHUP | select.EPOLLERR
# accept() errors that say "the machine is out of something", not "this client failed".
RESOURCE_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Which strict deadline a connection's `strict_deadline` is: the clock that runs on it now.
NO_CLOCK, HEAD_CLOCK, BODY_CLOCK, LINGER_CLOCK, HANDSHAKE_CLOCK = range(5)
# A socket's "would block": EAGAIN (BlockingIOError), or through TLS, OpenSSL's word for what it waits for:
# bytes from the client (a record not yet whole) or room in the socket. All are OSErrors: catch them first.
WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


# --8<-- [start:stop]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _wake_the_loop(signum: int, frame: FrameType | None) -> None:
    """Nothing to do here: the signal's number is already on its way to the loop through the wakeup fd."""


def install_stop_handlers(wakeup_fd: int) -> None:
    # Python's C-level handler writes each signal's number to wakeup_fd, which the loop watches with epoll
    # like any socket: a stop is then handled between two events, never half-way through one (a handler that
    # raised could unwind the server from anywhere, even from the middle of a close). The Python-level
    # handler has nothing left to do, but it must exist: the default action of SIGTERM is to kill us.
    signal.set_wakeup_fd(wakeup_fd, warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _wake_the_loop)


def log_exception(what: str) -> None:
    """One log entry on stderr: what happened, then the traceback of the exception being handled."""
    print(f"{what}:\n{traceback.format_exc()}", end="", file=sys.stderr, flush=True)


def has_plaintext_left(sock: socket.socket) -> bool:
    """Whether OpenSSL holds plaintext we have not read: a record larger than the room we gave it leaves
    the rest inside OpenSSL, out of epoll's sight, so no event would ever come for it."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


# --8<-- [end:stop]


# --8<-- [start:listen]
def create_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    # Without SO_REUSEADDR a restarted server cannot bind its port while old connections sit in TIME_WAIT.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        # Several sockets may then listen on one port, each with its own queue: the kernel hashes every new
        # connection to one of them (workers.py opens one per worker).
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Each response leaves in one send(); Nagle would hold back the next one behind a delayed ACK. Set on the
    # listener, TCP_NODELAY is inherited by every socket it accepts: no system call per client.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        "clock",
        "closing",
        "deadline",
        "fd",
        "handshaking",
        "interest",
        "may_close_at_once",
        "parser",
        "peer_closed",
        "pending_file",
        "pending_output",
        "reading",
        "sock",
        "strict_deadline",
        "tls_open",
    )

    def __init__(
        self,
        sock: socket.socket,
        deadline: float,
        head_deadline: float,
        limits: Limits,
        shared_buffer: bytearray | None = None,
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.pending_output = bytearray()  # bytes the kernel would not take yet, in order
        self.pending_file: FileRange | None = None  # a file body, sent once pending_output is
        self.reading = True  # False while backpressure pauses reading, or once the client stopped sending
        self.peer_closed = False  # recv() returned 0: the client shut down its sending side
        self.interest = EPOLLIN  # the events epoll watches for on this socket now
        self.deadline = deadline  # close the connection if nothing happens on it before this time
        # A deadline that activity does not push back (the header and body timeouts, the lingering close),
        # and which of them it is. The first head's clock starts now, at accept().
        self.strict_deadline: float | None = head_deadline
        self.clock = HEAD_CLOCK
        # With the loop's shared buffer (the default), owns a buffer only while it holds bytes not yet parsed;
        # without (--without shared_buffer), owns one for good, as before.
        self.parser = RequestParser(limits, shared_buffer)
        self.closing = False  # the answer that ends this connection is queued: read nothing more into it
        # The quick close's first condition (close_after_answer): the last request asked to be the last.
        self.may_close_at_once = False
        self.handshaking = False  # TLS: from accept() until the handshake is done (continue_handshake)
        self.tls_open = False  # TLS: the handshake is done, and no close_notify sent yet (say_close_notify)


# --8<-- [end:connection]


class Server:
    """The event loop: one epoll instance, one listener, a dict of connections by file descriptor."""

    def __init__(
        self,
        listener: socket.socket,
        *,
        application: Application | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        body_min_rate: int = DEFAULT_BODY_MIN_RATE,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        limits: Limits = DEFAULT_LIMITS,
        high_water_mark: int = DEFAULT_HIGH_WATER_MARK,
        low_water_mark: int = DEFAULT_LOW_WATER_MARK,
        edge_triggered: bool = False,
        exclusive_accept: bool = False,
        shared_buffer: bool = True,
        inherited_nodelay: bool = True,
        quick_close: bool = True,
        file_head_more: bool = True,
        tls_context: ssl.SSLContext | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        self.listener = listener
        self.listener_fd = listener.fileno()
        self.application = application if application is not None else build_application()
        self.epoll = select.epoll()
        self.connections: dict[int, Connection] = {}
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.body_min_rate = body_min_rate
        self.shutdown_timeout = shutdown_timeout
        self.limits = limits
        # One receive buffer for every connection of this loop, which serves one connection at a time: an
        # idle connection then holds no buffer (its parser keeps bytes only while a request is incomplete).
        self.shared_buffer = bytearray(SHARED_CAPACITY) if shared_buffer else None
        self.inherited_nodelay = inherited_nodelay  # see accept_clients
        self.quick_close = quick_close  # see close_after_answer
        # See answer_batch. An SSLSocket takes no flags: through TLS, a file's head is a record of its own.
        self.file_head_flags = socket.MSG_MORE if file_head_more and tls_context is None else 0
        self.tls_context = tls_context  # None: cleartext
        self.handshake_timeout = handshake_timeout
        # A file through TLS is read into this buffer, a record's worth at a time (send_file_through_tls).
        self.file_chunk = memoryview(bytearray(TLS_FILE_CHUNK if tls_context is not None else 0))
        # Check deadlines ten times per timeout: a connection closes at most 10% late, for one O(n) scan.
        timeouts = (idle_timeout, header_timeout, body_timeout, handshake_timeout)
        self.sweep_interval = min(*(timeout / 10 for timeout in timeouts), 1.0)
        self.next_sweep = 0.0
        self.wait_timeout = self.sweep_interval  # the loop's longest wait for an event
        self.heartbeat: Callable[[], None] | None = None  # see keep_heartbeat
        self.next_heartbeat = 0.0
        self.high_water_mark = high_water_mark
        self.low_water_mark = low_water_mark
        self.edge_triggered = edge_triggered
        self.trigger_flag = EPOLLET if edge_triggered else 0
        # When several loops wait on one shared listener, EPOLLEXCLUSIVE wakes one of them per new client,
        # not all (the thundering herd). Such a registration cannot be modified: see pause_accepting.
        self.listener_events = EPOLLIN | self.trigger_flag | (EPOLLEXCLUSIVE if exclusive_accept else 0)
        self.accepting = True
        # Signals reach the loop as bytes on this socket pair (see install_stop_handlers).
        self.wakeup_reader, self.wakeup_writer = socket.socketpair()
        self.wakeup_reader.setblocking(False)
        self.wakeup_writer.setblocking(False)
        self.running = True
        self.draining = False  # a stop signal came: no new clients, and every answer is a connection's last
        self.stop_deadline = 0.0

    # --8<-- [start:loop]
    def serve_forever(self) -> None:
        """Serve until a stop signal: the first drains the server, the second (or the shutdown timeout) ends
        it at once."""
        self.epoll.register(self.listener_fd, self.listener_events)
        self.epoll.register(self.wakeup_reader.fileno(), EPOLLIN)
        while self.running:
            try:
                self.poll_once()
            except Exception:
                # The last resort, for a bug outside any one connection (accepting, the sweep): log it and
                # serve on. Level-triggered epoll reports again what this batch of events left unhandled.
                log_exception("unexpected error in the event loop, which serves on")

    def poll_once(self) -> None:
        connections = self.connections
        # EINTR needs no handling: Python retries poll() after a signal handler that does not raise.
        events = self.epoll.poll(self.wait_timeout)
        now = time.monotonic()
        for fd, mask in events:
            if fd == self.listener_fd:
                self.accept_clients(now)
                continue
            connection = connections.get(fd)
            if connection is None:  # the wakeup socket, or a connection closed earlier in this batch
                if fd == self.wakeup_reader.fileno():
                    self.on_stop_signal(now)
                continue
            try:
                if mask & HANGUP:  # reset, or both directions shut: nobody is left to answer
                    self.close(connection)
                    continue
                connection.deadline = now + self.idle_timeout
                if connection.handshaking:
                    self.continue_handshake(connection)
                    continue
                if mask & EPOLLIN:
                    self.on_readable(connection)
                if mask & EPOLLOUT and fd in connections:
                    self.on_writable(connection)
            except Exception:
                # A bug met while serving this connection costs this connection alone. Out here we cannot
                # know whether an answer is half-sent, so a 500 could corrupt the stream: close is all.
                log_exception(f"unexpected error serving connection fd {fd}, which is closed")
                self.close(connection)
        if now >= self.next_sweep:
            self.close_idle_connections(now)
        if self.heartbeat is not None and now >= self.next_heartbeat:
            self.beat(now)
        if self.draining and (not connections or now >= self.stop_deadline):
            self.running = False

    def keep_heartbeat(self, beat: Callable[[], None]) -> None:
        """Call `beat` at least every HEARTBEAT_INTERVAL while the loop turns: a supervisor's sign that this
        worker lives and serves (a loop that is stopped, or stuck in an endless handler, beats no more)."""
        self.heartbeat = beat
        self.wait_timeout = min(self.sweep_interval, HEARTBEAT_INTERVAL)

    def beat(self, now: float) -> None:
        """The heartbeat, and a look at a listener shared with other workers."""
        assert self.heartbeat is not None
        self.heartbeat()
        self.next_heartbeat = now + HEARTBEAT_INTERVAL
        if self.accepting and not self.draining and self.listener_events & EPOLLEXCLUSIVE:
            # EPOLLEXCLUSIVE wakes one worker per client: if that one is stopped or stuck, no other hears of
            # the client, which waits with it. A look once per beat bounds that wait.
            self.accept_clients(now)

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
            if not self.inherited_nodelay:  # --without inherited_nodelay: a system call per client, as before
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline, head_deadline = now + self.idle_timeout, now + self.header_timeout
            connection = Connection(sock, deadline, head_deadline, self.limits, self.shared_buffer)
            if self.tls_context is not None:  # the handshake first, on its own clock; the head's starts after
                connection.handshaking = True
                connection.clock, connection.strict_deadline = HANDSHAKE_CLOCK, now + self.handshake_timeout
            self.connections[connection.fd] = connection
            self.epoll.register(connection.fd, EPOLLIN | self.trigger_flag)

    def pause_accepting(self) -> None:
        # Clients keep queueing in the kernel's backlog while we do not watch the listener (or, when it is
        # shared, other workers take them). Unregister, not modify: an EPOLLEXCLUSIVE registration cannot be.
        self.accepting = False
        self.epoll.unregister(self.listener_fd)

    def resume_accepting(self) -> None:
        if self.draining:
            return  # our descriptor of the listener is closed for good
        self.accepting = True
        # Registering also checks readiness, so clients that queued meanwhile are reported even in ET mode.
        self.epoll.register(self.listener_fd, self.listener_events)

    # --8<-- [end:accept]

    # --8<-- [start:handshake]
    def continue_handshake(self, connection: Connection) -> None:
        """One step of a TLS handshake, taken when the socket is ready for what OpenSSL last waited for."""
        if not isinstance(connection.sock, ssl.SSLSocket) and not self.start_tls(connection):
            return
        assert isinstance(connection.sock, ssl.SSLSocket)
        try:
            connection.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.set_interest(connection, EPOLLIN)  # the client's next flight of records
            return
        except ssl.SSLWantWriteError:
            self.set_interest(connection, EPOLLOUT)  # the socket is full: ours waits for room
            return
        except OSError as error:  # an SSLError (no version or cipher in common, a bad record), or a reset
            print(f"TLS handshake failed, fd {connection.fd}: {error}", file=sys.stderr, flush=True)
            self.close(connection)
            return
        connection.handshaking = False
        connection.tls_open = True
        connection.clock, connection.strict_deadline = HEAD_CLOCK, time.monotonic() + self.header_timeout
        self.set_interest(connection, EPOLLIN)
        self.on_readable(connection)  # the first request may have come with the client's last flight

    def start_tls(self, connection: Connection) -> bool:
        """Peek at a new connection's first byte: a TLS client's socket becomes an SSLSocket (True); a
        cleartext client is answered 400 in cleartext; one gone before its first byte is closed."""
        try:
            first = connection.sock.recv(1, socket.MSG_PEEK)  # left in the kernel, for OpenSSL to read
        except BlockingIOError:
            return False
        except OSError:
            self.close(connection)
            return False
        if not first:
            self.close(connection)
            return False
        if not is_tls(first[0]):
            connection.handshaking = False
            self.send_last_answer(connection, CLEARTEXT_ANSWER)
            return False
        assert self.tls_context is not None
        # The SSLSocket takes the descriptor over (the plain socket object is detached), non-blocking too.
        connection.sock = self.tls_context.wrap_socket(
            connection.sock, server_side=True, do_handshake_on_connect=False
        )
        return True

    # --8<-- [end:handshake]

    # --8<-- [start:read]
    def on_readable(self, connection: Connection) -> None:
        # Level-triggered, one recv per wakeup is enough: epoll reports the socket again if bytes are left.
        # Edge-triggered, epoll reports only new arrivals, so we must read until EAGAIN or strand the rest.
        try:
            while connection.reading:
                try:
                    # Straight into the buffer where the bytes will be parsed (the shared one, or the
                    # parser's own while it holds part of a request): no copy on the way.
                    with connection.parser.receive_buffer() as room:
                        count = connection.sock.recv_into(room)
                except WOULD_BLOCK:
                    return  # EAGAIN, or a TLS record not yet whole: nothing more to read for now
                except OSError:
                    self.close(connection)  # ECONNRESET, a TLS record that does not decrypt: the client left
                    return
                if count == 0:  # through TLS, the client's close_notify, or its FIN without one
                    self.on_peer_closed(connection)
                    return
                self.on_data(connection, count)
                if not self.edge_triggered and not has_plaintext_left(connection.sock):
                    return
        finally:
            # The shared buffer is the next connection's: what this one has not parsed moves to its own.
            connection.parser.keep_unconsumed_bytes()

    def on_data(self, connection: Connection, count: int) -> None:
        connection.parser.received(count)  # a closing connection's parser drops the bytes: we drain
        if not connection.closing:
            self.process_requests(connection)
            self.time_request(connection, count)

    def on_peer_closed(self, connection: Connection) -> None:
        # A half-close (shutdown(SHUT_WR)) still expects its answers: finish sending, then close.
        connection.peer_closed = True
        connection.reading = False
        if connection.pending_output or connection.pending_file is not None:
            self.update_interest(connection)
        else:
            self.close(connection)

    # --8<-- [end:read]

    # --8<-- [start:clocks]
    def time_request(self, connection: Connection, count: int) -> None:
        """Start, move or stop the strict deadline of the request in progress, after `count` new bytes."""
        if connection.closing:
            return  # the lingering close has its own deadline
        parser = connection.parser
        if not connection.reading:  # backpressure: it is we who stopped reading, so no clock runs
            connection.clock, connection.strict_deadline = NO_CLOCK, None
        elif parser.reading_head:
            # A head has header_timeout from its first byte, an empty line included; more bytes do not push
            # the deadline back (slowloris).
            if connection.clock != HEAD_CLOCK:
                connection.clock = HEAD_CLOCK
                connection.strict_deadline = time.monotonic() + self.header_timeout
        elif parser.reading_body:
            # A body earns 1/body_min_rate s for every byte, up to body_timeout ahead: a client that trickles
            # runs out of time, one that pauses after sending fast has body_timeout at most.
            now = time.monotonic()
            if connection.clock != BODY_CLOCK or connection.strict_deadline is None:
                connection.clock, connection.strict_deadline = BODY_CLOCK, now + self.body_timeout
            else:
                earned = connection.strict_deadline + count / self.body_min_rate
                connection.strict_deadline = min(earned, now + self.body_timeout)
        else:
            connection.clock, connection.strict_deadline = NO_CLOCK, None

    # --8<-- [end:clocks]

    # --8<-- [start:requests]
    def process_requests(self, connection: Connection) -> None:
        """Answer every complete request the parser holds, in order."""
        while self.answer_batch(connection):
            pass  # a file answer went out whole at once: the requests behind it are next

    def answer_batch(self, connection: Connection) -> bool:
        """Answer the complete requests the parser holds, up to a file answer, and send the answers in one go:
        True if that file went out whole at once, so the requests behind it can be answered now."""
        parser = connection.parser
        responses = []
        file_body: FileRange | None = None  # the body of a file answer, which ends the batch: see below
        # Pipelining: one read may hold many requests. Stop at a closing one, at a file, or when the client is
        # not reading our answers (backpressure): the rest waits, unparsed, in the parser.
        while not connection.closing and file_body is None and self.has_room_for_output(connection):
            try:
                request = parser.next_request()
                if request is None:
                    if parser.take_continue():  # the client waits for our go-ahead before sending the body
                        responses.append(CONTINUE_RESPONSE)
                    break
                connection.may_close_at_once = not request.keep_alive  # before a drain says so too
                if self.draining and request.keep_alive:
                    request.keep_alive = False  # stopping: this answer is the connection's last, and says so
                    parser.close()
                reply = self.application.respond(request)
                if isinstance(reply, FileReply):
                    responses.append(reply.head)
                    file_body = reply.body
                else:
                    responses.append(reply)
            except HttpError as error:
                responses.append(error_response(error))
                connection.closing = True
                break
            except Exception:
                # A bug, in the parser or the application, costs this connection alone: the answers before
                # it are whole and go out first, the request that met it gets a 500, then we close.
                log_exception(f"unexpected error answering a request on connection fd {connection.fd}")
                responses.append(error_response(HttpError(500, "unexpected error")))
                connection.closing = True
                parser.close()
                break
            if not request.keep_alive:
                connection.closing = True
        if responses:
            connection.clock = NO_CLOCK  # a head is complete: the next one starts its own clock
            connection.strict_deadline = None
            # MSG_MORE before a file: the kernel holds the head back, to leave in one packet with the file's
            # first bytes, rather than in a small packet of its own that both ends would process.
            flags = self.file_head_flags if file_body is not None else 0
            answer = b"".join(responses)
            # The quick close follows a last answer the client asked for, if small: a large one lingers.
            # Measured on such a batch alone: `and` stops at once on a kept-alive one.
            connection.may_close_at_once = connection.may_close_at_once and (
                len(answer) + (file_body.length if file_body is not None else 0) <= QUICK_CLOSE_MAX_ANSWER
            )
            self.send(connection, answer, flags)
        if file_body is not None and self.begin_file(connection, file_body) and not connection.closing:
            return True
        all_sent = not connection.pending_output and connection.pending_file is None
        if connection.closing and all_sent and connection.fd in self.connections:
            self.close_after_answer(connection)
        return False

    def begin_file(self, connection: Connection, body: FileRange) -> bool:
        """A file answer's head is sent, or queued: its body follows, and parsing and reading pause until it
        is sent. True if it went out whole at once. Only now is it pending: pending before, it would have
        queued its own head behind it, unsent, with no event to come for it (edge-triggered epoll, with
        EPOLLOUT watched already, reports no change)."""
        if connection.fd not in self.connections:  # the head's send found the client gone
            os.close(body.fd)
            return False
        connection.pending_file = body
        if connection.pending_output:
            self.update_interest(connection)  # the head waits for EPOLLOUT, and the body after it
            return False
        return self.send_file(connection)  # its head is out: the body follows

    # --8<-- [end:requests]

    # --8<-- [start:write]
    def send(self, connection: Connection, data: bytes, flags: int = 0) -> None:
        """Send now what the kernel takes, queue the rest behind what is already waiting."""
        if not connection.pending_output and connection.pending_file is None:
            # Fast path: nothing queued, so hand the bytes straight to the kernel; it usually takes them all.
            try:
                sent = connection.sock.send(data, flags)
            except WOULD_BLOCK:
                sent = 0
            except OSError:
                self.close(connection)  # EPIPE, ECONNRESET: the client is gone
                return
            if sent == len(data):
                return
            data = data[sent:]
        connection.pending_output += data
        self.update_interest(connection)

    def on_writable(self, connection: Connection) -> None:
        if connection.pending_output:
            try:
                # Through TLS, a send that would block must be retried with the same bytes first: they are
                # still at the front of pending_output, which grows only at its end.
                sent = connection.sock.send(connection.pending_output)
            except WOULD_BLOCK:
                return
            except OSError:
                self.close(connection)
                return
            # Deleting from the front of a bytearray is cheap in CPython: it moves an offset, not the bytes.
            del connection.pending_output[:sent]
            if connection.pending_output:
                self.update_interest(connection)
                return
        if connection.pending_file is not None and not self.send_file(connection):
            return  # the socket is full again, or the client is gone
        if connection.closing:
            self.linger(connection)
            return
        # Drained: answer the pipelined requests that backpressure left waiting in the parser.
        self.process_requests(connection)
        if connection.fd not in self.connections:
            return
        if connection.peer_closed and not connection.pending_output and connection.pending_file is None:
            self.close(connection)
        else:
            self.update_interest(connection)

    # --8<-- [end:write]

    # --8<-- [start:sendfile]
    def send_file(self, connection: Connection) -> bool:
        """Send the pending file body: True once it is all sent, False if the socket is full (EPOLLOUT will
        call again) or the connection had to close."""
        if self.tls_context is not None:
            return self.send_file_through_tls(connection)
        # os.sendfile copies from the page cache to the socket inside the kernel: no read() into a Python
        # buffer, no send() out of it. The cost that remains: bytes not in the page cache are read from the
        # disk while the whole loop waits (nginx can hand such reads to threads; io_uring makes them async).
        body = connection.pending_file
        assert body is not None
        while body.length:
            try:
                sent = os.sendfile(connection.fd, body.fd, body.offset, body.length)
            except BlockingIOError:
                self.update_interest(connection)  # the socket is full: EPOLLOUT says when to go on
                return False
            except OSError:  # EPIPE, ECONNRESET: the client is gone; EIO: the file is
                self.close(connection)
                return False
            if sent == 0:  # the file shrank since we promised its length: the response cannot be finished
                self.close(connection)
                return False
            body.offset += sent
            body.length -= sent
        os.close(body.fd)
        connection.pending_file = None
        return True

    def send_file_through_tls(self, connection: Connection) -> bool:
        """send_file's work when sendfile cannot do it: the kernel would send the file as it is, and TLS must
        encrypt it. Read a record's worth into the loop's one chunk buffer and hand it to OpenSSL, while the
        socket takes it: memory per connection stays what OpenSSL buffers, however large the file."""
        body = connection.pending_file
        assert body is not None
        while body.length:
            try:
                count = os.preadv(body.fd, [self.file_chunk[: min(body.length, TLS_FILE_CHUNK)]], body.offset)
                if count == 0:  # the file shrank since we promised its length
                    self.close(connection)
                    return False
                # A send that would block is retried from the same offset: the same bytes, read again.
                sent = connection.sock.send(self.file_chunk[:count])
            except WOULD_BLOCK:
                self.update_interest(connection)
                return False
            except OSError:  # EPIPE, ECONNRESET: the client is gone; EIO: the file is
                self.close(connection)
                return False
            body.offset += sent
            body.length -= sent
        os.close(body.fd)
        connection.pending_file = None
        return True

    # --8<-- [end:sendfile]

    # --8<-- [start:backpressure]
    def has_room_for_output(self, connection: Connection) -> bool:
        """Backpressure's one test: below the high-water mark we parse and read; at or above it, neither.
        A file being sent counts as full: the next answer waits for it, which keeps the answers in order."""
        return connection.pending_file is None and len(connection.pending_output) < self.high_water_mark

    def update_interest(self, connection: Connection) -> None:
        """Watch for EPOLLOUT only while output is pending; pause reading at the high-water mark."""
        pending = len(connection.pending_output)
        if connection.reading and not self.has_room_for_output(connection):
            connection.reading = False  # this client does not read our answers: stop reading what it sends
            self.time_request(connection, 0)
        elif not connection.reading and not connection.peer_closed and pending < self.low_water_mark:
            connection.reading = connection.pending_file is None  # a file being sent still counts as full
            if connection.reading:
                self.time_request(connection, 0)
        sending = pending or connection.pending_file is not None
        self.set_interest(connection, (EPOLLIN if connection.reading else 0) | (EPOLLOUT if sending else 0))

    def set_interest(self, connection: Connection, interest: int) -> None:
        if interest != connection.interest:  # epoll_ctl is a system call: make it only on a change
            connection.interest = interest
            self.epoll.modify(connection.fd, interest | self.trigger_flag)

    # --8<-- [end:backpressure]

    # --8<-- [start:close]
    def close_after_answer(self, connection: Connection) -> None:
        """The last answer went to the kernel whole, in the turn its request arrived: the quick close if it
        was small, and the client asked for it to be the last and sent nothing after it; else the lingering
        close."""
        if connection.may_close_at_once and self.quick_close and connection.parser.dropped_bytes == 0:
            # RFC 9112 §9.6: a client that sends "close" MUST NOT send further requests. So no byte of its
            # will meet a closed socket and draw a reset: close now, as nginx does, and save the shutdown,
            # the wait for the client's FIN, and the receive that reads it.
            self.close(connection)
        else:
            self.linger(connection)

    def linger(self, connection: Connection) -> None:
        """Half-close after the last answer, then drain what the client still sends until it closes too."""
        if connection.peer_closed:
            self.close(connection)
            return
        if connection.tls_open:
            self.say_close_notify(connection)  # before the FIN, which ends what TLS can send
        try:
            # FIN after our last byte: the client reads the whole answer, then end of stream. A plain close()
            # with its unread bytes in our receive queue would send RST, which can destroy that answer.
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(connection)
            return
        connection.reading = True
        connection.clock = LINGER_CLOCK
        connection.strict_deadline = time.monotonic() + LINGER_TIMEOUT
        self.update_interest(connection)

    def close(self, connection: Connection) -> None:
        if self.connections.get(connection.fd) is not connection:
            return  # closed already (an error path may close twice)
        del self.connections[connection.fd]
        connection.reading = False  # ends an edge-triggered read loop that is still running on it
        if connection.pending_file is not None:  # a file answer cut short: its descriptor is ours to close
            os.close(connection.pending_file.fd)
            connection.pending_file = None
        if connection.tls_open:
            self.say_close_notify(connection)
        # Closing the only descriptor of a socket also removes it from epoll: no unregister call needed.
        connection.sock.close()
        if not self.accepting:
            self.resume_accepting()

    def say_close_notify(self, connection: Connection) -> None:
        """TLS's own end of stream (RFC 8446 §6.1): an alert that says no more data follows, so a client can
        tell a whole answer from one cut short by an attacker's FIN. Sent once, on every close; the client's
        own close_notify is not waited for (§6.1 lets us close without it)."""
        connection.tls_open = False
        assert isinstance(connection.sock, ssl.SSLSocket)
        try:
            connection.sock.unwrap()  # sends ours, then would wait for the client's: SSLWantReadError
        except OSError:
            pass  # SSLWantReadError: ours is sent, the client's is not here yet; or the client is gone

    def close_idle_connections(self, now: float) -> None:
        # A client that neither sends nor reads holds a descriptor and a slot: reclaim both after a while.
        for connection in list(self.connections.values()):
            if connection.strict_deadline is not None and connection.strict_deadline <= now:
                self.on_strict_deadline(connection)
            elif connection.deadline <= now:
                self.close(connection)
        if not self.accepting and len(self.connections) < self.max_connections:
            # Paused for lack of fds or memory with no connection left to close: a close cannot resume us.
            self.resume_accepting()
        self.next_sweep = now + self.sweep_interval

    def on_strict_deadline(self, connection: Connection) -> None:
        if connection.closing or connection.clock == HANDSHAKE_CLOCK:
            self.close(connection)  # the lingering close is over, drained or not; or a handshake too slow
            return
        if connection.clock == HEAD_CLOCK and not connection.parser.reading_head:
            self.close(connection)  # a client that connected and never sent a byte: no answer to give
            return
        # A request head or body did not arrive in time: tell the client so, then close.
        part = "head" if connection.clock == HEAD_CLOCK else "body"
        answer = error_response(HttpError(408, f"request {part} not received in time"))
        self.send_last_answer(connection, answer)

    def send_last_answer(self, connection: Connection, answer: bytes) -> None:
        """Send `answer`, read nothing more into the parser, and close once it is sent."""
        connection.closing = True
        connection.parser.close()
        self.send(connection, answer)
        if connection.fd in self.connections and not connection.pending_output:
            self.linger(connection)

    # --8<-- [end:close]

    # --8<-- [start:drain]
    def on_stop_signal(self, now: float) -> None:
        """SIGINT or SIGTERM woke the loop: the first drains the server, the second stops it at once."""
        try:
            signal_numbers = self.wakeup_reader.recv(64)
        except BlockingIOError:
            return
        for signum in signal_numbers:
            name = signal.Signals(signum).name
            if self.draining:
                print(f"{name} again: stopping now", file=sys.stderr, flush=True)
                self.running = False
            else:
                self.start_draining(name, now)

    def start_draining(self, reason: str, now: float) -> None:
        """Stop accepting, give idle connections DRAIN_GRACE to send a last request, and the others until the
        shutdown timeout to finish the requests in flight, each answer with `Connection: close`."""
        self.draining = True
        self.stop_deadline = now + self.shutdown_timeout
        if self.accepting:
            self.epoll.unregister(self.listener_fd)
        # Our descriptor of it: the supervisor holds another, so the socket and its queue of clients live on
        # for the other workers (closing the last descriptor of a listener resets the clients queued on it).
        self.listener.close()
        self.listener_fd = -1
        for connection in list(self.connections.values()):
            if connection.closing or connection.parser.has_partial_request:
                continue  # its last answer is queued already, or will say `Connection: close`
            if connection.pending_output or connection.pending_file is not None:
                connection.closing = True  # between two requests: close once its answers are sent
                connection.parser.close()
            else:
                # Idle between two requests, or new. Closing it now would fail a request that is on its way
                # (the client cannot know we are leaving): it has DRAIN_GRACE to send one, answered with
                # `Connection: close`; the sweep closes it after that.
                connection.deadline = min(connection.deadline, now + DRAIN_GRACE)
        print(
            f"{reason}: draining {len(self.connections)} connection(s) for at most {self.shutdown_timeout} s",
            file=sys.stderr,
            flush=True,
        )

    def shutdown(self) -> None:
        """Close what is left (connections the shutdown timeout, or a second signal, cut short)."""
        if self.connections:
            print(f"stopping: {len(self.connections)} connection(s) cut", file=sys.stderr, flush=True)
        for connection in list(self.connections.values()):
            self.close(connection)
        self.epoll.close()
        self.wakeup_reader.close()
        self.wakeup_writer.close()

    # --8<-- [end:drain]


# --8<-- [start:serve]
def serve(
    listener: socket.socket,
    ready: Callable[[Server], None],
    *,
    exclusive_accept: bool = False,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    body_min_rate: int = DEFAULT_BODY_MIN_RATE,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    limits: Limits = DEFAULT_LIMITS,
    edge_triggered: bool = False,
    static_dir: Path | None = None,
    shared_buffer: bool = True,
    inherited_nodelay: bool = True,
    quick_close: bool = True,
    file_head_more: bool = True,
    cache_responses: bool = True,
    freeze_gc: bool = False,
    tls_files: tuple[Path, Path] | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> int:
    """Serve on `listener`, which the supervisor opened, until a stop; return the exit status: 0, or 2 if the
    certificate cannot be used. The supervisor checked the address, the static directory and `tls_files`
    (a certificate chain and its key), and each worker reads them again: a restart (SIGHUP) reads new ones."""
    try:
        tls_context = server_context(*tls_files) if tls_files is not None else None
    except OSError as error:  # ssl.SSLError is one: not a certificate, or a key that does not match it
        print(f"error: cannot use the certificate: {error}", file=sys.stderr, flush=True)
        return 2
    with listener:
        server = Server(
            listener,
            application=build_application(static_dir, cache_responses=cache_responses),
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            body_min_rate=body_min_rate,
            shutdown_timeout=shutdown_timeout,
            limits=limits,
            edge_triggered=edge_triggered,
            exclusive_accept=exclusive_accept,
            shared_buffer=shared_buffer,
            inherited_nodelay=inherited_nodelay,
            quick_close=quick_close,
            file_head_more=file_head_more,
            tls_context=tls_context,
            handshake_timeout=handshake_timeout,
        )
        if freeze_gc:
            # Everything made so far (modules, the router, the application) lives as long as the worker: move
            # it out of the collector's reach, so that a collection scans only what requests made since.
            gc.freeze()
        # The worker's side of start-up (workers.py): in a process, install the stop handlers, so that a
        # signal finds its handler and the loop finds the signal; then tell the supervisor we are ready.
        ready(server)
        try:
            server.serve_forever()
        finally:
            # Stopped: later signals stay blocked until we have exited (in a worker process; a thread blocks
            # them for itself only). As the interpreter exits it restores the default handlers, and a default
            # SIGTERM would kill us half-way (exit status -15).
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            server.shutdown()
    return 0


# --8<-- [end:serve]
