"""Command line: `python3 -m phase8_tls --port 8443 --tls-cert CERT --tls-key KEY [--workers N]`."""

import argparse
import functools
import os
import sys
from pathlib import Path

from .protocol import Limits
from .server import (
    DEFAULT_BODY_MIN_RATE,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SHUTDOWN_TIMEOUT,
    serve,
)
from .tls import server_context
from .workers import DEFAULT_HEARTBEAT_TIMEOUT, MODELS, ServeFunction, run_worker_process, supervise

# --8<-- [start:switches]
# The optimisations that a switch turns off, so that the bench can measure each one alone. Two more were
# measured and left off, since no measurement showed them paying: --pin and --gc-freeze.
OPTIMISATIONS = {
    "shared_buffer": "every connection receives into its own buffer, held while it is idle",
    "cached_responses": "a fixed route's response is rendered for every request",
    "inherited_nodelay": "every accepted socket sets TCP_NODELAY itself, one system call per client",
    "quick_close": "every last answer ends in a lingering close, even when the client asked for it",
    "file_head_more": "a file answer's head leaves in a packet of its own, ahead of the file",
}
# --8<-- [end:switches]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m phase8_tls", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on, 0 for any free port")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="a worker stops accepting while this many clients are connected to it (default: %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        help="close a connection after this many seconds without activity (default: %(default)s)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT,
        help="answer 408 and close if a request head takes longer than this (default: %(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_TIMEOUT,
        help="answer 408 and close if a request body stalls for this many seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--body-min-rate",
        type=int,
        default=DEFAULT_BODY_MIN_RATE,
        help="bytes per second a request body must average, else 408 (default: %(default)s)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        help="on SIGTERM or SIGINT, seconds to finish the requests in flight (default: %(default)s)",
    )
    limits = Limits()
    parser.add_argument(
        "--max-request-line",
        type=int,
        default=limits.max_request_line,
        help="longest request line in bytes, else 414 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-header-bytes",
        type=int,
        default=limits.max_header_bytes,
        help="largest header section in bytes, else 431 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-header-count",
        type=int,
        default=limits.max_header_count,
        help="most header fields in a request, else 431 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=limits.max_body_bytes,
        help="largest request body in bytes, else 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        help="serve TLS with this certificate chain (PEM, the server's certificate first; default: none,"
        " cleartext); make cert writes one for development",
    )
    parser.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM), with --tls-cert")
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        help="close a TLS connection whose handshake takes longer, in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--static-dir",
        type=Path,
        help="serve the files under this directory at /static/... (default: none, /static/ answers 404)",
    )
    parser.add_argument(
        "--trigger",
        choices=("level", "edge"),
        default="level",
        help="epoll notification mode (default: %(default)s; chapter 2 measures both)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="event loops that serve, one per process or thread (default: the CPUs we may use, %(default)s)",
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="reuseport",
        help="how connections reach the workers (default: %(default)s; chapter 5 measures all three)",
    )
    parser.add_argument(
        "--without",
        action="append",
        choices=OPTIMISATIONS,
        default=[],
        metavar="NAME",
        help="turn one optimisation off, to measure what it buys (repeatable): "
        + "; ".join(f"{name}: {effect}" for name, effect in OPTIMISATIONS.items()),
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="run each worker on a CPU of its own (default: off; no gain was measured)",
    )
    parser.add_argument(
        "--gc-freeze",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="gc.freeze() once started, so collections skip the start-up objects (default: off; no gain was"
        " measured)",
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=DEFAULT_HEARTBEAT_TIMEOUT,
        help="kill and replace a worker process whose loop has been silent this many seconds: stopped, or"
        " stuck in a handler (default: %(default)s)",
    )
    # Given by the supervisor to the worker processes it starts, never by a reader: no help for them.
    parser.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--listener-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limits = Limits(
        max_request_line=args.max_request_line,
        max_header_bytes=args.max_header_bytes,
        max_header_count=args.max_header_count,
        max_body_bytes=args.max_body_bytes,
    )
    serve_worker: ServeFunction = functools.partial(
        serve,
        exclusive_accept=args.model != "reuseport",  # a listener shared by all: wake one worker per client
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        body_min_rate=args.body_min_rate,
        shutdown_timeout=args.shutdown_timeout,
        limits=limits,
        edge_triggered=args.trigger == "edge",
        static_dir=args.static_dir,
        shared_buffer="shared_buffer" not in args.without,
        inherited_nodelay="inherited_nodelay" not in args.without,
        quick_close="quick_close" not in args.without,
        file_head_more="file_head_more" not in args.without,
        cache_responses="cached_responses" not in args.without,
        freeze_gc=args.gc_freeze,
        tls_files=(args.tls_cert, args.tls_key) if args.tls_cert is not None else None,
        handshake_timeout=args.handshake_timeout,
    )
    if args.worker_of is not None:  # we are a worker process, started by the supervisor below
        return run_worker_process(serve_worker, args.worker_of, args.listener_fd, args.ready_fd)
    if args.tls_cert is not None:  # a certificate that cannot serve is one line and exit 2, before any worker
        try:
            server_context(args.tls_cert, args.tls_key)
        except OSError as error:  # ssl.SSLError is one
            print(f"error: --tls-cert {args.tls_cert} --tls-key {args.tls_key}: {error}", file=sys.stderr)
            return 2
    # A worker process runs this same command line, plus the three options that make it a worker.
    worker_command = [sys.executable, "-m", __package__, *(sys.argv[1:] if argv is None else argv)]
    return supervise(
        serve_worker,
        worker_command,
        host=args.host,
        port=args.port,
        model=args.model,
        worker_count=args.workers,
        shutdown_timeout=args.shutdown_timeout,
        heartbeat_timeout=args.heartbeat_timeout,
        static_dir=args.static_dir,
        pin=args.pin,
    )


if __name__ == "__main__":
    sys.exit(main())
