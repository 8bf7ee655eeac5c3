"""An HTTP/1.1 server on an io_uring loop: keep-alive, pipelining, bodies, limits, timeouts, sendfile.

The loop no longer asks "which sockets may I read or write now?" (readiness, epoll) and then makes the calls
itself: it hands the kernel operations, tagged with the connection they belong to, and the kernel tells it
when each one is done (completion, io_uring: uring.py). One multishot accept stands for every client to
come, one multishot receive per connection for every byte it will send, each landing in a buffer the kernel
picks from our provided-buffer ring; an answer is one send, in flight until the kernel has taken all of it.
Every operation of a loop turn is submitted, and the next completions waited for, in one io_uring_enter.

What happens to the bytes is unchanged: each connection feeds them to its own sans-I/O parser
(protocol.py), answers every complete request in order, and closes when the protocol, a limit or a timeout
says so. Closing is the subtle part: a server that closes while the client
is still sending makes the kernel answer with a reset, which can destroy the response the client has not
read yet, so we half-close and drain first (a "lingering close"), unless the client asked for the answer to
be its last and sent nothing after it (the quick close). Stopping is closing for everyone at once:
a signal makes the loop drain (no new clients, requests in flight finished) instead of dropping them. The
application (app.py) answers each request with bytes, or with a head and a file that we send with
os.sendfile, one file at a time per connection: the kernel copies it to the socket, Python never sees it.
sendfile has no io_uring operation, so for it alone the loop falls back to readiness: a one-shot poll says
when a full socket has room again.

Every timeout measures the client, never the server: a head must arrive within the header timeout, a body
at a minimum rate, and neither clock runs while the server itself has stopped reading (backpressure). And no
input, nor any bug it finds, may stop the server: an exception while serving one connection costs that
connection alone.

This loop is one worker: it serves on a listening socket that the supervisor (workers.py) opened and handed
in, and says when it is ready. Several loops, each in its own process (or thread), serve the same port.
"""

import errno
import gc
import itertools
import os
import resource
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable
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
from .uring import (
    CQE_BUFFER_SHIFT,
    CQE_F_BUFFER,
    CQE_F_MORE,
    LOOP_FLAGS,
    BufferRing,
    Ring,
    buffer_address,
    bytes_address,
    shutdown,
)

# --8<-- [start:defaults]
LISTEN_BACKLOG = 1024
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_LIMITS = Limits()
# A client has this long to send a whole request head, however it trickles the bytes (slowloris), counted
# from its first byte, or from accept() for the first request of a connection.
DEFAULT_HEADER_TIMEOUT = 10.0
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
# On the way out, how long the ring has to finish the closes asked of it (it takes microseconds).
LAST_CLOSES_TIMEOUT = 1.0
# Backpressure: stop reading from a client that has this much of our output still unread...
DEFAULT_HIGH_WATER_MARK = 1024 * 1024
# ...and read again once its pending output has drained below this. The gap keeps us from flapping.
DEFAULT_LOW_WATER_MARK = 256 * 1024
# The provided buffers that multishot receives fill: how many (a power of two), and the size of each. A
# buffer goes back to the ring as soon as its bytes are copied into a parser, within the loop turn.
DEFAULT_RECEIVE_BUFFERS = 1024
RECEIVE_BUFFER_SIZE = 4096
# A connection's receive completions handled per loop turn (16 KiB at most, as an epoll loop reads per turn):
# the rest wait for the next turn, so that a client sending without pause cannot keep the others waiting.
RECEIVES_PER_TURN = 4
# The submission ring's size; the completion ring has four times as many entries, since one multishot
# operation posts many completions (those that find it full wait in the kernel: nothing is lost).
RING_ENTRIES = 1024
# --8<-- [end:defaults]

