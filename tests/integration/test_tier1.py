"""The first tier on the real Redis: a clear on one replica empties every replica's first tier."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.entry import Entry, encode_entry
from proxy.settings import Settings
from proxy.store.factory import open_store, tier_invalidation_for
from proxy.store.tiered import TieredStore
from tests.conftest import REDIS_TEST_URL, ProxyClientFactory

pytestmark = pytest.mark.redis


async def test_a_clear_reaches_every_replicas_first_tier(real_redis: redis.Redis, key_prefix: str) -> None:
    settings = Settings.from_env({"REDIS_URL": REDIS_TEST_URL, "PROXY_KEY_PREFIX": key_prefix})
    replicas = [open_store(REDIS_TEST_URL, settings) for _ in range(2)]
    assert all(isinstance(store, TieredStore) for store in replicas)
    subscriptions = [tier_invalidation_for(store, settings) for store in replicas]
    try:
        await asyncio.sleep(0.2)  # the listeners subscribe
        entry = encode_entry(Entry(200, (), b"{}", stored_at=time.time(), fresh_for=600))
        key = f"{key_prefix}artwork_info:mona-lisa"
        await replicas[0].put(key, entry, 600)
        assert await replicas[1].get(key) == entry  # now in the second replica's first tier too
        second = replicas[1]
        assert isinstance(second, TieredStore)
        assert second.first.get(key) == entry
        removed = await replicas[0].delete_matching(f"{key_prefix}artwork_info:*")
        assert removed == 1
        for _ in range(50):
            if second.first.get(key) is None:
                break
            await asyncio.sleep(0.02)
        assert second.first.get(key) is None
        assert await replicas[1].get(key) is None
    finally:
        for subscription in subscriptions:
            assert subscription is not None
            await subscription.close()
        for store in replicas:
            await store.close()
        async for stale in real_redis.scan_iter(match=f"{key_prefix}*"):
            await real_redis.unlink(stale)


async def test_hits_from_the_first_tier_are_counted_apart(
    make_proxy: ProxyClientFactory, real_redis: redis.Redis, key_prefix: str
) -> None:
    settings = Settings.from_env({"REDIS_URL": REDIS_TEST_URL, "PROXY_KEY_PREFIX": key_prefix})
    store = open_store(REDIS_TEST_URL, settings)
    proxy: TestClient[web.Request, web.Application] = await make_proxy(store=store, PROXY_KEY_PREFIX=key_prefix)
    try:
        for _ in range(6):
            await (await proxy.get("/artworks/x")).read()
        health = await (await proxy.get("/redis/health")).json()
        assert health["tier1"]["hits"] == 5
        assert health["tier1"]["entries"] == 1
        metrics = await (await proxy.get("/metrics")).text()
        assert "artstory_proxy_tier1_hits_total 5.0" in metrics
        stats = await (await proxy.get("/redis/stats")).json()
        assert stats["store"]["tier1"]["hits"] == 5
    finally:
        await proxy.close()  # the app first: its clean-up still talks to Redis through the store
        await store.close()
        async for stale in real_redis.scan_iter(match=f"{key_prefix}*"):
            await real_redis.unlink(stale)
