"""Two proxy processes sharing one real Redis enforce one rate limit together; hits still flow."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as redis

from proxy.access import hash_access_key
from tests.conftest import REDIS_TEST_URL, chat_body
from tests.fake_upstream import FakeUpstream
from tests.processes import ProxyProcess

pytestmark = [pytest.mark.slow, pytest.mark.redis]


async def test_the_limit_holds_in_total_across_replicas(
    upstream_url: str, fake: FakeUpstream, tmp_path: Path, real_redis: redis.Redis, key_prefix: str
) -> None:
    env = {
        "OPENAI_BASE_URL": upstream_url,
        "REDIS_URL": REDIS_TEST_URL,
        "PROXY_KEY_PREFIX": key_prefix,
        "OPENAI_API_KEY": "sk-held",
        "PROXY_ACCESS_KEYS": "frontend:" + hash_access_key("ask-frontend"),
        "PROXY_RATE_LIMIT_UPSTREAM": "10/min",
    }
    replicas = [ProxyProcess(env, tmp_path / f"replica{index}.log") for index in range(2)]
    headers = {"Authorization": "Bearer ask-frontend"}
    try:
        await asyncio.gather(*(replica.start() for replica in replicas))
        async with aiohttp.ClientSession() as session:

            async def ask(replica: ProxyProcess, question: str) -> tuple[int, str]:
                async with session.post(
                    f"{replica.url}/v1/chat/completions", json=chat_body(question), headers=headers
                ) as response:
                    await response.read()
                    return response.status, response.headers.get("X-Cache", "")

            misses = await asyncio.gather(*(ask(replicas[i % 2], f"question {i}") for i in range(30)))
            assert [status for status, _ in misses].count(200) == 10
            assert [status for status, _ in misses].count(429) == 20
            answered = next(i for i, (status, _) in enumerate(misses) if status == 200)
            hits = await asyncio.gather(*(ask(replica, f"question {answered}") for replica in replicas))
            assert hits == [(200, "HIT"), (200, "HIT")]
        assert fake.calls["/chat/completions"] == 10
    finally:
        for replica in replicas:
            await replica.stop()
        async for key in real_redis.scan_iter(match=f"{key_prefix}*"):
            await real_redis.unlink(key)