# --8<-- [start:user_data]
# Every operation carries a user_data that its completion brings back: the connection's number, shifted
# left, and the operation. A number, never the fd: once a socket is closed the kernel gives its fd to the
# next client, while completions of the old connection's operations may still be on their way.
OPERATION_BITS = 3
OPERATION_MASK = (1 << OPERATION_BITS) - 1
RECEIVE, SEND, POLL_OUTPUT, CLOSE, ACCEPT, WAKEUP, CANCEL = range(7)
LOOP = 0  # the number of the loop's own operations (accept, the wakeup socket); connections count from 1
ACCEPT_TAG = LOOP << OPERATION_BITS | ACCEPT
WAKEUP_TAG = LOOP << OPERATION_BITS | WAKEUP
CANCEL_TAG = LOOP << OPERATION_BITS | CANCEL  # a cancellation's own completion, posted only if it failed
BUFFER_GROUP = 0
ENOBUFS, ECANCELED = -errno.ENOBUFS, -errno.ECANCELED
# --8<-- [end:user_data]
# accept() errors that say "the machine is out of something", not "this client failed".
RESOURCE_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Which strict deadline a connection's `strict_deadline` is: the clock that runs on it now.
NO_CLOCK, HEAD_CLOCK, BODY_CLOCK, LINGER_CLOCK = range(4)


# --8<-- [start:stop]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _wake_the_loop(signum: int, frame: FrameType | None) -> None:
    """Nothing to do here: the signal's number is already on its way to the loop through the wakeup fd."""


def install_stop_handlers(wakeup_fd: int) -> None:
    # Python's C-level handler writes each signal's number to wakeup_fd, which the loop receives from through
    # the ring like any socket: a stop is then handled between two completions, never half-way through one
    # (a handler that raised could unwind the server from anywhere, even from the middle of a close). The
    # Python-level handler has nothing left to do, but it must exist: the default action of SIGTERM is to
    # kill us.
    signal.set_wakeup_fd(wakeup_fd, warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _wake_the_loop)


def log_exception(what: str) -> None:
    """One log entry on stderr: what happened, then the traceback of the exception being handled."""
    print(f"{what}:\n{traceback.format_exc()}", end="", file=sys.stderr, flush=True)


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
    # Non-blocking, like every socket of the loop: the ring's accept then waits for clients with a poll.
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
        "may_close_at_once",
        "number",
        "parser",
        "peer_closed",
        "pending_file",
        "pending_output",
        "reading",
        "receiving",
        "sending",
        "strict_deadline",
    )

    def __init__(
        self,
        number: int,
        fd: int,
        deadline: float,
        head_deadline: float,
        limits: Limits,
        *,
        shared_buffer: bytearray | None = None,
    ) -> None:
        # A plain fd, not a socket object: every operation on it goes through the ring (making a socket
        # object of an accepted fd would cost system calls of its own, to learn the socket's family and type).
        self.number = number  # the key of this connection, and of its operations' user_data
        self.fd = fd
        self.sending: bytes | None = None  # the bytes of the one send in flight: the kernel reads them
        self.pending_output = bytearray()  # bytes queued behind that send, in order
        self.pending_file: FileRange | None = None  # a file body, sent once pending_output is
        self.reading = True  # False while backpressure pauses reading, or once the client stopped sending
        self.receiving = False  # a multishot receive is armed (until a completion without F_MORE ends it)
        self.peer_closed = False  # a receive returned 0: the client shut down its sending side
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


# --8<-- [end:connection]


