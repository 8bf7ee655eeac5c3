"""Phase 4: a trie router, a handler API, and static files sent with os.sendfile.

The one idea: the server no longer knows the application. A router (router.py) maps a method and a path to a
handler in one walk down a trie of path segments; handlers (app.py) return responses, never touch sockets;
and a file body goes from the page cache to the socket inside the kernel. The one accepted tradeoff: handlers
run on the event loop, so a slow handler, or a file read that misses the page cache, stalls every client.
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
    }
)
