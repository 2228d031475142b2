"""Stale answers: served at once while one refresh runs, or instead of an upstream failure."""

from __future__ import annotations

import asyncio
from pathlib import Path

import fakeredis
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.app import create_app
from proxy.store.failopen import FailOpenStore
from proxy.store.redis import RedisStore
from tests.conftest import settings_for
from tests.fake_upstream import FakeUpstream

ROUTES = """
[[route]]
name = "artwork_info"
path = "/artworks/{artwork_name}"
upstream = "artwork"
upstream_path = "/artworks/{artwork_name}"
key = "{artwork_name}"
ttl = 60
stale_while_revalidate = 30
stale_if_error = 300

[[route]]
name = "similar_artworks"
path = "/artworks/{artwork_name}/similar"
upstream = "artwork"
upstream_path = "/artworks/{artwork_name}/similar"
key = "{artwork_name}"
ttl = 3600
stale_if_error = 300
respect_cache_control = true
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def replica(upstream_url: str, tmp_path: Path, clock: Clock, server: fakeredis.FakeServer, aiohttp_client):  # type: ignore[no-untyped-def]
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)

    async def start(**env: str) -> TestClient[web.Request, web.Application]:
        store = FailOpenStore(RedisStore(fakeredis.aioredis.FakeRedis(server=server)))
        settings = settings_for(upstream_url, PROXY_ROUTES=str(routes), **env)
        return await aiohttp_client(create_app(settings, store=store, clock=clock))  # type: ignore[no-any-return]

    return start


async def test_stale_while_revalidate_answers_at_once_and_refreshes_once(
    replica,
    clock: Clock,
    fake: FakeUpstream,  # type: ignore[no-untyped-def]
) -> None:
    proxy = await replica()
    first = await (await proxy.get("/artworks/x")).json()
    clock.now += 70  # expired 10 s ago, within the 30 s window
    fake.latency = 0.3
    responses = await asyncio.gather(*(proxy.get("/artworks/x") for _ in range(20)))
    for response in responses:
        assert response.headers["X-Cache"] == "STALE"
        assert "fwd=stale" in response.headers["Cache-Status"]
        assert "ttl=-10" in response.headers["Cache-Status"]
        assert int(response.headers["Age"]) == 70
        assert (await response.json()) == first
    await asyncio.sleep(0.5)  # the one background refresh lands
    assert fake.calls["/artworks/x"] == 2
    fresh = await proxy.get("/artworks/x")
    assert fresh.headers["X-Cache"] == "HIT"
    assert (await fresh.json())["call"] == 2


async def test_past_the_window_it_is_a_plain_miss(replica, clock: Clock, fake: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    proxy = await replica()
    await (await proxy.get("/artworks/x")).read()
    clock.now += 60 + 31
    assert (await proxy.get("/artworks/x")).headers["X-Cache"] == "MISS"


async def test_stale_if_error_covers_5xx_429_refused_and_timeouts(
    replica,
    clock: Clock,
    fake: FakeUpstream,
    unused_tcp_port: int,  # type: ignore[no-untyped-def]
) -> None:
    proxy = await replica()
    original = await (await proxy.get("/artworks/x")).json()
    clock.now += 100  # past swr (30 s), within stale-if-error (300 s)
    for status in ("503", "500", "429"):
        response = await proxy.get("/artworks/x", headers={"x-fake-status": status})
        assert response.status == 200
        assert response.headers["X-Cache"] == "STALE"
        assert f"fwd-status={status}" in response.headers["Cache-Status"]
        assert await response.json() == original
    slow = await replica(PROXY_UPSTREAM_READ_TIMEOUT="0.1")
    response = await slow.get("/artworks/x", headers={"x-fake-delay": "0.5"})
    assert response.headers["X-Cache"] == "STALE"
    down = await replica(ARTWORK_API_URL=f"http://127.0.0.1:{unused_tcp_port}")
    response = await down.get("/artworks/x")
    assert response.status == 200
    assert response.headers["X-Cache"] == "STALE"
    assert await response.json() == original
    clock.now += 300  # past the window: the error goes through
    assert (await proxy.get("/artworks/x", headers={"x-fake-status": "503"})).status == 503


async def test_upstream_max_age_and_age_are_honoured(replica, clock: Clock, fake: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    proxy = await replica()
    headers = {"x-fake-cache-control": "public, max-age=100, s-maxage=40", "x-fake-age": "10"}
    await (await proxy.get("/artworks/x/similar", headers=headers)).read()
    hit = await proxy.get("/artworks/x/similar")
    assert hit.headers["X-Cache"] == "HIT"
    assert hit.headers["Age"] == "10"  # Age continues from the upstream's
    assert "ttl=30" in hit.headers["Cache-Status"]  # s-maxage 40 minus the 10 s it was already old
    clock.now += 31
    assert (await proxy.get("/artworks/x/similar")).headers["X-Cache"] == "MISS"


async def test_must_revalidate_is_never_served_stale(replica, clock: Clock, fake: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    proxy = await replica()
    await (
        await proxy.get("/artworks/y/similar", headers={"x-fake-cache-control": "max-age=30, must-revalidate"})
    ).read()
    clock.now += 40
    response = await proxy.get("/artworks/y/similar", headers={"x-fake-status": "503"})
    assert response.status == 503
    assert response.headers["X-Cache"] == "MISS"


async def test_client_max_age_refuses_stale(replica, clock: Clock, fake: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    proxy = await replica()
    await (await proxy.get("/artworks/x")).read()
    clock.now += 70
    response = await proxy.get("/artworks/x", headers={"Cache-Control": "max-age=600"})
    assert response.headers["X-Cache"] == "MISS"


async def test_hot_entries_are_refreshed_before_they_expire(
    replica,
    clock: Clock,
    fake: FakeUpstream,  # type: ignore[no-untyped-def]
) -> None:
    proxy = await replica(PROXY_REFRESH_AHEAD="0.2", PROXY_REFRESH_AHEAD_MIN_HITS="3")
    await (await proxy.get("/artworks/popular")).read()
    await (await proxy.get("/artworks/rare")).read()
    clock.now += 50  # 10 s of the 60 s life left: within the last 20 %
    for _ in range(3):
        response = await proxy.get("/artworks/popular")
        assert response.headers["X-Cache"] == "HIT"
    await (await proxy.get("/artworks/rare")).read()  # one hit: not hot
    await asyncio.sleep(0.2)
    assert fake.calls["/artworks/popular"] == 2  # refreshed ahead, once
    assert fake.calls["/artworks/rare"] == 1
    clock.now += 30  # the first answer would have expired by now; the refreshed one has not
    fresh = await proxy.get("/artworks/popular")
    assert fresh.headers["X-Cache"] == "HIT"
    assert (await fresh.json())["call"] == 3
