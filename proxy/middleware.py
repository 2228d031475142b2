"""The HTTP edge: request id, one canonical log line per request, every error as JSON."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.constants import BYPASS, MISS, REFRESH, REQUEST_ID
from proxy.cors import CorsPolicy
from proxy.errors import ClientRequestError, UpstreamError
from proxy.logs import access_line
from proxy.refusals import CORS_ORIGIN, CORS_PREFLIGHT, Refusals
from proxy.stats import Stats
from proxy.usage import Usage

UPSTREAM_OUTCOMES = frozenset({MISS, REFRESH, BYPASS})
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
log = structlog.get_logger("proxy.request")


@dataclass(slots=True)
class RequestLog:
    """Fields the handlers fill in for the canonical log line."""

    request_id: str
    route: str | None = None
    cache: str | None = None
    key_digest: str | None = None
    key: str | None = None  # the cache key itself: counted per key on hits (never logged)
    upstream_ms: float | None = None
    error: str | None = None
    usage: Usage | None = None
    client: str | None = None
    debug: dict[str, str] = field(default_factory=dict)


REQUEST_LOG = web.RequestKey("request_log", RequestLog)


def request_log(request: web.Request) -> RequestLog:
    return request[REQUEST_LOG]


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    502: "upstream_error",
    503: "unavailable_error",
    504: "timeout_error",
}


def json_error(status: int, message: str, request_id: str, headers: dict[str, str] | None = None) -> web.Response:
    """An error in the OpenAI shape (`error.message`), so the SDKs show the message as it is."""
    return web.json_response(error_body(status, message, request_id), status=status, headers=headers)


def error_body(status: int, message: str, request_id: str) -> dict[str, Any]:
    """The JSON body of an error: aiohttp's path (`json_error`) and the fast lane's."""
    return {
        "error": {"message": message, "type": _ERROR_TYPES.get(status, "proxy_error"), "code": status},
        "status": status,
        "request_id": request_id,
    }


def edge_wrapper(
    *,
    access_log: bool,
    stats: Stats,
    cors: CorsPolicy,
    methods_for: Callable[[str], frozenset[str] | None],
    refusals: Refusals,
) -> Callable[[Handler], Handler]:
    """The edge every handler is wrapped in: request id, CORS, errors as JSON, counters and the
    canonical log line.

    A wrapper around each route's handler rather than an aiohttp middleware: an application
    without middlewares skips aiohttp's middleware chain and its current-app bookkeeping, about
    a tenth of what a cache hit costs. Every path has a route (the proxy's own catch-all), so
    every request passes through here."""

    def wrap(handler: Handler) -> Handler:
        async def edged(request: web.Request) -> web.StreamResponse:
            return await edge(request, handler)

        return edged

    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request_id_for(request.headers.get(REQUEST_ID))
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        record = RequestLog(request_id)
        request[REQUEST_LOG] = record
        started = time.perf_counter()
        response: web.StreamResponse
        try:
            origin = request.headers.get("Origin")
            preflight = None if origin is None else cors_gate(request, origin, cors, methods_for, refusals)
            response = preflight if preflight is not None else await handler(request)
        except ClientRequestError as exc:
            record.error = str(exc)
            response = json_error(exc.status, str(exc), request_id, exc.headers)
        except UpstreamError as exc:
            record.error = str(exc)
            response = json_error(exc.status, str(exc), request_id)
        except web.HTTPException as exc:
            record.error = exc.reason
            headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
            response = json_error(exc.status, _http_message(exc), request_id, headers)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error", path=request.path)
            record.error = "internal error"
            response = json_error(500, "internal error in the proxy; see its log for this request id", request_id)
        if not response.prepared:
            response.headers[REQUEST_ID] = request_id
        close_request(
            stats,
            record,
            access_log=access_log,
            method=request.method,
            path=request.path,
            status=response.status,
            elapsed=time.perf_counter() - started,
        )
        return response

    return wrap


def request_id_for(incoming: str | None) -> str:
    """The client's own `X-Request-Id` when it is a safe one, else a new id."""
    return incoming if incoming is not None and _SAFE_REQUEST_ID.match(incoming) else next_request_id()


def close_request(
    stats: Stats, record: RequestLog, *, access_log: bool, method: str, path: str, status: int, elapsed: float
) -> None:
    """Count a finished request and write its canonical line: aiohttp's path and the fast lane's."""
    if record.route is not None and record.cache is not None:
        stats.record(record.route, record.cache, elapsed, usage=record.usage, key=record.key)
        if record.upstream_ms is not None and record.cache in UPSTREAM_OUTCOMES:
            stats.record_upstream(record.route, record.upstream_ms / 1000)
    if access_log:
        access_line(
            {
                "request_id": record.request_id,
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "route": record.route,
                "cache": record.cache,
                "upstream_ms": None if record.upstream_ms is None else round(record.upstream_ms, 3),
                "key_digest": record.key_digest,
                "error": record.error,
            }
        )


class _RequestIds:
    """Request ids for requests that bring none: 16 random hex digits per process, then a counter.

    As unique as a uuid4 across processes and restarts (the prefix is drawn again in each forked
    worker), for a fraction of its cost on every request."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


next_request_id = _RequestIds()
os.register_at_fork(after_in_child=next_request_id.reseed)


def _http_message(exc: web.HTTPException) -> str:
    if exc.status == 405:
        return f"method not allowed; allowed: {exc.headers.get('Allow', '')}"
    if exc.status == 413:
        return "request body is too large"
    return exc.reason


CORS_ORIGIN_KEY = web.RequestKey("cors_origin", str)


def cors_gate(
    request: web.Request,
    origin: str,
    policy: CorsPolicy,
    methods_for: Callable[[str], frozenset[str] | None],
    refusals: Refusals,
) -> web.Response | None:
    """For a request with an `Origin`: the answer to a preflight, a refusal (raised) for an origin
    that is not allowed, or None to go on (marked for CORS headers when cross-origin)."""
    if origin == f"{request.scheme}://{request.host}":
        return None  # not a cross-origin request
    if not policy.allows(origin):
        refusals.count(CORS_ORIGIN)
        raise ClientRequestError(f"origin {origin} is not allowed (see PROXY_CORS_ORIGINS)", status=403)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        methods = methods_for(request.rel_url.raw_path)
        if methods is None:
            raise ClientRequestError(f"no route for {request.path}", status=404)
        wanted = request.headers["Access-Control-Request-Method"].upper()
        headers = policy.preflight_headers(origin, methods, request.headers.get("Access-Control-Request-Headers", ""))
        if wanted not in methods or headers is None:
            refusals.count(CORS_PREFLIGHT)
            raise ClientRequestError(f"preflight refused: {wanted} or its headers are not allowed here", status=403)
        return web.Response(status=204, headers=headers)
    request[CORS_ORIGIN_KEY] = origin
    return None


def cors_headers_hook(policy: CorsPolicy) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An `on_response_prepare` hook: CORS headers on every answer to an allowed origin, streams too."""

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.get(CORS_ORIGIN_KEY)
        if origin is not None:
            policy.add_response_headers(response.headers, origin)

    return add_headers
