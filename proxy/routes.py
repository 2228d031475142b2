"""The route table: which requests the proxy accepts, where it sends them, how it caches them.

Loaded once at start from a TOML file (`config/routes.toml` by default). A path that matches no
route is a 404 and is never forwarded: the route, never the request, chooses the upstream.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from proxy.errors import ClientRequestError, RouteFileError
from proxy.settings import parse_size

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
DIGEST_KEY = "digest"
# 202 (not done yet) and 206 (a fragment) are 2xx answers that must not stand for the whole resource.
DEFAULT_STATUSES = (200, 201, 203, 204)
DEFAULT_MAX_BODY_BYTES = 8 * 1024**2
DEFAULT_VARY_HEADERS = ()
# The proxy's own endpoints; no route may shadow them.
RESERVED_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/redis"})
RESERVED_PREFIXES = ("/redis/",)
_ROUTE_KEYS = {
    "name", "methods", "path", "paths", "upstream", "upstream_path", "strip_prefix", "ttl", "key",
    "statuses", "max_body_bytes", "cache", "vary_headers", "max_ttl", "openai_checks", "refuse_finish_reasons",
    "stale_while_revalidate", "stale_if_error", "respect_cache_control", "share_entries",
}  # fmt: skip
DEFAULT_REFUSED_FINISH_REASONS = ("length", "content_filter")


@dataclass(frozen=True)
class Route:
    """One entry of the route table. `name` is also the Redis namespace of its entries."""

    name: str
    methods: frozenset[str]
    paths: tuple[str, ...]
    upstream: str
    ttl: int
    key: str = DIGEST_KEY
    upstream_path: str | None = None
    strip_prefix: str = ""
    statuses: frozenset[int] = frozenset(DEFAULT_STATUSES)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    cache: bool = True
    vary_headers: tuple[str, ...] = DEFAULT_VARY_HEADERS
    max_ttl: int = 0  # the most a client may ask for with X-Cache-TTL; 0 means `ttl`
    openai_checks: bool = False
    refuse_finish_reasons: frozenset[str] = frozenset(DEFAULT_REFUSED_FINISH_REASONS)
    stale_while_revalidate: int = 0
    stale_if_error: int = 0
    respect_cache_control: bool = False
    share_entries: bool = True

    @property
    def grace(self) -> int:
        """How long after expiry an entry is kept for stale serving."""
        return max(self.stale_while_revalidate, self.stale_if_error)

    @property
    def ttl_ceiling(self) -> int:
        return self.max_ttl or self.ttl

    @property
    def readable_key(self) -> bool:
        """True when the key is built from path parameters (`artwork_info:{artwork_name}`)."""
        return self.key != DIGEST_KEY

    def upstream_path_for(self, raw_path: str, params: Mapping[str, str]) -> str:
        """The path to request from the upstream, with parameters percent-encoded again."""
        if self.upstream_path is None:
            return raw_path[len(self.strip_prefix) :] if raw_path.startswith(self.strip_prefix) else raw_path
        return _PARAM.sub(lambda m: quote(params[m.group(1)], safe=""), self.upstream_path)


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    template: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    template: str
    route: Route


class RouteTable:
    """Matches `(method, raw path)` to a route; literal paths by dict lookup, templates by regex."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self._literal: dict[str, Route] = {}
        self._patterns: list[_Pattern] = []
        for route in self.routes:
            for path in route.paths:
                if _PARAM.search(path):
                    self._patterns.append(_Pattern(_compile(path), path, route))
                else:
                    self._literal[path] = route

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(route.name for route in self.routes)

    def match(self, method: str, raw_path: str) -> RouteMatch | None:
        """The route for this request, or None when no route has this path.

        Raises `ClientRequestError` (405) when the path exists but not for this method, and
        (400) when a path parameter is not a valid percent-encoded segment.
        """
        found = self._find(raw_path)
        if found is None:
            return None
        route, template, raw_params = found
        if method not in route.methods:
            allowed = ", ".join(sorted(route.methods))
            raise ClientRequestError(
                f"method {method} is not allowed on {route.name}; allowed: {allowed}",
                status=405,
                headers={"Allow": allowed},
            )
        return RouteMatch(route, template, {name: _decode_param(name, value) for name, value in raw_params.items()})

    def methods_for(self, raw_path: str) -> frozenset[str] | None:
        """The methods the route for this path accepts, or None when no route has it."""
        found = self._find(raw_path)
        return None if found is None else found[0].methods

    def _find(self, raw_path: str) -> tuple[Route, str, dict[str, str]] | None:
        route = self._literal.get(raw_path)
        if route is not None:
            return route, raw_path, {}
        for pattern in self._patterns:
            match = pattern.regex.match(raw_path)
            if match:
                return pattern.route, pattern.template, match.groupdict()
        return None


def _compile(template: str) -> re.Pattern[str]:
    pieces: list[str] = []
    position = 0
    for match in _PARAM.finditer(template):
        pieces.append(re.escape(template[position : match.start()]))
        pieces.append(f"(?P<{match.group(1)}>[^/]+)")
        position = match.end()
    pieces.append(re.escape(template[position:]))
    return re.compile("^" + "".join(pieces) + "$")


