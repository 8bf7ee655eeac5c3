"""Hello world as a WSGI app, for gunicorn's threaded worker (gthread), the usual way to deploy WSGI."""

from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment

HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "13")]
BODY = b"Hello, World!"


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return [BODY]
