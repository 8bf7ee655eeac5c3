"""Command line: `python3 -m phase1_blocking_echo --host 127.0.0.1 --port 8080`."""

import argparse
import sys

from .server import DEFAULT_BUFFER_SIZE, serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m phase1_blocking_echo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on, 0 for any free port")
    parser.add_argument(
        "--buffer-size",
        type=int,
        default=DEFAULT_BUFFER_SIZE,
        help="bytes per recv (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return serve(args.host, args.port, buffer_size=args.buffer_size)


if __name__ == "__main__":
    sys.exit(main())
