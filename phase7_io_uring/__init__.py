"""Phase 7: the same server on io_uring, completions instead of readiness, from the standard library.

The one idea: instead of asking the kernel which sockets are ready and then making every call ourselves, we
hand it the operations (accept every client, receive everything a connection sends, send this answer) and it
tells us when each is done, through two rings in memory we share with it: one system call per loop turn, for
every operation of that turn. The one accepted tradeoff: the kernel interface is written by hand (uring.py,
ctypes and mmap, x86-64 only), and the system calls it saves are paid back in Python work per completion.
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
        "io_uring",
    }
)
