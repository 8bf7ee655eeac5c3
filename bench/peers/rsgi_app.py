"""Hello world as an RSGI app, granian's own interface (lighter than ASGI: one call sends the response).

The one method we call is described by a Protocol, so this file type-checks without granian installed.
"""

from typing import Any, Protocol


class HTTPProtocol(Protocol):
    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None: ...


HEADERS = [("content-type", "text/plain")]
BODY = b"Hello, World!"


async def app(scope: Any, protocol: HTTPProtocol) -> None:
    protocol.response_bytes(200, HEADERS, BODY)
