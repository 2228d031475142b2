"""Shared fixtures: a fake upstream on loopback, settings pointing at it, stores, a proxy client."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from proxy.app import create_app
from proxy.fastlane import fast_lane_site, runner_options
from proxy.settings import Settings
from proxy.state import SETTINGS
from proxy.store.base import Store
from proxy.store.failopen import FailOpenStore
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from tests.fake_upstream import FakeUpstream

REPO = Path(__file__).resolve().parent.parent
REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def upstream_url(fake: FakeUpstream, aiohttp_server: Callable[..., Awaitable[TestServer]]) -> str:
    server = await aiohttp_server(fake.app())
    return str(server.make_url("")).rstrip("/")


def settings_for(upstream_url: str, **overrides: str) -> Settings:
    env = {
        "OPENAI_BASE_URL": upstream_url,
        "ARTWORK_API_URL": upstream_url,
        "IMAGE_API_URL": upstream_url,
        "REDIS_URL": "memory://",
        "PROXY_ROUTES": str(REPO / "config" / "routes.toml"),
        **overrides,
    }
    return Settings.from_env(env)


@pytest.fixture
def settings(upstream_url: str) -> Settings:
    return settings_for(upstream_url)


@pytest.fixture
def fake_redis_store() -> Store:
    return FailOpenStore(RedisStore(fakeredis.aioredis.FakeRedis()))


@pytest.fixture
def memory_store() -> Store:
    return FailOpenStore(MemoryStore(16 * 1024 * 1024))


class FastLaneTestServer(TestServer):
    """aiohttp's test server, listening through the fast lane as `python -m proxy serve` does."""

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self._loop = loop
        runner = await self._make_runner(handler_cancellation=True, **runner_options(), **kwargs)
        self.runner = runner
        await runner.setup()
        sock = self.socket_factory(self.host, self.port or 0, socket.AF_INET)
        self.host, self.port = sock.getsockname()[:2]
        assert isinstance(runner, web.AppRunner)
        await fast_lane_site(runner, sock=sock).start()
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")


def serve_app(app: web.Application) -> TestServer:
    """The app's test server: through the fast lane unless its settings turn it off."""
    return FastLaneTestServer(app) if app[SETTINGS].fast_lane else TestServer(app)


ProxyClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def make_proxy(
    upstream_url: str, aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
) -> ProxyClientFactory:
    """Start a proxy in front of the fake upstream; `store=` and setting overrides optional."""

    async def factory(*, store: Store | None = None, **env: str) -> TestClient[web.Request, web.Application]:
        active_store = store if store is not None else FailOpenStore(RedisStore(fakeredis.aioredis.FakeRedis()))
        app = create_app(settings_for(upstream_url, **env), store=active_store)
        return await aiohttp_client(serve_app(app))

    return factory


ReplicasFactory = Callable[..., Awaitable[list[TestClient[web.Request, web.Application]]]]


@pytest.fixture
def make_replicas(make_proxy: ProxyClientFactory) -> ReplicasFactory:
    """`count` proxies in front of the fake upstream, sharing one (fake) Redis: replicas."""

    async def factory(count: int = 2, **env: str) -> list[TestClient[web.Request, web.Application]]:
        server = fakeredis.FakeServer()
        return [
            await make_proxy(store=FailOpenStore(RedisStore(fakeredis.aioredis.FakeRedis(server=server))), **env)
            for _ in range(count)
        ]

    return factory


@pytest.fixture
async def proxy(make_proxy: ProxyClientFactory) -> TestClient[web.Request, web.Application]:
    return await make_proxy()


@pytest.fixture
async def real_redis() -> AsyncIterator[redis.Redis]:
    """A client of the real redis-server, on a test database, flushed of this test's keys after."""
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        await client.ping()
    except Exception as exc:  # the CI script starts redis-server; locally it is a hard failure too
        await client.aclose()
        pytest.fail(f"the real-Redis tests need redis-server at {REDIS_TEST_URL}: {exc}")
    yield client
    await client.aclose()


@pytest.fixture
def key_prefix() -> str:
    """A prefix of this test's own, so tests sharing the real Redis never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def real_redis_store(real_redis: redis.Redis, key_prefix: str) -> AsyncIterator[Store]:
    """A store on the test database. A test that hands it to `make_proxy` names this fixture
    first, so the store closes after the proxy (whose clean-up flushes counters through it)."""
    store = RedisStore.from_url(REDIS_TEST_URL, timeout=1.0, max_connections=16)
    yield FailOpenStore(store)
    async for key in real_redis.scan_iter(match=f"{key_prefix}*", count=1000):
        await real_redis.unlink(key)
    await store.close()


def chat_body(content: str = "Tell me about the Mona Lisa", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture(scope="session", autouse=True)
def sweep_test_keys() -> Iterator[None]:
    """At the end of the run, delete every `test-*` key left in the test database: apps flush
    their last counters while they shut down, which can be after a test's own clean-up."""
    yield
    import redis as sync_redis

    client = sync_redis.Redis.from_url(REDIS_TEST_URL, socket_timeout=2)
    try:
        for key in client.scan_iter(match="test-*", count=1000):
            client.unlink(key)
    except sync_redis.RedisError:
        pass  # no Redis here: nothing was written either
    finally:
        client.close()
