"""Phase 6: the same server, every hot-path cost measured, and the ones that pay removed.

The one idea: measure before changing anything, in CPU time per request of the server, and keep only what the
measurements justify; each change that a reader may want to undo has a switch (`--without NAME`), so the
bench can measure it alone. The one accepted tradeoff: the fast paths are code that must give exactly the
answers of the slow paths they skip (tests/test_perf.py holds them to it), and a little more to read.
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
        "routing",
        "static_files",
        "multi_process",
        "supervisor",
        "rolling_restart",
        "optimisation_switches",
        "quick_close",  # a client that asked to close is closed at once, no lingering close (round two)
        "file_head_more",  # a file answer's head is sent with MSG_MORE, to leave with the file (round two)
    }
)
