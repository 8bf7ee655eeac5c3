"""Our demo app's routes on aiohttp's web server and its router, on the standard asyncio event loop: the hello
world, `/json`, `/users/{id}` (digits only) with our phases' bytes, and the static files under /static/ by
aiohttp's own static route (which sends files with sendfile).

Usage: python -m bench.peers.aiohttp_app --host 127.0.0.1 --port 8080 --static-dir DIR
"""

import argparse
import json

from aiohttp import web

JSON = "application/json"


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=b"Hello, World!", content_type="text/plain")


async def hello_json(request: web.Request) -> web.Response:
    return web.Response(body=b'{"message":"Hello, World!"}', content_type=JSON)


async def user(request: web.Request) -> web.Response:
    return web.Response(body=json.dumps({"id": int(request.match_info["id"])}).encode(), content_type=JSON)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--static-dir", required=True, help="the directory served under /static/")
    options = parser.parse_args()
    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/json", hello_json)
    app.router.add_get("/users/{id:[0-9]+}", user)
    app.router.add_static("/static", options.static_dir)
    web.run_app(app, host=options.host, port=options.port, access_log=None, print=None, backlog=2048)


if __name__ == "__main__":
    main()
