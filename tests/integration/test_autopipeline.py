"""The auto-pipelined GET lane on the real Redis: batching, cancellation, a server that hangs."""

from __future__ import annotations

import asyncio
import socket

import pytest
import redis.asyncio as redis

from proxy.errors import StoreError
from proxy.store.autopipeline import AutoPipeline, Endpoint
from proxy.store.redis import RedisStore
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
