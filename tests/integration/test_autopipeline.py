"""The auto-pipelined GET lane on the real Redis: batching, cancellation, a server that hangs."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import redis.asyncio as redis

from proxy.entry import Entry, encode_entry
from proxy.errors import StoreError
from proxy.store.autopipeline import AutoPipeline, Endpoint
from proxy.store.failopen import FailOpenStore
from proxy.store.redis import RedisStore
from proxy.store.tiered import TieredStore
from proxy.store.tinylfu import TinyLfuCache
from tests.conftest import REDIS_TEST_URL

pytestmark = pytest.mark.redis


async def test_concurrent_gets_come_back_to_the_right_callers(real_redis: redis.Redis, key_prefix: str) -> None:
    keys = [f"{key_prefix}k{index}" for index in range(500)]
    async with real_redis.pipeline(transaction=False) as pipe:
        for index, key in enumerate(keys):
            pipe.set(key, f"value-{index}".encode(), ex=60)
        await pipe.execute()
    lane = AutoPipeline(Endpoint.from_url(REDIS_TEST_URL), timeout=1.0)
    try:
        values = await asyncio.gather(*(lane.get(key) for key in keys), lane.get(f"{key_prefix}absent"))
        assert values[:-1] == [f"value-{index}".encode() for index in range(500)]
        assert values[-1] is None
        # Callers that give up mid-flight never shift the replies of the others.
        tasks = [asyncio.ensure_future(lane.get(key)) for key in keys]
        await asyncio.sleep(0)
        for task in tasks[::3]:
            task.cancel()
        for index, task in enumerate(tasks):
            if index % 3:
                assert await task == f"value-{index}".encode()
        assert await lane.get(keys[7]) == b"value-7"
    finally:
        lane.close()
        await real_redis.delete(*keys)


async def test_a_hung_server_fails_the_lane_within_the_timeout_and_it_recovers() -> None:
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    port = hung.getsockname()[1]
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.2, max_connections=2)
    try:
        with pytest.raises(StoreError, match=r"Timeout|connect"):
            await store.get("any")
    finally:
        hung.close()
        await store.close()
    working = RedisStore.from_url(REDIS_TEST_URL, timeout=0.5, max_connections=2)
    try:
        assert await working.get("surely-absent-key-0f3c") is None
    finally:
        await working.close()


async def test_lookups_started_without_a_coroutine_feed_the_first_tier_and_the_breaker(
    real_redis: redis.Redis, key_prefix: str
) -> None:
    key = f"{key_prefix}soon"
    stored = encode_entry(Entry(200, (), b"answer", time.time(), 60))
    await real_redis.set(key, stored, ex=60)
    shared = FailOpenStore(RedisStore.from_url(REDIS_TEST_URL, timeout=0.5, max_connections=2))
    store = TieredStore(TinyLfuCache(1024 * 1024), shared, max_ttl=30)
    try:
        assert store.get_soon(key) is None  # not connected yet: the coroutine path connects
        assert await store.get(f"{key_prefix}absent") is None
        found = store.get_soon(key)
        assert found is not None
        assert await found == stored
        await asyncio.sleep(0)  # its callbacks run
        assert store.get_local(key) == stored  # now in the first tier
        assert store.tier1_figures()["misses"] == 2  # the first tier's misses were counted

        failing = store.get_soon(f"{key_prefix}other")
        assert failing is not None
        lane = shared.inner.lane  # type: ignore[attr-defined]
        lane.close()  # its connection drops with the lookup in flight
        with pytest.raises(ConnectionError):
            await failing
        await asyncio.sleep(0)
        assert not shared.available  # the breaker learnt of it
        assert await store.get(f"{key_prefix}other") is None  # and the coroutine path recovers
        assert shared.available
    finally:
        await store.close()
