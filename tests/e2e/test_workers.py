"""Several workers on one port: they share the cache, a dead one is replaced, SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as redis

from tests.conftest import REDIS_TEST_URL
from tests.fake_upstream import FakeUpstream
from tests.processes import ProxyProcess

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


async def test_two_workers_share_the_port_and_the_cache(
    upstream_url: str, fake: FakeUpstream, tmp_path: Path, real_redis: redis.Redis, key_prefix: str
) -> None:
    process = ProxyProcess(
        {
            "ARTWORK_API_URL": upstream_url,
            "REDIS_URL": REDIS_TEST_URL,
            "PROXY_KEY_PREFIX": key_prefix,
            "PROXY_WORKERS": "2",
        },
        tmp_path / "proxy.log",
    )
    await process.start()
    assert process.process is not None
    try:
        workers = children(process.process.pid)
        assert len(workers) == 2
        async with aiohttp.ClientSession() as session:

            async def ask(name: str) -> str:
                # A new connection each time, so the kernel spreads them over both workers.
                async with session.get(f"{process.url}/artworks/{name}", headers={"Connection": "close"}) as response:
                    assert response.status == 200
                    return response.headers["X-Cache"]

            outcomes = [await ask("mona-lisa") for _ in range(20)]
            assert outcomes[0] == "MISS"
            assert set(outcomes[1:]) == {"HIT"}
            assert fake.calls["/artworks/mona-lisa"] == 1
            os.kill(workers[0], signal.SIGKILL)
            for _ in range(100):
                replaced = children(process.process.pid)
                if len(replaced) == 2 and workers[0] not in replaced:
                    break
                await asyncio.sleep(0.1)
            assert len(replaced) == 2
            assert workers[0] not in replaced
            assert {await ask("mona-lisa") for _ in range(10)} == {"HIT"}
    finally:
        assert await process.stop() == 0
        async for key in real_redis.scan_iter(match=f"{key_prefix}*"):
            await real_redis.unlink(key)
    assert children(process.process.pid) == []
    assert '"event":"all workers stopped"' in process.output()
