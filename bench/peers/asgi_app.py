"""Hello world as a raw ASGI app, for uvicorn (with uvloop and httptools): no framework in between.

The ASGI types are spelled out here rather than imported, so this file needs nothing installed to type-check.
"""

from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]

# Built once: the app's only work per request is sending these two messages.
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
}
BODY = {"type": "http.response.body", "body": b"Hello, World!"}


async def app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":  # lifespan is switched off on the command line; nothing else is expected
        raise RuntimeError(f"unsupported ASGI scope {scope['type']!r}")
    await send(START)
    await send(BODY)
