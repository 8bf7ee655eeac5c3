"""Memory at scale: hold many idle keep-alive connections open and weigh what the server keeps for each.

An asyncio client in the harness opens N connections, sends one `GET /` on each and reads the answer (so the
server has really served it, not merely accepted it), then leaves them all open and idle. We read the
server tree's resident memory before and after, and count the ESTABLISHED connections to its port that it
still holds (results measured before this count, with open descriptors, could exceed N by a few). The
tradeoff: RSS is coarse (allocators keep freed memory, pages are 4 KiB), so the figure is meaningful only over
thousands of connections, and a server that closes idle connections early is reported as such.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

from bench import cpu
from bench.results import IdleMemory
from bench.targets import RunningTarget
from tools.phases import HOST

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
OPENING_CONCURRENCY = 256  # connections being set up at once: enough to be quick, few enough for any backlog
SETTLE_SECONDS = 1.0  # let the server finish the work the last connections caused before weighing it
CONNECTION_TIMEOUT = 10.0


async def _open_one(port: int, gate: asyncio.Semaphore) -> asyncio.StreamWriter:
    async with gate:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = _content_length(head)
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        return writer


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError("response without Content-Length")


async def _hold(server: RunningTarget, count: int, deadline_s: float) -> IdleMemory:
    rss_before = cpu.tree_rss_bytes(server.pid)
    gate = asyncio.Semaphore(OPENING_CONCURRENCY)
    started = time.monotonic()
    tasks = [
        asyncio.create_task(asyncio.wait_for(_open_one(server.port, gate), CONNECTION_TIMEOUT))
        for _ in range(count)
    ]
    done, pending = await asyncio.wait(tasks, timeout=deadline_s)
    seconds_to_open = round(time.monotonic() - started, 3)
    measured = partial(IdleMemory, server.target.name, server.command, count)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    writers = [task.result() for task in done if task.exception() is None]
    errors = [task.exception() for task in done if task.exception() is not None]
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        if (gone := server.exited()) is not None:
            return measured(0, rss_before, 0, seconds_to_open, gone)
        held = cpu.tree_established_connections(server.pid, server.port)
        rss_after = cpu.tree_rss_bytes(server.pid)
    finally:
        for writer in writers:
            writer.close()
    failure = None
    if len(writers) < count:
        first_error = repr(errors[0]) if errors else f"not done within {deadline_s:.0f} s"
        failure = f"opened {len(writers)} of {count} connections ({first_error})"
    elif held < count * 0.99:  # a few may be mid-close; more means the server dropped idle connections
        failure = f"the server held only {held} of {count} idle connections"
    return measured(held, rss_before, rss_after, seconds_to_open, failure)


def hold_idle_connections(server: RunningTarget, count: int) -> IdleMemory:
    """Open `count` idle keep-alive connections to a running server, weigh it, close them all."""
    deadline_s = max(30.0, count / 250)
    return asyncio.run(_hold(server, count, deadline_s))
