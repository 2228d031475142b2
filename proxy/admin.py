"""Operations endpoints from the seed (`/redis/health`, `/redis/clear`) and the orchestrator probes."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from proxy.clearing import clear_patterns
from proxy.errors import ClientRequestError, StoreError
from proxy.state import ROUTES, SETTINGS, STATE, STORE

HEALTH_TIMEOUT = 1.0
log = structlog.get_logger("proxy.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def require_admin(request: web.Request, *, loopback_without_token: bool) -> None:
    """With PROXY_ADMIN_TOKEN set, demand `Authorization: Bearer <token>` (401); without it,
    either allow everyone or, for destructive calls, only loopback clients (403)."""
    token = request.app[SETTINGS].admin_token
    if token:
        supplied = request.headers.get("Authorization", "")
        scheme, _, credential = supplied.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), token.encode()):
            raise ClientRequestError(
                "admin endpoint: send Authorization: Bearer <PROXY_ADMIN_TOKEN>",
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="artstory-proxy admin"'},
            )
        return
    if loopback_without_token and not is_loopback(request.remote):
        raise ClientRequestError(
            "admin endpoint: only loopback clients may call it while PROXY_ADMIN_TOKEN is unset", status=403
        )


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
    store = request.app[STORE]
    ping = asyncio.ensure_future(store.ping())
    try:
        # Shielded: a slow Redis command is never cancelled halfway; it ends on its own timeout.
        info = await asyncio.wait_for(asyncio.shield(ping), HEALTH_TIMEOUT)
    except (StoreError, TimeoutError) as exc:
        ping.add_done_callback(_consume_result)
        reason = str(exc) if isinstance(exc, StoreError) else f"no answer within {HEALTH_TIMEOUT:g} s"
        return web.json_response(
            {"status": "unhealthy", "store": store.backend, "error": f"Redis connection failed: {reason}"},
            status=503,
        )
    return web.json_response(
        {"status": "healthy", "store": info.backend, "ping_ms": info.round_trip_ms, **info.details}
    )


async def clear_all(request: web.Request) -> web.Response:
    require_admin(request, loopback_without_token=True)
    return await _clear(request, None)


async def clear_pattern(request: web.Request) -> web.Response:
    require_admin(request, loopback_without_token=True)
    return await _clear(request, request.match_info["pattern"])


async def _clear(request: web.Request, pattern: str | None) -> web.Response:
    settings = request.app[SETTINGS]
    patterns = clear_patterns(pattern, request.app[ROUTES].namespaces, settings.key_prefix)
    store = request.app[STORE]
    removed = 0
    try:
        for store_pattern in patterns:
            removed += await store.delete_matching(store_pattern)
    except StoreError as exc:
        return web.json_response(
            {"status": "failed", "error": f"Redis connection failed: {exc}", "removed": removed}, status=503
        )
    log.info("cache cleared", pattern=pattern or "*", removed=removed)
    return web.json_response({"status": "cleared", "pattern": pattern or "*", "removed": removed})


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


def _consume_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
