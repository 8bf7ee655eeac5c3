"""Phase 8: phase 6's server behind TLS, the handshake one more state of a connection in the same loop.

The one idea: TLS never blocks the loop. A handshake is steps, each taken when the socket is ready for what
OpenSSL waits for; a record not yet whole is "would block", not an error; a file goes through OpenSSL a
record's worth at a time, because sendfile cannot encrypt. The one accepted tradeoff: each worker process
makes its own TLS context, so a session ticket resumes only with the worker that issued it (Python cannot
set ticket keys), and a file costs a copy through user space that sendfile had saved.
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
        "tls",  # --tls-cert and --tls-key: the connections speak TLS 1.2 or 1.3
    }
)
