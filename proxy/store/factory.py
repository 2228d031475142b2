"""Choosing and opening the store from settings, including the embedded default."""

from __future__ import annotations

import asyncio

import structlog

from proxy.constants import INTERNAL_NAMESPACE
from proxy.coordination import Coordinator, RedisCoordinator
from proxy.pubsub import Subscription
from proxy.settings import MEMORY_URL, Settings, redact_url
from proxy.store.base import Store
from proxy.store.failopen import FailOpenStore
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from proxy.store.redis_clients import RedisClient
from proxy.store.tiered import TieredStore
from proxy.store.tinylfu import TinyLfuCache

LOCAL_REDIS_URL = "redis://localhost:6379/0"
log = structlog.get_logger("proxy.store")


async def local_redis_answers(host: str = "127.0.0.1", port: int = 6379, wait: float = 0.3) -> bool:
    """True when something on host:port answers PING like a Redis server."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.readline(), wait)
        # +PONG, or -NOAUTH when it wants a password: either way a Redis is there.
        return reply.startswith((b"+PONG", b"-NOAUTH", b"-ERR"))
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def resolve_redis_url(settings: Settings) -> str:
    """The configured URL; or, with no Redis variable set, local Redis if it answers, else memory."""
    if settings.redis_url is not None:
        return settings.redis_url
    if await local_redis_answers():
        log.info("no Redis variable set; using the Redis that answers on localhost:6379")
        return LOCAL_REDIS_URL
    log.warning(
        "no Redis variable set and none answers on localhost:6379: using the embedded in-process store "
        "(entries are lost on restart and not shared between replicas)"
    )
    return MEMORY_URL


def redis_store_of(store: Store) -> RedisStore | None:
    """The Redis store under a store's first tier and fail-open wrapper, or None for the embedded store."""
    if isinstance(store, TieredStore):
        store = store.second
    inner = getattr(store, "inner", store)
    return inner if isinstance(inner, RedisStore) else None


def redis_client_of(store: Store) -> RedisClient | None:
    """The Redis client behind a store, or None for the embedded store."""
    redis_store = redis_store_of(store)
    return None if redis_store is None else redis_store.client


def tier_invalidation_for(store: Store, settings: Settings) -> Subscription | None:
    """Clears on any replica empty the matching first-tier entries of every replica."""
    client = redis_client_of(store)
    if not isinstance(store, TieredStore) or client is None:
        return None
    tiered = store

    def invalidate(pattern: str) -> None:
        removed = tiered.invalidate_locally(pattern)
        log.debug("first tier cleared by another replica", pattern=pattern, removed=removed)

    subscription = Subscription(client, f"{settings.key_prefix}{INTERNAL_NAMESPACE}:invalidate", invalidate)
    store.announce_clears_with(subscription.publish)
    subscription.ensure_running()
    return subscription


def coordinator_for(store: Store, settings: Settings) -> Coordinator:
    """Cross-replica coalescing through the store's Redis; a no-op for the embedded store."""
    redis_store = redis_store_of(store)
    if redis_store is not None:
        return RedisCoordinator(
            redis_store.client,
            lane=redis_store.lane,
            key_prefix=settings.key_prefix,
            lock_ttl=settings.coalesce_lock_ttl,
            wait=settings.coalesce_wait,
            command_timeout=2 * settings.redis_timeout,
        )
    return Coordinator()


def open_store(url: str, settings: Settings) -> Store:
    """The store for a resolved URL, wrapped so that its failures never fail a request."""
    if url == MEMORY_URL:
        return FailOpenStore(MemoryStore(settings.memory_max_bytes))
    shared = FailOpenStore(
        RedisStore.from_url(url, timeout=settings.redis_timeout, max_connections=settings.redis_max_connections)
    )
    log.info("using Redis", url=redact_url(url), tier1_max_bytes=settings.tier1_max_bytes)
    if not settings.tier1_max_bytes:
        return shared
    return TieredStore(TinyLfuCache(settings.tier1_max_bytes), shared, max_ttl=settings.tier1_max_ttl)
