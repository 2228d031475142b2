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
    return True, {"status": "healthy", "store": info.backend, "ping_ms": info.round_trip_ms, **info.details}


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
