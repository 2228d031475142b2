"""Two proxy processes sharing one real Redis: 50 identical concurrent requests each, one upstream call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as redis

from tests.conftest import REDIS_TEST_URL, chat_body
from tests.fake_upstream import FakeUpstream
from tests.processes import ProxyProcess

pytestmark = [pytest.mark.slow, pytest.mark.redis]


async def test_two_replicas_make_one_upstream_call(
    upstream_url: str, fake: FakeUpstream, tmp_path: Path, real_redis: redis.Redis, key_prefix: str
) -> None:
    env = {"OPENAI_BASE_URL": upstream_url, "REDIS_URL": REDIS_TEST_URL, "PROXY_KEY_PREFIX": key_prefix}
    replicas = [ProxyProcess(env, tmp_path / f"replica{index}.log") for index in range(2)]
    try:
        await asyncio.gather(*(replica.start() for replica in replicas))
        fake.latency = 0.5
        async with aiohttp.ClientSession() as session:

            async def ask(replica: ProxyProcess) -> tuple[str, bytes]:
                async with session.post(f"{replica.url}/v1/chat/completions", json=chat_body("Guernica")) as response:
                    assert response.status == 200
                    return response.headers["X-Cache"], await response.read()

            results = await asyncio.gather(*(ask(replica) for replica in replicas for _ in range(50)))
        assert fake.calls["/chat/completions"] == 1
        assert len({body for _, body in results}) == 1
        outcomes = [outcome for outcome, _ in results]
        assert outcomes.count("MISS") == 1
        assert outcomes.count("COALESCED") == 99
    finally:
        for replica in replicas:
            await replica.stop()
        async for key in real_redis.scan_iter(match=f"{key_prefix}*"):
            await real_redis.unlink(key)
