"""Operations shared by the HTTP endpoints and the command line: health and clearing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import structlog

from proxy.clearing import clear_patterns
from proxy.errors import StoreError
from proxy.store.base import Store

HEALTH_TIMEOUT = 1.0
log = structlog.get_logger("proxy.operations")


async def health(store: Store, *, within: float = HEALTH_TIMEOUT) -> tuple[bool, dict[str, Any]]:
    """(healthy, body) for `/redis/health`; answers within `within` seconds even when Redis hangs."""
    ping = asyncio.ensure_future(store.ping())
    try:
        # Shielded: a slow Redis command is never cancelled halfway; it ends on its own timeout.
        info = await asyncio.wait_for(asyncio.shield(ping), within)
    except (StoreError, TimeoutError) as exc:
        ping.add_done_callback(_consume_result)
        reason = str(exc) if isinstance(exc, StoreError) else f"no answer within {within:g} s"
        return False, {"status": "unhealthy", "store": store.backend, "error": f"Redis connection failed: {reason}"}
    body = {"status": "healthy", "store": info.backend, "ping_ms": info.round_trip_ms, **info.details}
    warnings = eviction_warnings(info.details) if info.backend == "redis" else []
    if warnings:
        body["warnings"] = warnings
    return True, body


def eviction_warnings(details: dict[str, Any]) -> list[str]:
    """What is wrong with a Redis used as a cache: no memory bound, or a policy that will not evict."""
    warnings = []
    if details.get("maxmemory") == 0:
        warnings.append("maxmemory is 0: Redis grows until the machine runs out of memory (see config/redis.conf)")
    policy = str(details.get("maxmemory_policy") or "")
    if policy == "noeviction":
        warnings.append("maxmemory-policy is noeviction: once full, Redis refuses writes instead of evicting")
    elif policy.startswith("volatile-"):
        warnings.append(f"maxmemory-policy is {policy}: only keys with a TTL are evicted; allkeys-lfu suits a cache")
    return warnings


async def clear(store: Store, pattern: str | None, *, namespaces: Iterable[str], key_prefix: str) -> dict[str, Any]:
    """Delete the keys of one pattern (or of every namespace); raises `ClientRequestError` for a
    pattern outside the namespaces and `StoreError` when the store fails."""
    removed = 0
    for store_pattern in clear_patterns(pattern, namespaces, key_prefix):
        removed += await store.delete_matching(store_pattern)
    log.info("cache cleared", pattern=pattern or "*", removed=removed)
    return {"status": "cleared", "pattern": pattern or "*", "removed": removed}


def _consume_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
