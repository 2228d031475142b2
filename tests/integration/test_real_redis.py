"""Against the real redis-server: keys as the seed names them, TTLs, clears that spare foreign keys."""

from __future__ import annotations

import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.entry import decode_entry
from proxy.state import STATS_KEEPER
from proxy.store.base import Store
from proxy.store.redis import RedisStore
from tests.conftest import REDIS_TEST_URL, ProxyClientFactory, chat_body
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.redis


@pytest.fixture
async def proxy_on_redis(
    real_redis_store: Store, make_proxy: ProxyClientFactory, key_prefix: str
) -> TestClient[web.Request, web.Application]:
    return await make_proxy(store=real_redis_store, PROXY_KEY_PREFIX=key_prefix)


async def test_store_round_trip_with_ttl(real_redis_store: Store, real_redis: redis.Redis, key_prefix: str) -> None:
    key = f"{key_prefix}artwork_info:x"
    await real_redis_store.put(key, b"\x00binary\xff", 90)
    assert await real_redis_store.get(key) == b"\x00binary\xff"
    assert 85_000 < await real_redis.pttl(key) <= 90_000
    assert await real_redis_store.delete(key)
    assert await real_redis_store.get(key) is None


async def test_delete_matching_in_batches_spares_other_keys(
    real_redis_store: Store, real_redis: redis.Redis, key_prefix: str
) -> None:
    async with real_redis.pipeline(transaction=False) as pipe:
        for index in range(2500):
            pipe.set(f"{key_prefix}ai_content:embeddings:{index}", b"v", ex=60)
        pipe.set(f"{key_prefix}artwork_info:keep", b"v", ex=60)
        await pipe.execute()
    removed = await real_redis_store.delete_matching(f"{key_prefix}ai_content:*")
    assert removed == 2500
    assert await real_redis.exists(f"{key_prefix}artwork_info:keep") == 1


async def test_the_seed_flow_on_real_redis(
    proxy_on_redis: TestClient[web.Request, web.Application],
    real_redis: redis.Redis,
    key_prefix: str,
    fake: FakeUpstream,
) -> None:
    proxy = proxy_on_redis
    assert (await proxy.get("/artworks/Mona%20Lisa")).headers["X-Cache"] == "MISS"
    key = f"{key_prefix}artwork_info:mona-lisa"
    stored = await real_redis.get(key)
    assert stored is not None
    assert decode_entry(stored).status == 200
    assert 7190 <= await real_redis.ttl(key) <= 7200  # the seed's 2 h for artwork info
    assert (await proxy.get("/artworks/Mona%20Lisa")).headers["X-Cache"] == "HIT"
    assert (await proxy.delete("/redis/clear/artwork_info:*")).status == 200
    assert (await proxy.get("/artworks/Mona%20Lisa")).headers["X-Cache"] == "MISS"
    assert fake.total_calls == 2


async def test_ai_keys_and_ttl_on_real_redis(
    proxy_on_redis: TestClient[web.Request, web.Application], real_redis: redis.Redis, key_prefix: str
) -> None:
    await (await proxy_on_redis.post("/v1/chat/completions", json=chat_body())).read()
    keys = [key.decode() async for key in real_redis.scan_iter(match=f"{key_prefix}ai_content:*")]
    assert len(keys) == 1
    namespace, content_type, digest = keys[0][len(key_prefix) :].split(":")
    assert (namespace, content_type, len(digest)) == ("ai_content", "chat.completions", 64)
    assert 7190 <= await real_redis.ttl(keys[0]) <= 7200


async def test_clear_all_never_touches_foreign_keys(
    proxy_on_redis: TestClient[web.Request, web.Application], real_redis: redis.Redis, key_prefix: str
) -> None:
    await (await proxy_on_redis.get("/artworks/a")).read()
    await (await proxy_on_redis.post("/v1/chat/completions", json=chat_body())).read()
    foreign = [f"{key_prefix}session:1", f"{key_prefix}artwork_infox:1", "someone-elses-key-" + key_prefix]
    for key in foreign:
        await real_redis.set(key, b"mine", ex=60)
    try:
        cleared = await proxy_on_redis.delete("/redis/clear")
        assert (await cleared.json())["removed"] == 2
        for key in foreign:
            assert await real_redis.get(key) == b"mine"
    finally:
        await real_redis.delete(*foreign)


async def test_health_reports_the_real_server(proxy_on_redis: TestClient[web.Request, web.Application]) -> None:
    body = await (await proxy_on_redis.get("/redis/health")).json()
    assert body["status"] == "healthy"
    assert body["redis_version"]
    assert body["used_memory"] > 0
    assert "maxmemory_policy" in body


async def test_a_dead_connection_pool_recovers_after_a_server_side_kill(
    real_redis_store: Store, real_redis: redis.Redis, key_prefix: str
) -> None:
    await real_redis_store.put(f"{key_prefix}artwork_info:a", b"v", 60)
    await real_redis.client_kill_filter(_type="normal", skipme=True)  # drops the store's pooled connections
    assert await real_redis_store.get(f"{key_prefix}artwork_info:a") == b"v"


def test_the_test_database_is_not_the_default_one() -> None:
    # The suite shares this machine's Redis: it works in its own database under per-test prefixes.
    assert not REDIS_TEST_URL.endswith("/0")
    assert RedisStore.backend == "redis"


async def test_stats_and_metrics_on_real_redis(
    real_redis_store: Store, make_proxy: ProxyClientFactory, real_redis: redis.Redis, key_prefix: str
) -> None:
    first = await make_proxy(store=real_redis_store, PROXY_KEY_PREFIX=key_prefix)
    second = await make_proxy(store=real_redis_store, PROXY_KEY_PREFIX=key_prefix)
    for client in (first, second):
        for _ in range(2):
            await (await client.post("/v1/chat/completions", json=chat_body())).read()
        assert await client.app[STATS_KEEPER].flush()
    assert await real_redis.exists(f"{key_prefix}_artstory_proxy:stats") == 1
    body = await (await first.get("/redis/stats")).json()
    assert body["cluster"]["totals"]["requests"] == 4
    assert body["cluster"]["totals"]["misses"] == 1
    assert body["cluster"]["totals"]["tokens_saved"]["total"] == 3 * 42
    assert body["store"]["namespaces"]["ai_content"]["entries"] == 1
    assert body["store"]["used_memory"] > 0
    metrics = await (await first.get("/metrics")).text()
    assert f'artstory_proxy_store_entries{{namespace="{key_prefix}ai_content",route="ai_content"}} 1.0' in metrics
    # A clear of everything leaves the shared counters alone: they are not cache entries.
    await (await first.delete("/redis/clear")).read()
    assert await real_redis.exists(f"{key_prefix}_artstory_proxy:stats") == 1


async def test_health_warns_about_a_redis_that_will_not_evict(
    proxy_on_redis: TestClient[web.Request, web.Application], real_redis: redis.Redis
) -> None:
    config = await real_redis.config_get("maxmemory*")
    body = await (await proxy_on_redis.get("/redis/health")).json()
    warnings = " ".join(body.get("warnings", []))
    if int(config["maxmemory"]) == 0:
        assert "maxmemory is 0" in warnings
    if config["maxmemory-policy"] == "noeviction":
        assert "noeviction" in warnings
    if int(config["maxmemory"]) and config["maxmemory-policy"].startswith("allkeys"):
        assert not warnings
