"""Operations endpoints from the seed (`/redis/health`, `/redis/clear`) and the orchestrator probes."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy import operations
from proxy.admin_auth import require_admin
from proxy.errors import ClientRequestError, StoreError
from proxy.metrics import exposition
from proxy.state import COLLECTOR, LIMITER, REFUSALS, ROUTES, SETTINGS, STATE, STATS, STATS_KEEPER, STORE

METRICS_USAGE_MAX_AGE = 30.0
log = structlog.get_logger("proxy.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process and its event loop answer. Never touches Redis."""
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: ready to serve (the store may be down: the proxy fails open); 503 once draining."""
    state = request.app[STATE]
    store = request.app[STORE]
    available = getattr(store, "available", True)
    body = {
        "status": "draining" if state.draining else "ready",
        "store": store.backend,
        "store_available": available,
    }
    return web.json_response(body, status=503 if state.draining else 200)


async def redis_health(request: web.Request) -> web.Response:
    """The seed's `GET /redis/health`: 200 with the store's figures, or 503 naming the failure."""
    healthy, body = await operations.health(request.app[STORE])
    body["rate_limits"] = request.app[LIMITER].mode
    return web.json_response(body, status=200 if healthy else 503)


async def redis_stats(request: web.Request) -> web.Response:
    """The seed's `GET /redis/stats`: this process's figures and every replica's, plus the store's."""
    require_admin(request, loopback_without_token=False)
    body = await request.app[STATS_KEEPER].snapshot()
    body["refusals"] = dict(request.app[REFUSALS].counts)
    body["fast_lane_hits"] = request.app[STATS].fast_lane_hits
    body["fast_lane_misses"] = request.app[STATS].fast_lane_misses
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    require_admin(request, loopback_without_token=False)
    with contextlib.suppress(StoreError):  # the gauges keep their last known values
        await request.app[STATS_KEEPER].usage(max_age=METRICS_USAGE_MAX_AGE)
    body = exposition(request.app[COLLECTOR])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def clear_all(request: web.Request) -> web.Response:
    require_admin(request, loopback_without_token=True)
    return await _clear(request, None)


async def clear_pattern(request: web.Request) -> web.Response:
    require_admin(request, loopback_without_token=True)
    return await _clear(request, request.match_info["pattern"])


async def _clear(request: web.Request, pattern: str | None) -> web.Response:
    settings = request.app[SETTINGS]
    try:
        body = await operations.clear(
            request.app[STORE], pattern, namespaces=request.app[ROUTES].namespaces, key_prefix=settings.key_prefix
        )
    except StoreError as exc:
        return web.json_response({"status": "failed", "error": f"Redis connection failed: {exc}"}, status=503)
    return web.json_response(body)


def only(methods: dict[str, Handler]) -> Handler:
    """One handler for a path that answers 405 (with Allow) for methods it does not serve."""
    allowed = ", ".join(sorted(methods))

    async def dispatch(request: web.Request) -> web.StreamResponse:
        handler = methods.get(request.method) or (methods.get("GET") if request.method == "HEAD" else None)
        if handler is None:
            raise ClientRequestError(
                f"method {request.method} is not allowed here; allowed: {allowed}",
                status=405,
                headers={"Allow": allowed},
            )
        return await handler(request)

    return dispatch
