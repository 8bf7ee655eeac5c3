"""Unit tests of the trie router (`router.py`), with plain strings: no server, no sockets.

Each rule of the router's docstring has its examples here: the kinds of segment, precedence and backtracking,
methods (HEAD, OPTIONS, 405 and Allow), strict trailing slashes, percent-decoding in parameters only, and
conflicting or malformed patterns failing at start-up. Hypothesis then checks the same rules at scale against
an oracle that knows nothing of tries: every pattern as one regular expression, the most specific match chosen
by sorting. Handlers here are the strings "METHOD pattern", so a result says which route it came from.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Phase

pytestmark = pytest.mark.needs("routing")


@pytest.fixture
def router(phase: Phase) -> ModuleType:
    return phase.import_module("router")


def routes(router: ModuleType, *specs: str) -> Any:
    """A Router with each "METHOD /pattern" registered, its handler being that same string."""
    made = router.Router()
    for spec in specs:
        method, pattern = spec.split(" ")
        made.add(method, pattern, spec)
    return made


def found(router: ModuleType, handler: str, **params: str | int) -> Any:
    return router.Found(handler, params)


# ------------------------------------------------------------------------------------ kinds of segment


def test_static_segments_match_exactly(router: ModuleType) -> None:
    table = routes(router, "GET /", "GET /hello", "GET /hello/world")
    assert table.lookup("GET", "/") == found(router, "GET /")
    assert table.lookup("GET", "/hello") == found(router, "GET /hello")
    assert table.lookup("GET", "/hello/world") == found(router, "GET /hello/world")
    for path in ("/Hello", "/hell", "/helloo", "/hello/world/again", "/world", "//", "/hello//world"):
        assert table.lookup("GET", path) == router.NotFound(), path


def test_a_parameter_is_one_non_empty_segment(router: ModuleType) -> None:
    table = routes(router, "GET /users/{name}")
    assert table.lookup("GET", "/users/ada") == found(router, "GET /users/{name}", name="ada")
    assert table.lookup("GET", "/users/42") == found(router, "GET /users/{name}", name="42")
    for path in ("/users/", "/users", "/users/ada/more", "/users//"):
        assert table.lookup("GET", path) == router.NotFound(), path


def test_an_int_parameter_is_ascii_digits_given_as_an_int(router: ModuleType) -> None:
    table = routes(router, "GET /users/{id:int}")
    assert table.lookup("GET", "/users/42") == found(router, "GET /users/{id:int}", id=42)
    assert table.lookup("GET", "/users/007") == found(router, "GET /users/{id:int}", id=7)
    largest = "9" * 18  # below 2**63
    assert table.lookup("GET", f"/users/{largest}") == found(router, "GET /users/{id:int}", id=int(largest))
    # Not digits to us, though int() takes most of them: signs, underscores, spaces, other scripts' digits,
    # superscripts, an escaped digit ("%31" is "1"), and more than 18 digits.
    for segment in (
        "abc",
        "-1",
        "+1",
        "1_0",
        " 1",
        "1 ",
        "1.0",
        "0x1",
        "١٢",
        "²",
        "%31",
        "1" * 19,
        "9" * 5000,
    ):
        assert table.lookup("GET", f"/users/{segment}") == router.NotFound(), segment


def test_a_typed_parameter_that_does_not_match_is_404_whatever_the_method(router: ModuleType) -> None:
    table = routes(router, "GET /users/{id:int}", "DELETE /users/{id:int}")
    for method in ("GET", "HEAD", "DELETE", "POST", "OPTIONS"):
        assert table.lookup(method, "/users/abc") == router.NotFound(), method
    assert table.lookup("POST", "/users/1") == router.MethodNotAllowed(("DELETE", "GET", "HEAD", "OPTIONS"))


def test_a_catch_all_takes_the_rest_of_the_path(router: ModuleType) -> None:
    table = routes(router, "GET /static/{path:path}")
    handler = "GET /static/{path:path}"
    assert table.lookup("GET", "/static/a") == found(router, handler, path="a")
    assert table.lookup("GET", "/static/css/site.css") == found(router, handler, path="css/site.css")
    assert table.lookup("GET", "/static/dir/") == found(router, handler, path="dir/")
    assert table.lookup("GET", "/static/a//b") == found(router, handler, path="a//b")
    # It starts at a non-empty segment: not "/static" nor "/static/", and its raw value never starts with "/".
    for path in ("/static", "/static/", "/static//etc/passwd", "/statics/a"):
        assert table.lookup("GET", path) == router.NotFound(), path


def test_trailing_slashes_are_strict(router: ModuleType) -> None:
    table = routes(router, "GET /users", "GET /users/{id}", "GET /docs/")
    assert table.lookup("GET", "/users") == found(router, "GET /users")
    assert table.lookup("GET", "/users/") == router.NotFound()  # not /users, nor /users/{id} with id=""
    assert table.lookup("GET", "/users/1/") == router.NotFound()
    assert table.lookup("GET", "/docs/") == found(router, "GET /docs/")
    assert table.lookup("GET", "/docs") == router.NotFound()


def test_paths_that_are_no_paths_are_not_found(router: ModuleType) -> None:
    table = routes(router, "GET /", "OPTIONS /", "GET /{name}", "GET /{rest:path}")
    for method in ("OPTIONS", "GET"):
        assert table.lookup(method, "*") == router.NotFound(), method  # OPTIONS *: answered before routing
    for path in ("", "users", "users/a", "http://example.com/a"):
        assert table.lookup("GET", path) == router.NotFound(), path


# ------------------------------------------------------------------------------- precedence, backtracking

KINDS_BY_PRECEDENCE = ["GET /a/b", "GET /a/{number:int}", "GET /a/{name}", "GET /a/{rest:path}"]


@pytest.mark.parametrize("order", [1, -1], ids=["registered most specific first", "registered last"])
def test_static_beats_int_beats_parameter_beats_catch_all(router: ModuleType, order: int) -> None:
    table = routes(router, *KINDS_BY_PRECEDENCE[::order])
    assert table.lookup("GET", "/a/b") == found(router, "GET /a/b")
    assert table.lookup("GET", "/a/12") == found(router, "GET /a/{number:int}", number=12)
    assert table.lookup("GET", "/a/c") == found(router, "GET /a/{name}", name="c")
    assert table.lookup("GET", "/a/b/c") == found(router, "GET /a/{rest:path}", rest="b/c")


def test_precedence_is_per_segment_from_the_left(router: ModuleType) -> None:
    # At the first segment static wins, even though the other pattern is static further right.
    table = routes(router, "GET /a/{x}", "GET /{y}/b")
    assert table.lookup("GET", "/a/b") == found(router, "GET /a/{x}", x="b")


def test_a_dead_end_backtracks_to_the_next_kind_of_segment(router: ModuleType) -> None:
    table = routes(
        router,
        "GET /users/me",
        "GET /users/{id}/posts",
        "GET /items/{number:int}/a",
        "GET /items/{name}/b",
        "GET /files/{name}/raw",
        "GET /files/{rest:path}",
    )
    # static "me" dead-ends at "posts": back up, and {id} takes "me"
    assert table.lookup("GET", "/users/me/posts") == found(router, "GET /users/{id}/posts", id="me")
    assert table.lookup("GET", "/users/me") == found(router, "GET /users/me")
    # {int} dead-ends at "b": back up to {name}; its captured value is forgotten
    assert table.lookup("GET", "/items/1/b") == found(router, "GET /items/{name}/b", name="1")
    assert table.lookup("GET", "/items/1/a") == found(router, "GET /items/{number:int}/a", number=1)
    # {name} dead-ends: back up to the catch-all
    assert table.lookup("GET", "/files/x/raw") == found(router, "GET /files/{name}/raw", name="x")
    assert table.lookup("GET", "/files/x/cooked") == found(router, "GET /files/{rest:path}", rest="x/cooked")
    # every branch dead-ends
    assert table.lookup("GET", "/users/me/comments") == router.NotFound()
    assert table.lookup("GET", "/items/1/c") == router.NotFound()


def test_a_node_with_routes_of_other_methods_is_no_dead_end(router: ModuleType) -> None:
    """The path picks the resource, then the method its handler: static /users/me has no POST, so POST there
    is 405, although POST /users/{id} would have matched the path."""
    table = routes(router, "GET /users/me", "POST /users/{id}", "GET /n/{id:int}", "PUT /n/{name}")
    assert table.lookup("POST", "/users/me") == router.MethodNotAllowed(("GET", "HEAD", "OPTIONS"))
    assert table.lookup("POST", "/users/ada") == found(router, "POST /users/{id}", id="ada")
    assert table.lookup("PUT", "/n/1") == router.MethodNotAllowed(("GET", "HEAD", "OPTIONS"))
    assert table.lookup("PUT", "/n/x") == found(router, "PUT /n/{name}", name="x")


def test_a_prefix_of_a_pattern_is_no_path(router: ModuleType) -> None:
    table = routes(router, "GET /a/b/c", "GET /a/{x}")
    assert table.lookup("GET", "/a/b") == found(router, "GET /a/{x}", x="b")  # the static node has no route
    assert table.lookup("GET", "/a") == router.NotFound()


def test_deep_paths_do_not_raise(router: ModuleType) -> None:
    table = routes(router, "GET /a/{x}/c", "GET /{rest:path}")
    deep = "/a" * 10_000  # far deeper than Python's recursion limit
    assert table.lookup("GET", deep) == found(router, "GET /{rest:path}", rest=deep[1:])
    assert routes(router, "GET /a/b").lookup("GET", deep) == router.NotFound()


# ------------------------------------------------------------------------------------------------ methods


def test_head_is_served_by_the_get_handler(router: ModuleType) -> None:
    table = routes(router, "GET /page", "GET /other", "HEAD /other", "POST /form")
    assert table.lookup("HEAD", "/page") == found(router, "GET /page")
    assert table.lookup("HEAD", "/other") == found(router, "HEAD /other")  # a HEAD handler of its own wins
    assert table.lookup("HEAD", "/form") == router.MethodNotAllowed(("OPTIONS", "POST"))


def test_405_lists_every_method_the_path_answers(router: ModuleType) -> None:
    table = routes(router, "GET /r", "PUT /r", "DELETE /r", "POST /only-post")
    assert table.lookup("PATCH", "/r") == router.MethodNotAllowed(("DELETE", "GET", "HEAD", "OPTIONS", "PUT"))
    assert table.lookup("get", "/r") == router.MethodNotAllowed(("DELETE", "GET", "HEAD", "OPTIONS", "PUT"))
    assert table.lookup("GET", "/only-post") == router.MethodNotAllowed(("OPTIONS", "POST"))


def test_options_on_a_known_path_answers_allow(router: ModuleType) -> None:
    table = routes(router, "GET /r", "POST /r", "OPTIONS /custom", "GET /custom")
    assert table.lookup("OPTIONS", "/r") == router.Options(("GET", "HEAD", "OPTIONS", "POST"))
    assert table.lookup("OPTIONS", "/custom") == found(router, "OPTIONS /custom")  # its own handler wins
    assert table.lookup("OPTIONS", "/unknown") == router.NotFound()


# ------------------------------------------------------------------------------------- percent-decoding


def test_parameters_are_percent_decoded_once(router: ModuleType) -> None:
    table = routes(router, "GET /u/{name}", "GET /f/{path:path}")
    expected = {
        "J%C3%B6rg": "Jörg",  # UTF-8
        "a%20b": "a b",
        "a+b": "a+b",  # "+" is a space in form data only, not in a path
        "%252e": "%2e",  # double-encoded: decoded once
        "%zz": "%zz",  # not an escape: kept as it is
        "%FF": "\ufffd",  # not UTF-8: the replacement character
    }
    for raw, decoded in expected.items():
        assert table.lookup("GET", f"/u/{raw}") == found(router, "GET /u/{name}", name=decoded), raw
    assert table.lookup("GET", "/f/%2e%2e/a%20b") == found(router, "GET /f/{path:path}", path="../a b")


def test_an_encoded_slash_never_splits_a_segment(router: ModuleType) -> None:
    table = routes(router, "GET /a/{x}", "GET /a/{x}/{y}")
    assert table.lookup("GET", "/a/b%2Fc") == found(router, "GET /a/{x}", x="b/c")
    assert table.lookup("GET", "/a/b%2fc") == found(router, "GET /a/{x}", x="b/c")
    assert table.lookup("GET", "/a/b/c") == found(router, "GET /a/{x}/{y}", x="b", y="c")


def test_static_segments_match_the_raw_text(router: ModuleType) -> None:
    table = routes(router, "GET /hello", "GET /a/b")
    assert table.lookup("GET", "/hell%6F") == router.NotFound()  # %6F is "o": decoded only in parameters
    assert table.lookup("GET", "/a%2Fb") == router.NotFound()


# ------------------------------------------------------------------------------- conflicts, bad patterns


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/a", "/a"),
        ("/a/{x}", "/a/{y}"),
        ("/a/{x:int}/b", "/a/{y:int}/b"),
        ("/s/{p:path}", "/s/{q:path}"),
        ("/{a}/{b}", "/{c}/{d}"),
    ],
)
def test_patterns_matching_the_same_paths_conflict(router: ModuleType, first: str, second: str) -> None:
    table = routes(router, f"GET {first}")
    with pytest.raises(router.RouteError) as raised:
        table.add("GET", second, f"GET {second}")
    assert first in str(raised.value)
    assert second in str(raised.value)
    path = "/" + "/".join("7" if "{" in segment else segment for segment in first[1:].split("/"))
    assert table.lookup("GET", path).handler == f"GET {first}"  # the first registration stands
    table.add("POST", second, f"POST {second}")  # another method: no conflict
    assert table.lookup("POST", path).handler == f"POST {second}"


def test_different_kinds_of_parameter_do_not_conflict(router: ModuleType) -> None:
    table = routes(router, "GET /a/{x}", "GET /a/{x:int}", "GET /a/{x:path}", "GET /a/{x}/", "GET /a/{x}/b")
    assert table.lookup("GET", "/a/1") == found(router, "GET /a/{x:int}", x=1)
    assert table.lookup("GET", "/a/one") == found(router, "GET /a/{x}", x="one")


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "users",
        "/a//b",
        "//",
        "/a/{x}/{x}",
        "/a/{x:float}",
        "/a/{x:path}/b",
        "/a/{x:path}/",
        "/a/b{x}",
        "/a/{x}b",
        "/a/{1x}",
        "/a/{x",
        "/a/{}",
        "/a%20b",
        "/a b",
        "/a?b",
        "/a#b",
        "/caf\u00e9",
    ],
)
def test_malformed_patterns_fail_at_start_up(router: ModuleType, pattern: str) -> None:
    with pytest.raises(router.RouteError, match=re.escape(repr(pattern))):
        router.Router().add("GET", pattern, "handler")


@pytest.mark.parametrize("method", ["", "GET ", "G(ET", "GÉT"])
def test_a_method_must_be_a_token(router: ModuleType, method: str) -> None:
    with pytest.raises(router.RouteError):
        router.Router().add(method, "/", "handler")


# ------------------------------------------------------------------------------------ hypothesis properties
# The oracle: each pattern as one regular expression, tried against the whole path; among the patterns that
# match, the most specific is the one whose kinds of segment, read left to right, sort first (static < int
# < name < path). That is what the router's precedence means, computed without a trie or any backtracking.

KIND_RANK = {"static": 0, "int": 1, "name": 2, "path": 3}
KIND_REGEX = {"int": r"([0-9]{1,18})", "name": r"([^/]+)", "path": r"([^/].*)"}
PARAMETER = re.compile(r"\{(\w+)(?::(int|path))?\}")


def pattern_kinds(pattern: str) -> list[tuple[str, str]]:
    """(kind, name or static text) for each segment."""
    kinds = []
    for segment in pattern[1:].split("/"):
        parameter = PARAMETER.fullmatch(segment)
        if parameter is None:
            kinds.append(("static", segment))
        else:
            kinds.append((parameter.group(2) or "name", parameter.group(1)))
    return kinds


def oracle_match(pattern: str, path: str) -> dict[str, str | int] | None:
    """The decoded parameters if `pattern`, read as a regular expression, matches all of `path`; else None."""
    kinds = pattern_kinds(pattern)
    regex = "/" + "/".join(re.escape(text) if kind == "static" else KIND_REGEX[kind] for kind, text in kinds)
    matched = re.fullmatch(regex, path, re.DOTALL)
    if matched is None:
        return None
    names = [(kind, text) for kind, text in kinds if kind != "static"]
    return {
        name: int(value) if kind == "int" else unquote(value)
        for (kind, name), value in zip(names, matched.groups(), strict=True)
    }


def oracle_lookup(registered: dict[tuple[str, str], str], method: str, path: str) -> tuple[str, Any]:
    """What lookup must answer, as ("found", (handler, params)), ("405", allow), ("options", allow) or
    ("404", None); `registered` maps (method, pattern) to handler."""
    matches = [
        (tuple(KIND_RANK[kind] for kind, _ in pattern_kinds(pattern)), pattern, params)
        for pattern in {pattern for _, pattern in registered}
        if (params := oracle_match(pattern, path)) is not None
    ]
    if not matches:
        return "404", None
    best_ranks = min(ranks for ranks, _, _ in matches)
    at_best = {pattern: params for ranks, pattern, params in matches if ranks == best_ranks}
    methods = {m: (pattern, at_best[pattern]) for m, pattern in registered if pattern in at_best}
    allow = set(methods) | {"OPTIONS"} | ({"HEAD"} if "GET" in methods else set())
    chosen = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
    if chosen is not None:
        pattern, params = chosen
        return "found", (registered[method if method in methods else "GET", pattern], params)
    return ("options" if method == "OPTIONS" else "405"), tuple(sorted(allow))


def as_outcome(router: ModuleType, result: Any) -> tuple[str, Any]:
    if isinstance(result, router.Found):
        return "found", (result.handler, result.params)
    if isinstance(result, router.MethodNotAllowed):
        return "405", result.allow
    if isinstance(result, router.Options):
        return "options", result.allow
    assert isinstance(result, router.NotFound)
    return "404", None


STATIC_TEXTS = ["a", "b", "12"]  # few, so that patterns and paths collide often; "12" is also an int
PATH_SEGMENTS = [*STATIC_TEXTS, "", "7", "x%2Fy", "%41", "ab%20c", "1" * 19]
METHODS = ["GET", "POST", "HEAD", "OPTIONS"]


@st.composite
def patterns(draw: st.DrawFn) -> str:
    count = draw(st.integers(1, 4))
    segments = []
    for index in range(count):
        kinds = ["static", "int", "name", "path"] if index == count - 1 else ["static", "int", "name"]
        kind = draw(st.sampled_from(kinds))
        name = f"p{index}"
        segments.append(
            draw(st.sampled_from(STATIC_TEXTS))
            if kind == "static"
            else ("{" + name + "}" if kind == "name" else "{" + f"{name}:{kind}" + "}")
        )
    trailing_slash = segments[-1].endswith(":path}") is False and draw(st.booleans())
    return "/" + "/".join(segments) + ("/" if trailing_slash else "")


# The `phase` fixture only names a module to import: nothing in it needs resetting between examples.
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(
    registrations=st.lists(st.tuples(st.sampled_from(["GET", "POST", "HEAD"]), patterns()), max_size=12),
    lookups=st.lists(
        st.tuples(
            st.sampled_from([*METHODS, "DELETE"]), st.lists(st.sampled_from(PATH_SEGMENTS), max_size=5)
        ),
        min_size=1,
        max_size=20,
    ),
)
def test_precedence_and_methods_agree_with_the_oracle(
    phase: Phase, registrations: list[tuple[str, str]], lookups: list[tuple[str, list[str]]]
) -> None:
    router = phase.import_module("router")
    table = router.Router()
    registered: dict[tuple[str, str], str] = {}
    shapes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}  # what makes two patterns conflict
    for method, pattern in registrations:
        shape = (
            method,
            tuple((kind, text if kind == "static" else "") for kind, text in pattern_kinds(pattern)),
        )
        if shape in shapes:
            with pytest.raises(router.RouteError, match=re.escape(shapes[shape])):
                table.add(method, pattern, f"{method} {pattern}")
            continue
        table.add(method, pattern, f"{method} {pattern}")
        shapes[shape] = pattern
        registered[method, pattern] = f"{method} {pattern}"
    for method, segments in lookups:
        path = "/" + "/".join(segments)
        assert as_outcome(router, table.lookup(method, path)) == oracle_lookup(registered, method, path), path


@st.composite
def pattern_and_path(draw: st.DrawFn) -> tuple[str, str, dict[str, str | int]]:
    """A pattern, a path it matches, and the parameters that path must give: any text, percent-encoded."""
    text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
    pattern: list[str] = []
    path: list[str] = []
    params: dict[str, str | int] = {}
    count = draw(st.integers(0, 5))
    for index in range(count):
        kind = draw(
            st.sampled_from(
                ["static", "int", "name", "path"] if index == count - 1 else ["static", "int", "name"]
            )
        )
        name = f"p{index}"
        if kind == "static":
            segment = draw(st.text("abcxyz019-._~!$&'()*+,;=:@", min_size=1, max_size=5))
            pattern.append(segment)
            path.append(segment)
        elif kind == "int":
            number = draw(st.integers(0, 10**18 - 1))
            pattern.append("{" + name + ":int}")
            path.append(str(number))
            params[name] = number
        elif kind == "name":
            value = draw(text)
            pattern.append("{" + name + "}")
            path.append(quote(value, safe=""))
            params[name] = value
        else:
            values = draw(st.lists(text, min_size=1, max_size=4))
            pattern.append("{" + name + ":path}")
            path.append("/".join(quote(value, safe="") for value in values))
            params[name] = "/".join(values)
    return "/" + "/".join(pattern), "/" + "/".join(path), params


@SETTINGS
@given(example=pattern_and_path())
def test_every_pattern_matches_the_paths_it_generates(
    phase: Phase, example: tuple[str, str, dict[str, str | int]]
) -> None:
    router = phase.import_module("router")
    pattern, path, params = example
    table = router.Router()
    table.add("GET", pattern, pattern)
    assert table.lookup("GET", path) == router.Found(pattern, params)
    assert table.lookup("HEAD", path) == router.Found(pattern, params)
    assert table.lookup("POST", path) == router.MethodNotAllowed(("GET", "HEAD", "OPTIONS"))


EVERY_KIND = [
    "GET /",
    "GET /a",
    "GET /a/",
    "GET /a/{x:int}",
    "POST /a/{x}",
    "GET /a/{x}/b",
    "GET /s/{rest:path}",
    "GET /{x}/{y}/{z:int}",
]


@SETTINGS
@given(
    method=st.text(max_size=8) | st.sampled_from(METHODS),
    path=st.text() | st.text("/%2Fa1b{}:.", max_size=30).map(lambda tail: "/" + tail),
)
def test_lookups_never_raise(phase: Phase, method: str, path: str) -> None:
    router = phase.import_module("router")
    table = routes(router, *EVERY_KIND)
    result = table.lookup(method, path)
    assert isinstance(result, router.Found | router.NotFound | router.MethodNotAllowed | router.Options)
