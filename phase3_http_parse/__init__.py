"""Phase 3: HTTP/1.1 on the epoll loop, with an incremental, zero-copy, sans-I/O parser.

The one idea: the protocol is a pure function from bytes to requests (protocol.py), resumable at any byte, and
the event loop only moves bytes between sockets and that parser. The one accepted tradeoff: the application
is hard-coded (two routes) until phase 4 brings a router.
"""

CAPABILITIES = frozenset(
    {
        "http",
        "keep_alive",
        "pipelining",
        "expect_continue",
        "http_limits",
        "http_timeouts",
        "concurrent",
        "max_connections",
        "trigger_modes",
        "graceful_shutdown",
        "server_internals",  # tests/test_abuse.py plants bugs in server.py's Server class
        "hard_coded_app",  # ... and in its handle(), the whole application of this phase
    }
)
