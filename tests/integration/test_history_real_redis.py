"""The statistics history on the real redis-server: two replicas' minutes merge, keys expire."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.history import DAY_KEPT, floor_to
from proxy.state import STATS_KEEPER
from proxy.store.base import CounterWrite, Store
from proxy.store.failopen import FailOpenStore
from proxy.store.redis import RedisStore
from tests.conftest import REDIS_TEST_URL, ProxyClientFactory, chat_body

pytestmark = pytest.mark.redis


@pytest.fixture
async def second_store() -> AsyncIterator[Store]:
    """Another replica's own connection pool to the same Redis (the keys go with `real_redis_store`'s)."""
    store = RedisStore.from_url(REDIS_TEST_URL, timeout=1.0, max_connections=4)
    yield FailOpenStore(store)
    await store.close()


async def traffic(proxy: TestClient[web.Request, web.Application], artworks: tuple[str, ...]) -> None:
    for _ in range(2):
        await (await proxy.post("/v1/chat/completions", json=chat_body())).read()
        for artwork in artworks:
            await (await proxy.get(f"/artworks/{artwork}")).read()


async def test_two_replicas_history_merges_on_real_redis(
    real_redis_store: Store,  # the stores before the proxies: they are closed after them
    second_store: Store,
    make_proxy: ProxyClientFactory,
    real_redis: redis.Redis,
    key_prefix: str,
) -> None:
    first = await make_proxy(store=real_redis_store, PROXY_KEY_PREFIX=key_prefix, PROXY_STATS_RETENTION="2h")
    second = await make_proxy(store=second_store, PROXY_KEY_PREFIX=key_prefix, PROXY_STATS_RETENTION="2h")
    await traffic(first, ("Mona Lisa", "Guernica"))  # 3 misses, 3 hits
    await traffic(second, ("Mona Lisa",))  # 0 misses, 4 hits: the first one's entries are shared
    started_minute = floor_to(time.time(), 60)
    for proxy in (first, second):
        assert await proxy.app[STATS_KEEPER].flush()

    for proxy in (first, second):
        body = await (await proxy.get("/redis/stats/history?window=10m")).json()
        totals = body["window_totals"]["totals"]
        assert (totals["requests"], totals["hits"], totals["misses"]) == (10, 7, 3)
        assert body["window_totals"]["namespaces"]["ai_content"]["tokens_saved"]["total"] == 3 * 42
        keys = {item["key"]: item["hits"] for item in body["top_keys"]["keys"]}
        assert keys["artwork_info:mona-lisa"] == 3  # one hit on the first replica, two on the second
        assert keys["artwork_info:guernica"] == 1
        assert all(not key.startswith(key_prefix) for key in keys)
        stats = await (await proxy.get("/redis/stats")).json()
        assert stats["cluster"]["totals"]["hits"] == totals["hits"]

    # The keys in Redis: one hash per minute (or two, when the flushes straddled a minute), one
    # for the day, one sorted set per hour, each with its expiry.
    history_keys = [
        key.decode() async for key in real_redis.scan_iter(match=f"{key_prefix}_artstory_proxy:history:*", count=1000)
    ]
    minute_keys = [key for key in history_keys if key.rsplit(":", 2)[1] == "history"]
    assert 1 <= len(minute_keys) <= 2
    assert all(int(key.rsplit(":", 1)[1]) >= started_minute - 60 for key in minute_keys)
    for key in minute_keys:
        assert 7200 < await real_redis.ttl(key) <= 7200 + 60
    ten_minute_keys = [key for key in history_keys if ":history:10m:" in key]
    assert 1 <= len(ten_minute_keys) <= 2
    for key in ten_minute_keys:
        assert 7200 + 540 < await real_redis.ttl(key) <= 7200 + 600
    day_key = f"{key_prefix}_artstory_proxy:history:day:{floor_to(time.time(), 86400)}"
    assert DAY_KEPT - 60 < await real_redis.ttl(day_key) <= DAY_KEPT
    top_key = f"{key_prefix}_artstory_proxy:topkeys:{floor_to(time.time(), 3600)}"
    assert 7200 + 3600 - 60 < await real_redis.ttl(top_key) <= 7200 + 3600
    assert await real_redis.ttl(f"{key_prefix}_artstory_proxy:stats") == -1
    # Nothing is left behind by the window reads (the union's scratch key).
    assert [key async for key in real_redis.scan_iter(match=f"{key_prefix}*union*")] == []


async def test_reading_a_day_of_minutes_in_batches(real_redis_store: Store, key_prefix: str) -> None:
    keys = [f"{key_prefix}_artstory_proxy:history:{minute}" for minute in range(0, 1440 * 60, 60)]
    await real_redis_store.write_counters(
        [CounterWrite(key, {"artwork_info|n|hit": index}, ttl=60) for index, key in enumerate(keys) if index % 7 == 0]
    )
    read = await real_redis_store.read_counters_many(keys)
    assert len(read) == 1440
    assert sum(fields.get("artwork_info|n|hit", 0) for fields in read) == sum(range(0, 1440, 7))
