"""Command line: `python3 -m phase2_nonblocking --host 127.0.0.1 --port 8080`."""

import argparse
import sys

from .server import DEFAULT_BUFFER_SIZE, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m phase2_nonblocking", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on, 0 for any free port")
    parser.add_argument(
        "--buffer-size",
        type=int,
        default=DEFAULT_BUFFER_SIZE,
        help="bytes per recv (default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="stop accepting while this many clients are connected (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        help="close a connection after this many seconds without activity (default: %(default)s)",
    )
    parser.add_argument(
        "--trigger",
        choices=("level", "edge"),
        default="level",
        help="epoll notification mode (default: %(default)s; chapter 2 measures both)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return serve(
        args.host,
        args.port,
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        buffer_size=args.buffer_size,
        edge_triggered=args.trigger == "edge",
    )


if __name__ == "__main__":
    sys.exit(main())
