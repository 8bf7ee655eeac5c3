"""Black-box tests of the routed application (phase 4 on): its demo routes, 404 and 405, HEAD and OPTIONS,
and a handler that raises. The router itself is unit-tested in test_router.py."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from test_http import HELLO, HttpClient, get, post_echo

from conftest import Phase, RunningServer

pytestmark = pytest.mark.needs("routing")


def request(server: RunningServer, data: bytes, method: str = "GET") -> Any:
    with HttpClient(server) as client:
        client.send(data)
        return client.response(method)


def test_root_is_byte_for_byte_phase_3s_hello(server: RunningServer) -> None:
    with HttpClient(server) as client:
        client.send(get("/"))
        response = client.response()
    assert response.status == 200 and response.body == HELLO
    assert response.header("Content-Type") == "text/plain; charset=utf-8"
    assert response.header("Content-Length") == str(len(HELLO))


def test_json_route(server: RunningServer) -> None:
    response = request(server, get("/json"))
    assert response.status == 200 and response.header("Content-Type") == "application/json"
    assert json.loads(response.body) == {"message": "Hello, World!"}


@pytest.mark.parametrize(
    ("path", "status", "body"), [("/users/123", 200, {"id": 123}), ("/users/0", 200, {"id": 0})]
)
def test_users_route_takes_an_integer(server: RunningServer, path: str, status: int, body: object) -> None:
    response = request(server, get(path))
    assert response.status == status and json.loads(response.body) == body


@pytest.mark.parametrize("path", ["/users/abc", "/users/", "/users", "/users/1/2", "/nope", "/json/", "//"])
def test_unknown_paths_are_404_whatever_the_method(server: RunningServer, path: str) -> None:
    assert request(server, get(path)).status == 404
    assert request(server, post_echo(b"x").replace(b"/echo", path.encode(), 1)).status == 404


def test_a_known_path_with_another_method_is_405_with_allow(server: RunningServer) -> None:
    response = request(server, post_echo(b"x").replace(b"/echo", b"/users/7", 1))
    assert response.status == 405
    assert response.header("Allow") == "GET, HEAD, OPTIONS"
    response = request(server, get("/echo"))
    assert response.status == 405 and response.header("Allow") == "OPTIONS, POST"


def test_options_on_a_known_path_is_204_with_allow(server: RunningServer) -> None:
    response = request(server, b"OPTIONS /users/7 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert response.status == 204 and response.header("Allow") == "GET, HEAD, OPTIONS"


def test_head_is_get_without_the_body(server: RunningServer) -> None:
    with HttpClient(server) as client:
        client.send(b"HEAD /json HTTP/1.1\r\nHost: t\r\n\r\n" + get("/json"))
        head = client.response("HEAD")
        full = client.response()
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == str(len(full.body))


def test_echo_route(server: RunningServer) -> None:
    assert request(server, post_echo(b"routed")).body == b"routed"


def test_query_and_absolute_form_do_not_change_the_route(server: RunningServer) -> None:
    assert json.loads(request(server, get("/users/5?x=1")).body) == {"id": 5}
    assert json.loads(request(server, get("http://t/users/6")).body) == {"id": 6}


# --- a handler that raises ----------------------------------------------------------------------------


@pytest.fixture
def server_with_a_raising_route(phase: Phase) -> Iterator[tuple[str, int]]:
    """The phase's Server, in a thread of this process, with the demo routes plus one that raises."""
    server_module = phase.import_module("server")
    app_module = phase.import_module("app")

    def broken(request: Any, params: Any) -> Any:
        raise ZeroDivisionError("planted in a handler")

    application = app_module.build_application()
    application.router.add("GET", "/broken", broken)
    listener = server_module.create_listener("127.0.0.1", 0)
    server = server_module.Server(listener, application=application)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield listener.getsockname()[:2]
    server.wakeup_writer.send(bytes([15, 15]))  # SIGTERM twice, as the signal handler would write them
    thread.join(timeout=10)
    server.shutdown()


@pytest.mark.needs("server_internals")
def test_a_raising_handler_costs_its_request_a_500_and_nothing_more(
    server_with_a_raising_route: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.create_connection(server_with_a_raising_route, timeout=5) as sock:
        reader = sock.makefile("rb")
        sock.sendall(get("/broken") + get("/") + get("/broken") + get("/", "Connection: close"))
        answers = reader.read()
    statuses = [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)]
    assert statuses == [500, 200, 500, 200]  # the connection carried on after each 500
    assert answers.endswith(HELLO)
    assert capsys.readouterr().err.count("ZeroDivisionError: planted in a handler") == 2
