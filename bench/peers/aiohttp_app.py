"""Hello world on aiohttp's web server, on the standard asyncio event loop.

Usage: python -m bench.peers.aiohttp_app --host 127.0.0.1 --port 8080
"""

import argparse

from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=b"Hello, World!", content_type="text/plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    options = parser.parse_args()
    app = web.Application()
    app.router.add_get("/", hello)
    web.run_app(app, host=options.host, port=options.port, access_log=None, print=None, backlog=2048)


if __name__ == "__main__":
    main()
