"""Phase 1: a blocking, single-threaded TCP echo server.

The one idea: a server is a loop of accept, then read and write until the client hangs up. The one accepted
tradeoff: while it serves one client, every other client waits in the listen backlog.
"""

CAPABILITIES = frozenset({"echo", "one_client_at_a_time"})
