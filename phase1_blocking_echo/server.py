"""A blocking TCP echo server: one client at a time, one buffer reused for every read.

Every call here blocks: accept() waits for a client, recv_into() waits for bytes, sendall() waits until the
kernel has taken every byte. So the code reads like the protocol, and the server serves exactly one client at
a time: while it echoes for one, the next waits in the listen backlog until the first hangs up.
"""

import signal
import socket
import sys
from types import FrameType

DEFAULT_BUFFER_SIZE = 64 * 1024
LISTEN_BACKLOG = 128


class StopServer(Exception):
    """Raised by the SIGINT and SIGTERM handler to unwind the server from wherever it is blocked."""


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
    # A signal interrupts the blocked accept() or recv_into(); Python runs this handler, and because it
    # raises, the call unwinds with StopServer instead of being retried (PEP 475 retries only if none raises).
    for signum in STOP_SIGNALS:
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
    return listener


# --8<-- [end:listen]


# --8<-- [start:echo]
def echo_until_eof(client: socket.socket, buffer: memoryview) -> None:
    """Send back everything the client sends, until it shuts down its sending side."""
    while True:
        # recv_into fills our buffer in place: no new bytes object per read. It returns as soon as *some*
        # bytes have arrived, perhaps fewer than the client sent at once: TCP is a stream, not messages.
        count = client.recv_into(buffer)
        if count == 0:  # end of stream: the client closed or shut down its side
            return
        # send() may take only part of what we give it; sendall() loops until the kernel has it all.
        # buffer[:count] copies no bytes: it allocates only a small memoryview object that points into buffer.
        client.sendall(buffer[:count])


# --8<-- [end:echo]


# --8<-- [start:serve_forever]
def serve_forever(listener: socket.socket, buffer_size: int) -> None:
    # One buffer for the life of the server: allocated once, reused by every read of every client.
    buffer = memoryview(bytearray(buffer_size))
    while True:
        client, _address = listener.accept()
        with client:
            try:
                echo_until_eof(client, buffer)
            except OSError:
                pass  # ECONNRESET, EPIPE...: this client is gone, the server is not


# --8<-- [end:serve_forever]


def serve(host: str, port: int, *, buffer_size: int = DEFAULT_BUFFER_SIZE) -> int:
    """Serve until SIGINT or SIGTERM; return the exit status: 0, or 2 if it cannot listen on host:port."""
    try:
        listener = create_listener(host, port)
    except OSError as error:  # the port is taken, the address is not one of this machine's, ...
        print(f"error: cannot listen on {host}:{port}: {error.strerror}", file=sys.stderr)
        return 2
    with listener:
        try:
            # Inside the try, and before we say where we listen: every stop signal lands in the except.
            install_stop_handlers()
            bound_host, bound_port = listener.getsockname()[:2]
            print(f"listening on {bound_host}:{bound_port}", flush=True)
            serve_forever(listener, buffer_size)
        except StopServer:
            pass
    return 0
