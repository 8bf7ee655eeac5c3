"""Phase 2: the same echo service, non-blocking, on select.epoll.

The one idea: never block; ask the kernel which sockets can make progress and serve those, thousands of
clients on one thread. The one accepted tradeoff: each client's progress now lives in a state object and an
event loop, not in the flow of the code.
"""

CAPABILITIES = frozenset(
    {"echo", "concurrent", "backpressure", "idle_timeout", "max_connections", "trigger_modes"}
)
