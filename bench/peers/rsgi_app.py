"""Our demo app's routes as an RSGI app, granian's own interface (lighter than ASGI: one call sends the
response), routed the way a minimal RSGI app routes: exact paths in a dict, `/users/` by its prefix.

`GET /` is the hello world; `GET /json` and `GET /users/{id}` (ASCII digits only; anything else is a 404) send
the bytes our phases send. Static files under /static/ never reach this app: granian serves them itself
(`--static-path-mount`, bench/targets.py). The method is not looked at, as in the other peers' hello world.
The one method we call and the one field we read are described by Protocols, so this file type-checks
without granian installed.
"""

import json
from typing import Protocol

Headers = list[tuple[str, str]]


class Scope(Protocol):
    path: str


class HTTPProtocol(Protocol):
    def response_bytes(self, status: int, headers: Headers, body: bytes) -> None: ...


TEXT: Headers = [("content-type", "text/plain")]
JSON: Headers = [("content-type", "application/json")]
FIXED: dict[str, tuple[Headers, bytes]] = {
    "/": (TEXT, b"Hello, World!"),
    "/json": (JSON, b'{"message":"Hello, World!"}'),
}
USERS = "/users/"


async def app(scope: Scope, protocol: HTTPProtocol) -> None:
    path = scope.path
    if (fixed := FIXED.get(path)) is not None:
        protocol.response_bytes(200, *fixed)
    elif path.startswith(USERS) and (digits := path[len(USERS) :]).isascii() and digits.isdigit():
        protocol.response_bytes(200, JSON, json.dumps({"id": int(digits)}).encode())
    else:
        protocol.response_bytes(404, TEXT, b"Not Found\n")
