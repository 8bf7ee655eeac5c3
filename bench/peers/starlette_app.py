"""Our demo app's routes on Starlette, the smallest router of the ASGI world (FastAPI is built on it), for
uvicorn: a `Route` per path, `{id:int}` as in our router, and StaticFiles mounted at /static/.

The bodies are our phases' bytes: a plain Response of json.dumps, since Starlette's JSONResponse writes its
JSON without spaces. uvicorn imports the app by name, so it cannot be given arguments: the static directory
comes from the environment variable BENCH_STATIC_DIR, which bench/targets.py sets.
"""

import json
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

JSON = "application/json"


async def hello(request: Request) -> Response:
    return PlainTextResponse("Hello, World!")


async def hello_json(request: Request) -> Response:
    return Response(b'{"message":"Hello, World!"}', media_type=JSON)


async def user(request: Request) -> Response:
    return Response(json.dumps({"id": request.path_params["id"]}).encode(), media_type=JSON)


app = Starlette(
    routes=[
        Route("/", hello),
        Route("/json", hello_json),
        Route("/users/{id:int}", user),
        Mount("/static", StaticFiles(directory=os.environ["BENCH_STATIC_DIR"])),
    ]
)
