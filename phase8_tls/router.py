"""A segment-trie router, pure (strings in, a handler and its parameters out): no sockets, no HTTP parsing.

Theory of operation
-------------------
A route is a method, a pattern and a handler: `router.add("GET", "/users/{id:int}", show_user)`. A pattern is
"/" and segments separated by "/"; each segment is one of
    users          static: matches exactly this text of the request path, still percent-encoded
    {name}         a parameter: any one non-empty segment
    {name:int}     a typed parameter: one segment of 1 to 18 ASCII digits, given to the handler as an int
    {name:path}    a catch-all, last in the pattern only: the rest of the path, "/"s included, from a
                   non-empty segment on
`add` compiles each pattern into a trie at start-up, one node per segment, one edge per kind of segment
(one per static text, one for {int}, one for {name}, one for {path}). A lookup splits the path on "/" and
walks down the trie one segment at a time, so its cost grows with the depth of the path, not with the number
of routes: that is the point of a trie over a list of regular expressions tried in turn (bench/router_micro.py
measures both, and a dict of exact paths, which is what wins when every route is static). A path that equals
a pattern with no parameter ("/", "/json") skips the walk: a dict of those gives the node it would reach.

Precedence is fixed, and decided per segment: a static edge first, then {int}, then {name}, then {path}.
The walk is a depth-first search: if the more specific edge leads to a dead end deeper down (no route of any
method ends where the path does), it backs up and tries the next edge. So with `/users/me` and
`/users/{id}/posts`, "/users/me/posts" is found through {id} with id="me". The trie is a tree, so a lookup
reaches each node at most once: backtracking costs at most the size of the trie, never more, and nothing when
no branch dead-ends.

The path alone chooses the route's node (the resource); the method then chooses a handler there. A node that
the path reaches but that has no handler for the method answers 405 with the methods it has, even if another
pattern further down the order would have one: with `GET /users/me` and `POST /users/{id}`,
"POST /users/me" is 405 (Allow: GET, HEAD, OPTIONS). One path, one resource, one Allow list.

Two patterns conflict when they reach the same node with the same method: they match exactly the same paths,
and no precedence could choose between them (`/a/{x}` and `/a/{y}`). `add` raises RouteError naming both.
`{x}` and `{x:int}` do not conflict: they are different edges, and {int}, the narrower, is tried first.

Percent-escapes (RFC 3986 §2.1) are decoded after a match, inside captured values only, once: a static
segment is compared with the raw text, and a segment is cut at the raw "/" only, so "/files/a%2Fb" is two
segments and {name} captures "a/b". The tradeoff accepted: routes are matched on the path as the client
encoded it, so a static pattern may not contain "%" (it would match one spelling of the escape only), and a
handler must treat captured values as untrusted text (app.py checks a file path after decoding).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import unquote

H = TypeVar("H")  # the handler's type: the router only stores it and hands it back


# --8<-- [start:results]
@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs twice as much, once per request
class Found(Generic[H]):
    """The path and method have a handler (a HEAD request gets the GET handler: leave the body out)."""

    handler: H
    params: dict[str, str | int]  # by parameter name: decoded text, or an int for {name:int}


@dataclass(frozen=True, slots=True)
class NotFound:
    """No route matches the path, whatever the method: 404."""


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    """The path matches, the method has no handler there: 405, with `Allow` (RFC 9110 §15.5.6)."""

    allow: tuple[str, ...]  # the methods the path answers, sorted: OPTIONS always, HEAD wherever GET is


@dataclass(frozen=True, slots=True)
class Options:
    """OPTIONS on a path that matches and has no OPTIONS handler: 204 with `Allow` (RFC 9110 §9.3.7)."""

    allow: tuple[str, ...]


Match = Found[H] | NotFound | MethodNotAllowed | Options
NOT_FOUND = NotFound()  # one instance is enough: it holds nothing


class RouteError(ValueError):
    """A pattern that is malformed, or that conflicts with one registered before; raised by `add`."""


# --8<-- [end:results]

# --8<-- [start:grammar]
# RFC 9110 §9.1:  method = token  (case-sensitive);  §5.6.2:  token = 1*tchar
METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 3986 §3.3:  segment = *pchar;  pchar = unreserved / pct-encoded / sub-delims / ":" / "@"
#   unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~";  sub-delims = "!" / "$" / "&" / "'" / "(" / ")"
#   / "*" / "+" / "," / ";" / "="
# minus pct-encoded: a static segment is matched unencoded (see the module docstring).
STATIC_SEGMENT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@]*")
PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(int|path))?\}")
# 18 digits stay below 2**63, which a database id column holds; int() of more than 4300 digits would even
# raise (sys.get_int_max_str_digits), and a lookup must never raise.
MAX_INT_DIGITS = 18
# The kinds of segment, hence of edge in the trie, in the order a lookup tries them.
STATIC, INTEGER, TEXT, CATCH_ALL = "static", "int", "text", "path"
# --8<-- [end:grammar]


@dataclass(frozen=True, slots=True)
class Route(Generic[H]):
    """What `add` stored for one method at the node where its pattern ends."""

    pattern: str
    handler: H
    # (name, decode) for each parameter, in the order the lookup captures their raw values: decode is `int`
    # for {name:int} (digits need no escape), urllib's `unquote` for the others.
    parameters: tuple[tuple[str, Callable[[str], str | int]], ...]


class Node(Generic[H]):
    """One segment position in the trie: where each kind of next segment leads, and the routes ending here."""

    __slots__ = ("allow", "catch_all", "integer", "routes", "static", "text")

    def __init__(self) -> None:
        self.static: dict[str, Node[H]] = {}  # raw segment text -> node
        self.integer: Node[H] | None = None  # a {name:int} segment
        self.text: Node[H] | None = None  # a {name} segment
        self.catch_all: Node[H] | None = None  # a {name:path}: the rest of the path, so a leaf
        self.routes: dict[str, Route[H]] = {}  # method -> the route whose pattern ends here
        self.allow: tuple[str, ...] = ()  # what Allow lists for this node, kept up to date by add()

    def child(self, kind: str, text: str) -> Node[H]:
        """The node after a segment of `kind` (and of `text`, if STATIC), made if it is new."""
        if kind == STATIC:
            return self.static.setdefault(text, Node())
        if kind == INTEGER:
            self.integer = self.integer or Node()
            return self.integer
        if kind == TEXT:
            self.text = self.text or Node()
            return self.text
        self.catch_all = self.catch_all or Node()
        return self.catch_all


class Router(Generic[H]):
    """Routes by method and path; add every route at start-up, then call lookup() for each request."""

    def __init__(self) -> None:
        self._root: Node[H] = Node()
        # Paths that equal a pattern with no parameter ("/", "/json"), to the node the walk would reach:
        # static beats everything at every segment, so one dict lookup gives the same node as the walk.
        self._exact: dict[str, Node[H]] = {}

    # --8<-- [start:add]
    def add(self, method: str, pattern: str, handler: H) -> None:
        """Register `handler` for `method` on the paths `pattern` matches; raises RouteError if the pattern is
        malformed or matches the same paths as one already registered for `method` (the router is then
        unchanged)."""
        if METHOD.fullmatch(method) is None:
            raise RouteError(f"{method!r} is not an HTTP method (RFC 9110 §9.1: a token)")
        edges, parameters = compile_pattern(pattern)  # before any change: a bad pattern leaves no trace
        node = self._root
        for kind, text in edges:
            node = node.child(kind, text)
        existing = node.routes.get(method)
        if existing is not None:
            raise RouteError(
                f"{method} {pattern} conflicts with {method} {existing.pattern}: both match the same paths"
            )
        node.routes[method] = Route(pattern, handler, parameters)
        node.allow = allowed_methods(node.routes)
        if not parameters:
            self._exact[pattern] = node

    # --8<-- [end:add]

    # --8<-- [start:lookup]
    def lookup(self, method: str, path: str) -> Match[H]:
        """Found, MethodNotAllowed, Options (for OPTIONS with no handler of its own) or NotFound, for a
        request's path (its query removed); never raises. "*" (OPTIONS *) and any path not starting with "/"
        are NotFound: the router routes paths, and a server that answers OPTIONS * does so before routing."""
        captured: list[str] = []
        node = self._exact.get(path)
        if node is None:
            if not path.startswith("/"):
                return NOT_FOUND
            node = match_segments(self._root, path.split("/"), 1, captured)  # [0]: the "" before the "/"
            if node is None:
                return NOT_FOUND
        route = node.routes.get(method)
        if route is None:
            if method == "HEAD":  # RFC 9110 §9.3.2: HEAD is GET without the content
                route = node.routes.get("GET")
            elif method == "OPTIONS":
                return Options(node.allow)
            if route is None:
                return MethodNotAllowed(node.allow)
        if not route.parameters:
            return Found(route.handler, {})
        # Decoded only now, once, from the values of the one branch that matched. (A loop, not a dict
        # comprehension: before Python 3.12 a comprehension is a function call of its own.)
        params: dict[str, str | int] = {}
        for (name, decode), value in zip(route.parameters, captured, strict=True):
            params[name] = decode(value)
        return Found(route.handler, params)

    # --8<-- [end:lookup]


# --8<-- [start:compile_pattern]
def compile_pattern(
    pattern: str,
) -> tuple[list[tuple[str, str]], tuple[tuple[str, Callable[[str], str | int]], ...]]:
    """A pattern -> (its edges, one (kind, text) per segment; its parameters, as Route holds them); raises
    RouteError if it is malformed."""
    if not pattern.startswith("/"):
        raise RouteError(f"pattern {pattern!r} does not start with '/'")
    segments = pattern[1:].split("/")
    last = len(segments) - 1
    edges: list[tuple[str, str]] = []
    parameters: list[tuple[str, Callable[[str], str | int]]] = []
    for index, segment in enumerate(segments):
        parameter = PARAMETER.fullmatch(segment)
        if parameter is None:
            if STATIC_SEGMENT.fullmatch(segment) is None:
                raise RouteError(f"pattern {pattern!r}: {segment!r} is neither a parameter nor plain text")
            if segment == "" and index < last:  # "" last is a trailing slash, a segment of its own
                raise RouteError(f"pattern {pattern!r} has an empty segment ('//')")
            edges.append((STATIC, segment))
            continue
        name, kind = parameter.group(1, 2)
        if any(name == known for known, _ in parameters):
            raise RouteError(f"pattern {pattern!r} names the parameter {name!r} twice")
        if kind == CATCH_ALL and index < last:
            raise RouteError(f"pattern {pattern!r}: the catch-all {segment} must be the last segment")
        edges.append((kind or TEXT, ""))
        parameters.append((name, int if kind == INTEGER else unquote))
    return edges, tuple(parameters)


# --8<-- [end:compile_pattern]


# --8<-- [start:match_segments]
def match_segments(  # noqa: PLR0911 (a return for each edge that can end the search)
    node: Node[H], segments: list[str], index: int, captured: list[str]
) -> Node[H] | None:
    """The node where the path's `segments[index:]` end, trying edges in precedence order and backing up
    from dead ends; None if there is none. Appends the raw values of the parameters passed to `captured`."""
    if index == len(segments):
        return node if node.routes else None  # a node with no routes is a prefix of patterns, not a path
    segment = segments[index]
    child = node.static.get(segment)
    if child is not None and (found := match_segments(child, segments, index + 1, captured)) is not None:
        return found
    if not segment:  # parameters match non-empty segments only: "/users/" is not "/users/{id}"
        return None
    # isascii() first: str.isdigit() alone would take "²" and the digits of other scripts.
    if (
        node.integer is not None
        and len(segment) <= MAX_INT_DIGITS
        and segment.isascii()
        and segment.isdigit()
    ):
        captured.append(segment)
        if (found := match_segments(node.integer, segments, index + 1, captured)) is not None:
            return found
        captured.pop()
    if node.text is not None:
        captured.append(segment)
        if (found := match_segments(node.text, segments, index + 1, captured)) is not None:
            return found
        captured.pop()
    if node.catch_all is not None:
        captured.append("/".join(segments[index:]))
        return node.catch_all
    return None


# --8<-- [end:match_segments]


def allowed_methods(routes: dict[str, Route[H]]) -> tuple[str, ...]:
    """The Allow list of a node with these routes: their methods, HEAD with GET, and OPTIONS, sorted."""
    methods = set(routes) | {"OPTIONS"}
    if "GET" in methods:
        methods.add("HEAD")
    return tuple(sorted(methods))
