"""Phase 5: every core, by worker processes under a supervisor, with zero-downtime restarts.

The one idea: one event loop per core, each in its own process, all serving one port. A supervisor
(workers.py) owns the listening sockets, starts the workers, replaces the ones that die, drains them all on
SIGTERM and replaces them all on SIGHUP without refusing or resetting a client. The one accepted tradeoff:
workers share nothing, so every per-process cost (memory, caches, start-up) is paid once per worker.
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
    }
)
