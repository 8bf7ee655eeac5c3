"""The floor: the least a Python server on our event loop can do and still pass the bench's hello world.

One epoll loop, level-triggered like our phases: accept, `recv_into` one buffer, count the request ends
(`\\r\\n\\r\\n`) in what arrived, send that many copies of one canned response (the headers our phases send,
its Date refreshed once a second); close the connection if what arrived holds `Connection: close`, the one
header it looks for (the bench's churn scenario sends it). Whatever a pure-Python server here adds costs more
than this, so the floor, measured in the same run, is the ceiling for any of them. What it skips, as no real
server may: parsing (any request, even malformed, gets the hello world), routing, a request end split across
two reads (never answered), a response the send buffer cannot take whole (the connection is closed),
timeouts, limits and a graceful shutdown. `--workers N` forks N - 1 copies, each with its own SO_REUSEPORT
listener on the same port.

Usage: python -m bench.peers.floor --host 127.0.0.1 --port 8080 [--workers N]
"""

import argparse
import os
import select
import socket
import time
from email.utils import formatdate

BODY = b"Hello, World!"
REQUEST_END = b"\r\n\r\n"
CLOSE_ASKED = b"\r\nConnection: close\r\n"


def canned_response(now: float, closing: bool) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nDate: {formatdate(now, usegmt=True)}\r\n"
    head += f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(BODY)}\r\n"
    return (head + ("Connection: close\r\n\r\n" if closing else "\r\n")).encode("ascii") + BODY


def listen(host: str, port: int) -> socket.socket:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # one listener per worker, one port
    listener.bind((host, port))
    listener.listen(2048)
    return listener


def serve(listener: socket.socket) -> None:
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    connections: dict[int, socket.socket] = {}
    buffer = bytearray(64 * 1024)
    second, responses = 0, (b"", b"")  # to keep the connection open, to close it
    while True:
        events = epoll.poll()
        if (now := time.time()) >= second + 1:
            second, responses = int(now), (canned_response(now, False), canned_response(now, True))
        for fd, _ in events:
            if fd == listener.fileno():
                connection, _ = listener.accept()
                connection.setblocking(False)
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connections[connection.fileno()] = connection
                epoll.register(connection.fileno(), select.EPOLLIN)
                continue
            connection = connections[fd]
            try:
                received = connection.recv_into(buffer)
                closing = buffer.find(CLOSE_ASKED, 0, received) != -1
                answers = responses[closing] * buffer.count(REQUEST_END, 0, received)
                open_still = received > 0 and connection.send(answers) == len(answers) and not closing
            except OSError:  # reset by the client
                open_still = False
            if not open_still:
                epoll.unregister(fd)
                connections.pop(fd).close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1)
    options = parser.parse_args()
    listener = listen(options.host, options.port)
    host, port = listener.getsockname()
    print(f"listening on {host}:{port}", flush=True)
    for _ in range(options.workers - 1):
        if os.fork() == 0:  # a worker: its own listener, so the kernel spreads connections across them
            listener.close()
            listener = listen(host, port)
            break
    serve(listener)


if __name__ == "__main__":
    main()