class Server:
    """The event loop: one io_uring, one listener, a dict of connections by number."""

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
        receive_buffers: int = DEFAULT_RECEIVE_BUFFERS,
        shared_listener: bool = False,
        shared_buffer: bool = True,
        quick_close: bool = True,
        file_head_more: bool = True,
    ) -> None:
        self.listener = listener
        self.listener_fd = listener.fileno()
        self.application = application if application is not None else build_application()
        # Made disabled: the thread that runs the loop enables it (serve_forever), and is then its only
        # submitter (SINGLE_ISSUER), whose own io_uring_enter calls do the kernel's work (DEFER_TASKRUN).
        self.ring = Ring(RING_ENTRIES, 4 * RING_ENTRIES, LOOP_FLAGS)
        self.buffers = BufferRing(self.ring, BUFFER_GROUP, receive_buffers, RECEIVE_BUFFER_SIZE)
        self.connections: dict[int, Connection] = {}
        self.last_number = LOOP
        # Clients the kernel accepted after we had asked it to stop (a multishot accept takes every client
        # queued when it runs): connected but not yet read from, like clients queued in the listen backlog.
        self.waiting: list[int] = []
        # The bytes of sends still in flight on closed connections: the kernel may read them until the send's
        # completion (its cancellation) comes back, so they must live until then.
        self.orphaned_sends: dict[int, bytes] = {}
        # Receive completions beyond a connection's share of a turn, kept for the next turn (see poll_once).
        self.held_back: list[tuple[int, int, int]] = []
        # Closes are the ring's operations too: one not yet done when the ring goes would never be done, and
        # its descriptor would stay open for as long as the process lives (thread workers share one process).
        self.closes_in_flight = 0
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.body_min_rate = body_min_rate
        self.shutdown_timeout = shutdown_timeout
        self.limits = limits
        # One parsing buffer for every connection of this loop, which feeds it one connection at a time: an
        # idle connection then holds no buffer (its parser keeps bytes only while a request is incomplete).
        self.shared_buffer = bytearray(SHARED_CAPACITY) if shared_buffer else None
        self.quick_close = quick_close  # see close_after_answer
        self.file_head_flags = socket.MSG_MORE if file_head_more else 0  # see answer_batch
        # Check deadlines ten times per timeout: a connection closes at most 10% late, for one O(n) scan.
        self.sweep_interval = min(idle_timeout / 10, header_timeout / 10, body_timeout / 10, 1.0)
        self.next_sweep = 0.0
        self.wait_timeout = self.sweep_interval  # the loop's longest wait for an event
        self.heartbeat: Callable[[], None] | None = None  # see keep_heartbeat
        self.next_heartbeat = 0.0
        self.high_water_mark = high_water_mark
        self.low_water_mark = low_water_mark
        self.accepting = True
        self.accept_armed = False  # an accept is in flight
        # A multishot accept stays first in the listener's queue of waiters, so the kernel would give every
        # client to the same loop: on a listener shared by several loops, each accept takes one client and
        # is submitted again, behind the other loops' accepts.
        self.accept_many = not shared_listener
        # Signals reach the loop as bytes on this socket pair (see install_stop_handlers).
        self.wakeup_reader, self.wakeup_writer = socket.socketpair()
        self.wakeup_reader.setblocking(False)
        self.wakeup_writer.setblocking(False)
        self.signal_bytes = bytearray(64)  # where the wakeup socket's receive lands
        self.signal_bytes_address, self.signal_bytes_export = buffer_address(self.signal_bytes)
        self.running = True
        self.draining = False  # a stop signal came: no new clients, and every answer is a connection's last
        self.stop_deadline = 0.0

    # --8<-- [start:loop]
    def serve_forever(self) -> None:
        """Serve until a stop signal: the first drains the server, the second (or the shutdown timeout) ends
        it at once."""
        self.ring.enable()
        self.arm_accept()
        self.arm_wakeup()
        while self.running:
            try:
                self.poll_once()
            except Exception:
                # The last resort, for a bug outside any one completion (the sweep, the ring itself): log
                # it and serve on.
                log_exception("unexpected error in the event loop, which serves on")

    def poll_once(self) -> None:
        connections = self.connections
        batch = self.next_batch()
        now = time.monotonic()
        receives: dict[int, int] = {}  # receive completions handled this turn, by connection number
        for user_data, result, flags in batch:
            number = user_data >> OPERATION_BITS
            connection = connections.get(number)
            if connection is None:  # the loop's own operation, or one of a connection closed meanwhile
                try:
                    self.on_other_completion(user_data, result, flags, now)
                except Exception:
                    # The completions are taken from the ring already: the rest of the batch must still
                    # be handled, or an operation would be left for ever without its last completion.
                    log_exception("unexpected error in the event loop, which serves on")
                continue
            operation = user_data & OPERATION_MASK
            if operation == RECEIVE and not self.in_its_share(connection, receives, user_data, result, flags):
                continue
            try:
                connection.deadline = now + self.idle_timeout
                if operation == RECEIVE:
                    self.on_received(connection, result, flags)
                elif operation == SEND:
                    self.on_sent(connection, result)
                elif operation == POLL_OUTPUT:
                    self.on_writable(connection)
            except Exception:
                # A bug met while serving this connection costs this connection alone. Out here we cannot
                # know whether an answer is half-sent, so a 500 could corrupt the stream: close is all.
                log_exception(f"unexpected error serving connection fd {connection.fd}, which is closed")
                if operation == SEND:  # that send is over: its bytes need not outlive the close
                    connection.sending = None
                self.close(connection)
        if now >= self.next_sweep:
            self.close_idle_connections(now)
        if self.heartbeat is not None and now >= self.next_heartbeat:
            self.beat(now)
        # Done once no connection is left and the accept is over: clients it took meanwhile are ours to serve.
        if self.draining and ((not connections and not self.accept_armed) or now >= self.stop_deadline):
            self.running = False

    def next_batch(self) -> Iterable[tuple[int, int, int]]:
        """This turn's completions: those held back last turn first, then the new ones."""
        # One system call per turn: what this turn prepared goes to the kernel, and we wait for completions.
        self.buffers.publish()  # the buffers recycled last turn, back in the ring before it runs
        # With completions held back, there is work already: we do not wait.
        self.ring.submit_and_wait(0.0 if self.held_back else self.wait_timeout)
        batch: Iterable[tuple[int, int, int]] = self.ring.completions()
        if self.held_back:
            batch, self.held_back = itertools.chain(self.held_back, batch), []
        return batch

    def in_its_share(
        self, connection: Connection, receives: dict[int, int], user_data: int, result: int, flags: int
    ) -> bool:
        """Count a receive completion against its connection's share of this turn: True to handle it now;
        False if the share is spent, and it is kept (buffer and all) for the next turn, after those held."""
        handled = receives.get(connection.number, 0)
        receives[connection.number] = handled + 1
        if handled < RECEIVES_PER_TURN:
            return True
        self.held_back.append((user_data, result, flags))
        if handled == RECEIVES_PER_TURN and connection.receiving:
            # The first one held: pause the receive, so that the kernel stops filling buffers for this client.
            # Its last completion comes after the held ones, and re-arms it once they have all been handled.
            self.ring.cancel(connection.number << OPERATION_BITS | RECEIVE, CANCEL_TAG)
        return False

    def on_other_completion(self, user_data: int, result: int, flags: int, now: float) -> None:
        if flags & CQE_F_BUFFER:  # a receive of a closed connection: its buffer is ours to give back
            self.buffers.recycle(flags >> CQE_BUFFER_SHIFT)
        if user_data == ACCEPT_TAG:
            self.on_accepted(result, flags, now)
        elif user_data == WAKEUP_TAG:
            self.on_stop_signal(result, now)
        elif user_data & OPERATION_MASK == SEND:  # a closed connection's send is over: its bytes may go
            self.orphaned_sends.pop(user_data >> OPERATION_BITS, None)
        elif user_data & OPERATION_MASK == CLOSE:  # a closed connection's descriptor is gone
            self.closes_in_flight -= 1
        # Anything else is over and needs nothing: a closed connection's receive, a cancellation that found
        # nothing left to cancel.

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
        if self.accepting and not self.draining and not self.accept_many and not self.waiting:
            # A one-shot accept on a shared listener waits in the kernel's queue behind the other workers'
            # (and a wakeup goes to one of them only): if the one ahead is stopped or stuck, its client waits
            # with it. A direct look once per beat bounds that wait.
            self.accept_directly(now)

    def accept_directly(self, now: float) -> None:
        """Accept the clients queued now with accept() itself, not through the ring (see beat)."""
        while len(self.connections) < self.max_connections:
            try:
                sock, _address = self.listener.accept()
            except OSError:  # EAGAIN: none queued (or one that gave up); the ring's accept handles the rest
                return
            sock.setblocking(False)  # as the ring's accepts are, with SOCK_NONBLOCK
            self.admit(sock.detach(), now)

    # --8<-- [end:loop]

    # --8<-- [start:accept]
    def arm_accept(self) -> None:
        self.accept_armed = True
        if self.accept_many:
            self.ring.accept_multishot(self.listener_fd, ACCEPT_TAG)
        else:
            self.ring.accept(self.listener_fd, ACCEPT_TAG)

    def on_accepted(self, result: int, flags: int, now: float) -> None:
        """A client accepted (`result` is its new socket, non-blocking) or an accept failed (-errno)."""
        if not flags & CQE_F_MORE:
            self.accept_armed = False  # this accept is over: it was one-shot, or ended by us or by an error
        if result >= 0:
            if len(self.connections) < self.max_connections or self.draining:
                self.admit(result, now)
            else:
                self.waiting.append(result)
            if len(self.connections) >= self.max_connections:
                self.pause_accepting()
        elif -result in RESOURCE_EXHAUSTED:
            # Out of fds or memory: accepting again at once would spin. Wait for a close, or the sweep.
            print(f"accept failed ({errno.errorcode[-result]}); pausing", file=sys.stderr)
            self.pause_accepting()
        # ECONNABORTED and the like: that client gave up. And if the accept is over while we still want
        # clients (an error ended it), it is submitted again.
        if self.accepting and not self.accept_armed:
            self.arm_accept()

    def admit(self, fd: int, now: float) -> None:
        # Accepted sockets inherit TCP_NODELAY from the listener (set by create_listener): no system call.
        self.last_number += 1
        deadline, head_deadline = now + self.idle_timeout, now + self.header_timeout
        number, limits = self.last_number, self.limits
        connection = Connection(number, fd, deadline, head_deadline, limits, shared_buffer=self.shared_buffer)
        self.connections[connection.number] = connection
        if self.draining:
            connection.deadline = min(connection.deadline, now + DRAIN_GRACE)
        self.receive(connection)

    def pause_accepting(self) -> None:
        # Clients keep queueing in the kernel's backlog while no accept is armed (or, when the listener is
        # shared, other workers take them). A cancelled multishot accept ends with a last completion.
        self.accepting = False
        if self.accept_armed:
            self.ring.cancel(ACCEPT_TAG, CANCEL_TAG)

    def resume_accepting(self) -> None:
        if self.draining:
            return  # our descriptor of the listener is closed for good
        now = time.monotonic()
        while self.waiting and len(self.connections) < self.max_connections:
            self.admit(self.waiting.pop(0), now)  # the clients accepted meanwhile come first
        if len(self.connections) >= self.max_connections:
            return
        self.accepting = True
        if not self.accept_armed:  # else the cancelled accept is still ending: its last completion re-arms
            self.arm_accept()

    # --8<-- [end:accept]

    # --8<-- [start:read]
    def receive(self, connection: Connection) -> None:
        """Arm the connection's multishot receive, unless it is armed already or no reading is wanted."""
        if connection.reading and not connection.receiving:
            connection.receiving = True
            self.ring.receive_multishot(connection.fd, BUFFER_GROUP, connection.number << OPERATION_BITS)

    def on_received(self, connection: Connection, count: int, flags: int) -> None:
        """One completion of the multishot receive: `count` bytes in a provided buffer, 0 at the end of the
        stream, or -errno."""
        if not flags & CQE_F_MORE:
            connection.receiving = False  # this completion is the receive's last: re-armed below if need be
        if count > 0:
            buffer_id = flags >> CQE_BUFFER_SHIFT
            start = buffer_id * RECEIVE_BUFFER_SIZE
            try:
                # The one copy, out of the kernel's pick of buffer into the parser's (the loop's shared one,
                # or the parser's own while it holds part of a request); the buffer goes straight back.
                connection.parser.feed(self.buffers.view[start : start + count])
            finally:
                self.buffers.recycle(buffer_id)
            try:
                self.on_data(connection, count)
            finally:
                # The shared buffer is the next connection's: what this one has not parsed moves to its own.
                connection.parser.keep_unconsumed_bytes()
        elif count == 0:
            self.on_peer_closed(connection)
            return
        elif count not in (ENOBUFS, ECANCELED):  # ECONNRESET and the like: the client is gone
            self.close(connection)
            return
        # ENOBUFS: the buffer ring ran dry for a moment (the buffers are back once this turn is over).
        # ECANCELED: backpressure paused reading, or resumed it again before the cancellation was done.
        if not connection.receiving and connection.number in self.connections:
            self.receive(connection)

    def on_data(self, connection: Connection, count: int) -> None:
        if not connection.closing:  # a closing connection's parser dropped the bytes: we drain
            self.process_requests(connection)
            self.time_request(connection, count)

    def on_peer_closed(self, connection: Connection) -> None:
        # A half-close (shutdown(SHUT_WR)) still expects its answers: finish sending, then close.
        connection.peer_closed = True
        connection.reading = False
        if connection.sending is None and connection.pending_file is None:
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
        all_sent = connection.sending is None and connection.pending_file is None
        if connection.closing and all_sent and connection.number in self.connections:
            self.close_after_answer(connection)
        return False

    def begin_file(self, connection: Connection, body: FileRange) -> bool:
        """A file answer's head is in flight, or queued: its body follows once the head's send is over
        (on_sent), and parsing and reading pause until it is sent. So it never goes out at once: False."""
        connection.pending_file = body
        self.update_interest(connection)  # the pause: else a client could pile up requests while it waits
        return False

    # --8<-- [end:requests]

    # --8<-- [start:write]
    def send(self, connection: Connection, data: bytes, flags: int = 0) -> None:
        """Send `data` now if no send is in flight, else queue it behind the one that is."""
        if connection.sending is None:
            self.start_sending(connection, data, flags)
        else:
            connection.pending_output += data
            self.update_interest(connection)

    def start_sending(self, connection: Connection, data: bytes, flags: int = 0) -> None:
        # One send in flight per connection: two could reach the socket out of order, if the first had to
        # wait for room. `sending` holds the bytes alive while the kernel reads them, until the completion.
        connection.sending = data
        tag = connection.number << OPERATION_BITS | SEND
        self.ring.send(connection.fd, bytes_address(data), len(data), tag, flags)

    def on_sent(self, connection: Connection, result: int) -> None:
        """The send in flight is over: `result` bytes went to the socket, or it failed (-errno)."""
        data = connection.sending
        assert data is not None
        connection.sending = None
        if result < 0:  # EPIPE, ECONNRESET: the client is gone
            self.close(connection)
            return
        if result < len(data):  # cut short by a signal, or an error the next send meets: the rest goes first
            connection.pending_output[:0] = data[result:]
        if connection.pending_output:
            # What queued meanwhile leaves in one send (a copy: the queue goes on growing while it is out).
            self.start_sending(connection, bytes(connection.pending_output))
            connection.pending_output.clear()
            was_reading = connection.reading
            self.update_interest(connection)
            if connection.reading and not was_reading:
                # Backpressure is over: answer the requests it held in the parser. No new bytes may ever
                # come to do it (the client may have sent its whole pipeline already).
                self.process_requests(connection)
            return
        if connection.reading and connection.pending_file is None and not connection.closing:
            return  # the common case: nothing held back, since requests are answered as they arrive
        self.on_writable(connection)

    def on_writable(self, connection: Connection) -> None:
        """Every answer queued so far is in the socket: send the file body that follows, close, or answer the
        requests that backpressure held back. Also called when a full socket has room for a file again."""
        if connection.pending_file is not None and not self.send_file(connection):
            return  # the socket is full again, or the client is gone
        if connection.closing:
            self.close_after_answer(connection)
            return
        # Drained: answer the pipelined requests that backpressure left waiting in the parser.
        self.process_requests(connection)
        if connection.number not in self.connections:
            return
        if connection.peer_closed and connection.sending is None and connection.pending_file is None:
            self.close(connection)
        else:
            self.update_interest(connection)

    # --8<-- [end:write]

    # --8<-- [start:sendfile]
    def send_file(self, connection: Connection) -> bool:
        """Send the pending file body: True once it is all sent, False if the socket is full (a poll will
        call again) or the connection had to close."""
        # os.sendfile copies from the page cache to the socket inside the kernel: no read() into a Python
        # buffer, no send() out of it. io_uring has no sendfile operation (splice would need a pipe per
        # connection, two more fds), so this one call is made here, and readiness says when to go on. The
        # cost that remains: bytes not in the page cache are read from the disk while the whole loop waits.
        body = connection.pending_file
        assert body is not None
        while body.length:
            try:
                sent = os.sendfile(connection.fd, body.fd, body.offset, body.length)
            except BlockingIOError:  # the socket is full: a one-shot poll says when it has room
                tag = connection.number << OPERATION_BITS | POLL_OUTPUT
                self.ring.poll(connection.fd, select.POLLOUT, tag)
                self.update_interest(connection)
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

    # --8<-- [end:sendfile]

    # --8<-- [start:backpressure]
    def has_room_for_output(self, connection: Connection) -> bool:
        """Backpressure's one test: below the high-water mark we parse and read; at or above it, neither.
        A file being sent counts as full: the next answer waits for it, which keeps the answers in order."""
        return connection.pending_file is None and len(connection.pending_output) < self.high_water_mark

    def update_interest(self, connection: Connection) -> None:
        """Pause reading at the high-water mark, resume below the low-water mark. A multishot receive does
        not wait to be asked for more: pausing cancels it, so that the client's bytes wait in the kernel and
        TCP's window stops the client, and resuming arms a new one."""
        pending = len(connection.pending_output)
        if connection.reading and not self.has_room_for_output(connection):
            connection.reading = False  # this client does not read our answers: stop reading what it sends
            connection.may_close_at_once = False  # its bytes may wait unread in the kernel from now on
            self.time_request(connection, 0)
            if connection.receiving:  # it ends with -ECANCELED; what it received before that is parsed later
                self.ring.cancel(connection.number << OPERATION_BITS | RECEIVE, CANCEL_TAG)
        elif not connection.reading and not connection.peer_closed and pending < self.low_water_mark:
            connection.reading = connection.pending_file is None  # a file being sent still counts as full
            if connection.reading:
                self.time_request(connection, 0)
                self.receive(connection)

    # --8<-- [end:backpressure]

    # --8<-- [start:close]
    def close_after_answer(self, connection: Connection) -> None:
        """The last answer is all in the socket: the quick close if it was small, and the client asked for it
        to be the last, sent nothing after it, and was read from all along (a pause leaves its bytes in the
        kernel); else the lingering close."""
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
        try:
            # FIN after our last byte: the client reads the whole answer, then end of stream. A plain close()
            # with its unread bytes in our receive queue would send RST, which can destroy that answer.
            shutdown(connection.fd, socket.SHUT_WR)
        except OSError:
            self.close(connection)
            return
        connection.reading = True
        connection.clock = LINGER_CLOCK
        connection.strict_deadline = time.monotonic() + LINGER_TIMEOUT
        self.receive(connection)

    def close(self, connection: Connection) -> None:
        if self.connections.get(connection.number) is not connection:
            return  # closed already (an error path may close twice)
        del self.connections[connection.number]
        connection.reading = False
        if connection.pending_file is not None:  # a file answer cut short: its descriptor is ours to close
            os.close(connection.pending_file.fd)
            connection.pending_file = None
        if connection.sending is not None:  # the kernel may read these bytes until the send is over
            self.orphaned_sends[connection.number] = connection.sending
        # The receive (and any send or poll) in flight holds the socket open: cancel them, then close.
        close_tag = connection.number << OPERATION_BITS | CLOSE
        self.ring.cancel_all_then_close(connection.fd, CANCEL_TAG, close_tag)
        self.closes_in_flight += 1
        if not self.accepting:
            self.resume_accepting()

    def close_idle_connections(self, now: float) -> None:
        # A client that neither sends nor reads holds a descriptor and a slot: reclaim both after a while.
        for connection in list(self.connections.values()):
            if connection.strict_deadline is not None and connection.strict_deadline <= now:
                self.on_strict_deadline(connection)
            elif connection.deadline <= now:
                self.close(connection)
            elif self.draining and self.is_idle(connection):
                # Stopping: between two requests, a connection has DRAIN_GRACE to send its last one.
                connection.deadline = min(connection.deadline, now + DRAIN_GRACE)
        if not self.accepting and len(self.connections) < self.max_connections:
            # Paused for lack of fds or memory with no connection left to close: a close cannot resume us.
            self.resume_accepting()
        self.next_sweep = now + self.sweep_interval

    def is_idle(self, connection: Connection) -> bool:
        """Between two requests: nothing of a request received, nothing of an answer still going out."""
        return not (
            connection.closing
            or connection.parser.has_partial_request
            or connection.sending is not None
            or connection.pending_file is not None
        )

    def on_strict_deadline(self, connection: Connection) -> None:
        if connection.closing:
            self.close(connection)  # the lingering close is over, drained or not
            return
        if connection.clock == HEAD_CLOCK and not connection.parser.reading_head:
            self.close(connection)  # a client that connected and never sent a byte: no answer to give
            return
        # A request head or body did not arrive in time: tell the client so, then close (once it is sent).
        part = "head" if connection.clock == HEAD_CLOCK else "body"
        connection.closing = True
        connection.parser.close()
        self.send(connection, error_response(HttpError(408, f"request {part} not received in time")))

    # --8<-- [end:close]

    # --8<-- [start:drain]
    def arm_wakeup(self) -> None:
        wakeup_fd, size = self.wakeup_reader.fileno(), len(self.signal_bytes)
        self.ring.receive(wakeup_fd, self.signal_bytes_address, size, WAKEUP_TAG)

    def on_stop_signal(self, count: int, now: float) -> None:
        """SIGINT or SIGTERM woke the loop: the first drains the server, the second stops it at once."""
        signal_numbers = bytes(self.signal_bytes[: max(count, 0)])
        if self.running:
            self.arm_wakeup()
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
        self.pause_accepting()
        # Our descriptor of it: the supervisor holds another, so the socket and its queue of clients live on
        # for the other workers (closing the last descriptor of a listener resets the clients queued on it).
        # The accept in flight holds its own reference until its cancellation is done.
        self.listener.close()
        self.listener_fd = -1
        for fd in self.waiting:  # accepted already: they are ours to serve, like every connection
            self.admit(fd, now)
        self.waiting.clear()
        # Every connection may have a request on its way (the client cannot know we are leaving), even one
        # whose answer is still in flight: a send completes after the kernel has taken its bytes, maybe after
        # the client has read them and sent its next request. So no parser is closed here: each request that
        # comes is answered with `Connection: close`, and the sweep gives an idle connection DRAIN_GRACE.
        self.next_sweep = now  # at the end of this turn
        print(
            f"{reason}: draining {len(self.connections)} connection(s) for at most {self.shutdown_timeout} s",
            file=sys.stderr,
            flush=True,
        )

    def shutdown(self) -> None:
        """Close what is left (connections the shutdown timeout, or a second signal, cut short)."""
        if self.connections:
            print(f"stopping: {len(self.connections)} connection(s) cut", file=sys.stderr, flush=True)
        # Every close asked of the ring, these and those of the last turns, is done before the ring goes (and
        # so is that of a client an accept still in flight brings in meanwhile).
        deadline = time.monotonic() + LAST_CLOSES_TIMEOUT
        while (self.connections or self.closes_in_flight) and (now := time.monotonic()) < deadline:
            for connection in list(self.connections.values()):
                self.close(connection)
            self.ring.submit_and_wait(deadline - now)
            for user_data, result, flags in self.ring.completions():
                self.on_other_completion(user_data, result, flags, now)
        # Closing the ring cancels every operation still in flight (the accept, the wakeup's receive); the
        # kernel writes into our buffers only from inside our own io_uring_enter calls, so none comes later.
        self.ring.close()
        for fd in self.waiting:
            os.close(fd)
        self.waiting.clear()
        self.buffers.close()
        self.wakeup_reader.close()
        self.wakeup_writer.close()

    # --8<-- [end:drain]


# --8<-- [start:serve]
def serve(
    listener: socket.socket,
    ready: Callable[[Server], None],
    *,
    shared_listener: bool = False,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    body_min_rate: int = DEFAULT_BODY_MIN_RATE,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    limits: Limits = DEFAULT_LIMITS,
    receive_buffers: int = DEFAULT_RECEIVE_BUFFERS,
    static_dir: Path | None = None,
    shared_buffer: bool = True,
    quick_close: bool = True,
    file_head_more: bool = True,
    cache_responses: bool = True,
    freeze_gc: bool = False,
) -> int:
    """Serve on `listener`, which the supervisor opened, until a stop; return the exit status, 0. The
    supervisor checked the address and the static directory: a worker has nothing left that can fail."""
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
            receive_buffers=receive_buffers,
            shared_listener=shared_listener,
            shared_buffer=shared_buffer,
            quick_close=quick_close,
            file_head_more=file_head_more,
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
