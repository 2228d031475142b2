"""Redis killed under load and restarted: clients see no errors, and hits come back by themselves."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from proxy.store.failopen import FailOpenStore
from proxy.store.redis import RedisStore
from tests.conftest import ProxyClientFactory
from tests.fake_upstream import FakeUpstream
from tests.processes import free_port
from tests.redis_cluster import wait_for_redis

pytestmark = [pytest.mark.redis, pytest.mark.slow]


class RedisServer:
    """A redis-server of the test's own, on its own port, that the test can kill and restart."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server must be installed (.ci/run installs it)"
        self.process = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        await wait_for_redis(self.port)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


async def test_redis_killed_under_load_and_restarted(
    make_proxy: ProxyClientFactory, fake: FakeUpstream, own_redis: RedisServer
) -> None:
    store = FailOpenStore(
        RedisStore.from_url(f"redis://127.0.0.1:{own_redis.port}/0", timeout=0.2, max_connections=16),
        failure_threshold=3,
        cooldown=1.0,
    )
    proxy = await make_proxy(store=store)
    await (await proxy.get("/artworks/Mona%20Lisa")).read()
    outcomes: Counter[str] = Counter()
    statuses: Counter[int] = Counter()

    async def client(stop: asyncio.Event) -> None:
        while not stop.is_set():
            response = await proxy.get("/artworks/Mona%20Lisa")
            statuses[response.status] += 1
            outcomes[response.headers["X-Cache"]] += 1
            await response.read()

    with capture_logs() as logs:
        stop = asyncio.Event()
        clients = [asyncio.ensure_future(client(stop)) for _ in range(10)]
        await asyncio.sleep(0.5)
        own_redis.kill()
        await asyncio.sleep(2.0)
        during = outcomes.copy()
        await own_redis.start()
        restarted = time.monotonic()
        resumed_at = None
        while time.monotonic() - restarted < 5 and resumed_at is None:
            before = outcomes["HIT"]
            await asyncio.sleep(0.1)
            if outcomes["HIT"] > before:
                resumed_at = time.monotonic() - restarted
        stop.set()
        await asyncio.gather(*clients)

    assert set(statuses) == {200}, statuses  # not one client error, outage or not
    assert during["MISS"] > 0  # answered from the upstream while Redis was gone
    assert resumed_at is not None, "hits did not come back after Redis restarted"
    # The breaker spared most requests the Redis timeout: they skipped the store entirely.
    assert store.skipped > store.errors
    failures = [entry for entry in logs if entry["event"].startswith("Redis connection failed")]
    assert len(failures) == 1
    assert any(entry["event"] == "Redis connection restored" for entry in logs)
    await proxy.close()  # the app first: its clean-up still talks to Redis through the store
    await store.close()