def _decode_param(name: str, raw: str) -> str:
    try:
        value = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise ClientRequestError(f"path parameter {name} is not valid UTF-8 percent-encoding") from None
    if value in (".", "..") or not value.strip() or not value.isprintable():
        raise ClientRequestError(f"path parameter {name} must be a printable name, not {raw!r}")
    return value


def parse_duration(raw: object) -> float:
    """`7200`, `"2h"`, `"30m"`, `"500ms"` -> seconds."""
    if isinstance(raw, bool):
        raise ValueError('must be a number of seconds or a duration such as "2h"')
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str) and (match := _DURATION.match(raw)):
        value = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError('must be a number of seconds or a duration such as "2h"')
    if not 0 < value < 10 * 365 * 86400:
        raise ValueError("must be a positive duration shorter than ten years")
    return value


def load_route_table(path: Path, *, upstreams: Iterable[str], default_ttl: int) -> RouteTable:
    """Read and validate a route file; raise `RouteFileError` naming the bad field."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RouteFileError(str(path), "file", "does not exist (set PROXY_ROUTES)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RouteFileError(str(path), "file", f"cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RouteFileError(str(path), "file", f"is not valid TOML: {exc}") from None
    return parse_route_table(document, source=str(path), upstreams=upstreams, default_ttl=default_ttl)


def parse_route_table(
    document: Mapping[str, Any], *, source: str, upstreams: Iterable[str], default_ttl: int
) -> RouteTable:
    known_upstreams = set(upstreams)
    defaults = document.get("defaults", {})
    if not isinstance(defaults, dict):
        raise RouteFileError(source, "defaults", "must be a table")
    raw_routes = document.get("route")
    if not isinstance(raw_routes, list) or not raw_routes:
        raise RouteFileError(source, "route", "the file needs at least one [[route]] table")
    unknown_top = set(document) - {"defaults", "route"}
    if unknown_top:
        raise RouteFileError(source, sorted(unknown_top)[0], "unknown top-level table")
    routes: list[Route] = []
    seen_names: set[str] = set()
    seen_paths: dict[str, str] = {}
    for index, raw in enumerate(raw_routes):
        where = f"route[{index}]"
        if not isinstance(raw, dict):
            raise RouteFileError(source, where, "must be a table")
        merged = {**defaults, **raw}
        route = _parse_route(merged, where=where, source=source, upstreams=known_upstreams, default_ttl=default_ttl)
        if route.name in seen_names:
            raise RouteFileError(source, f"{where}.name", f"{route.name!r} is used by another route")
        seen_names.add(route.name)
        for route_path in route.paths:
            shape = _PARAM.sub("{}", route_path)
            if shape in seen_paths:
                raise RouteFileError(
                    source, f"{where}.path", f"{route_path!r} is already routed to {seen_paths[shape]}"
                )
            seen_paths[shape] = route.name
        routes.append(route)
    return RouteTable(routes)


def _parse_route(raw: Mapping[str, Any], *, where: str, source: str, upstreams: set[str], default_ttl: int) -> Route:
    def fail(field_name: str, reason: str) -> RouteFileError:
        return RouteFileError(source, f"{where}.{field_name}", reason)

    unknown = set(raw) - _ROUTE_KEYS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown option (known: {', '.join(sorted(_ROUTE_KEYS))})")

    name = raw.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise fail("name", "must be lower-case letters, digits and underscores, starting with a letter")
    where = f"route {name!r}"

    methods_raw = raw.get("methods", ["GET"])
    if not _is_str_list(methods_raw) or not methods_raw:
        raise fail("methods", "must be a non-empty list of HTTP methods")
    methods = frozenset(method.upper() for method in methods_raw)
    if not methods <= HTTP_METHODS:
        raise fail("methods", f"unknown method {sorted(methods - HTTP_METHODS)[0]!r}")
    if "GET" in methods:
        methods |= {"HEAD"}

    if ("path" in raw) == ("paths" in raw):
        raise fail("path", "give exactly one of path or paths")
    paths_raw = [raw["path"]] if "path" in raw else raw["paths"]
    if not _is_str_list(paths_raw) or not paths_raw:
        raise fail("paths", "must be a non-empty list of paths")
    for route_path in paths_raw:
        _check_path(route_path, fail)

    upstream = raw.get("upstream")
    if not isinstance(upstream, str) or upstream not in upstreams:
        raise fail("upstream", f"{upstream!r} is not a configured upstream ({', '.join(sorted(upstreams))})")

    strip_prefix = raw.get("strip_prefix", "")
    if not isinstance(strip_prefix, str) or (strip_prefix and not strip_prefix.startswith("/")):
        raise fail("strip_prefix", "must be a path prefix starting with /")
    params = {param for route_path in paths_raw for param in _PARAM.findall(route_path)}

    upstream_path = raw.get("upstream_path")
    if upstream_path is not None:
        if not isinstance(upstream_path, str) or not upstream_path.startswith("/"):
            raise fail("upstream_path", "must be a path template starting with /")
        missing = set(_PARAM.findall(upstream_path)) - params
        if missing:
            raise fail("upstream_path", f"uses {{{sorted(missing)[0]}}}, which the path does not capture")

    key = raw.get("key", DIGEST_KEY)
    if not isinstance(key, str) or not key:
        raise fail("key", f'must be {DIGEST_KEY!r} or a template of path parameters such as "{{artwork_name}}"')
    if key != DIGEST_KEY:
        used = _PARAM.findall(key)
        if not used or _PARAM.sub("", key).strip(":"):
            raise fail("key", "a readable key is path parameters joined by ':', such as \"{artwork_name}\"")
        missing = set(used) - params
        if missing:
            raise fail("key", f"uses {{{sorted(missing)[0]}}}, which the path does not capture")

    try:
        ttl = int(parse_duration(raw.get("ttl", default_ttl)))
    except ValueError as exc:
        raise fail("ttl", str(exc)) from None
    if ttl < 1:
        raise fail("ttl", "must be at least one second")

    statuses_raw = raw.get("statuses", list(DEFAULT_STATUSES))
    if not isinstance(statuses_raw, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and 200 <= s <= 599 for s in statuses_raw
    ):
        raise fail("statuses", "must be a list of HTTP status codes")
    if 206 in statuses_raw:
        raise fail("statuses", "206 (a partial response) cannot be stored as the whole answer")

    max_body_raw = raw.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)
    try:
        max_body = max_body_raw if isinstance(max_body_raw, int) and max_body_raw > 0 else parse_size(str(max_body_raw))
    except ValueError as exc:
        raise fail("max_body_bytes", str(exc)) from None

    cache = raw.get("cache", True)
    if not isinstance(cache, bool):
        raise fail("cache", "must be true or false")

    vary = raw.get("vary_headers", list(DEFAULT_VARY_HEADERS))
    if not _is_str_list(vary):
        raise fail("vary_headers", "must be a list of header names")
    if any(h.lower() in ("authorization", "cookie") for h in vary):
        raise fail("vary_headers", "credentials are handled by the key itself; do not list them")

    try:
        max_ttl = int(parse_duration(raw["max_ttl"])) if "max_ttl" in raw else 0
    except ValueError as exc:
        raise fail("max_ttl", str(exc)) from None

    windows = {}
    for window in ("stale_while_revalidate", "stale_if_error"):
        try:
            windows[window] = int(parse_duration(raw[window])) if raw.get(window) else 0
        except ValueError as exc:
            raise fail(window, str(exc)) from None

    flags = {}
    for flag, default in (("openai_checks", False), ("respect_cache_control", False), ("share_entries", True)):
        flags[flag] = raw.get(flag, default)
        if not isinstance(flags[flag], bool):
            raise fail(flag, "must be true or false")
    finish_reasons = raw.get("refuse_finish_reasons", list(DEFAULT_REFUSED_FINISH_REASONS))
    if not isinstance(finish_reasons, list) or not all(isinstance(item, str) for item in finish_reasons):
        raise fail("refuse_finish_reasons", 'must be a list of finish reasons such as "length"')

    return Route(
        name=name,
        methods=methods,
        paths=tuple(paths_raw),
        upstream=upstream,
        ttl=ttl,
        key=key,
        upstream_path=upstream_path,
        strip_prefix=strip_prefix,
        statuses=frozenset(statuses_raw),
        max_body_bytes=max_body,
        cache=cache,
        vary_headers=tuple(sorted(h.lower() for h in vary)),
        max_ttl=max_ttl,
        openai_checks=flags["openai_checks"],
        refuse_finish_reasons=frozenset(finish_reasons),
        stale_while_revalidate=windows["stale_while_revalidate"],
        stale_if_error=windows["stale_if_error"],
        respect_cache_control=flags["respect_cache_control"],
        share_entries=flags["share_entries"],
    )


def _check_path(route_path: str, fail: Any) -> None:
    if route_path.startswith(RESERVED_PREFIXES) or route_path in RESERVED_PATHS:
        raise fail("path", f"{route_path!r} is reserved for the proxy's own endpoints")
    if not route_path.startswith("/") or "//" in route_path or "?" in route_path or "#" in route_path:
        raise fail("path", f"{route_path!r} must be an absolute path without query or fragment")
    segments = route_path.split("/")
    if any(segment in (".", "..") for segment in segments):
        raise fail("path", f"{route_path!r} must not contain . or .. segments")
    stripped = _PARAM.sub("", route_path)
    if "{" in stripped or "}" in stripped:
        raise fail("path", f"{route_path!r} has a malformed {{parameter}}")
    for segment in segments:
        if _PARAM.search(segment) and not _PARAM.fullmatch(segment):
            raise fail("path", f"{route_path!r}: a parameter must be a whole path segment")


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) and item for item in value)
