"""Everything on a real Redis Cluster: hits, stores, coalescing, limits, clears, stats, failover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio.cluster import RedisCluster

from proxy.access import hash_access_key
from proxy.app import create_app
from proxy.settings import Settings
from proxy.store.base import Store
from proxy.store.factory import open_store
from proxy.store.tiered import TieredStore
from tests.conftest import chat_body, settings_for
from tests.fake_upstream import FakeUpstream
from tests.redis_cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    local = LocalCluster(tmp_path / "cluster")
    try:
        await local.start()
        yield local
    finally:
        local.stop()


async def start_replica(aiohttp_client, upstream_url: str, cluster: LocalCluster, **env: str):  # type: ignore[no-untyped-def]
    settings = settings_for(upstream_url, REDIS_URL=cluster.url, PROXY_REDIS_TIMEOUT="0.3", **env)
    store = open_store(cluster.url, settings)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(create_app(settings, store=store))
    return client, store


async def stop_replica(client: TestClient[web.Request, web.Application], store: Store) -> None:
    """The app first: its clean-up still talks to Redis through the store (counters, unsubscribes)."""
    await client.close()
    await store.close()


async def test_hits_clears_and_stats_across_primaries(
    cluster: LocalCluster,
    upstream_url: str,
    fake: FakeUpstream,
    aiohttp_client,  # type: ignore[no-untyped-def]
) -> None:
    proxy, store = await start_replica(aiohttp_client, upstream_url, cluster, PROXY_TIER1_MAX_BYTES="0")
    names = [f"artwork-{index}" for index in range(30)]
    for name in names:
        assert (await proxy.get(f"/artworks/{name}")).headers["X-Cache"] == "MISS"
    for name in names:
        assert (await proxy.get(f"/artworks/{name}")).headers["X-Cache"] == "HIT"
    direct = RedisCluster.from_url(f"redis://127.0.0.1:{cluster.ports[0]}")
    try:
        primaries = {await cluster.primary_of(f"artwork_info:{name}") for name in names}
        assert len(primaries) == 3  # the entries really are spread over the cluster
        await direct.set("someone-else:key", b"theirs")
        health = await (await proxy.get("/redis/health")).json()
        assert health["status"] == "healthy"
        assert health["cluster_primaries"] == 3
        stats = await (await proxy.get("/redis/stats")).json()
        assert stats["store"]["namespaces"]["artwork_info"]["entries"] == 30
        cleared = await (await proxy.delete("/redis/clear/artwork_info:*")).json()
        assert cleared["removed"] == 30
        assert await direct.get("someone-else:key") == b"theirs"
        assert (await proxy.get(f"/artworks/{names[0]}")).headers["X-Cache"] == "MISS"
    finally:
        await direct.delete("someone-else:key")
        await direct.aclose()
        await stop_replica(proxy, store)


async def test_coalescing_and_limits_on_a_cluster(
    cluster: LocalCluster,
    upstream_url: str,
    fake: FakeUpstream,
    aiohttp_client,  # type: ignore[no-untyped-def]
) -> None:
    env = {
        "OPENAI_API_KEY": "sk-held",
        "PROXY_ACCESS_KEYS": ",".join(f"{name}:{hash_access_key(name)}" for name in ("burst", "ask-frontend")),
        "PROXY_RATE_LIMIT_UPSTREAM": "3/min",
        "PROXY_DAILY_BUDGET_USD": "5",
    }
    (first, first_store), (second, second_store) = [
        await start_replica(aiohttp_client, upstream_url, cluster, **env) for _ in range(2)
    ]
    headers = {"Authorization": "Bearer ask-frontend"}
    try:
        fake.latency = 0.3
        answers = await asyncio.gather(
            *(
                # A client of its own, so that how many tokens the burst takes does not matter below.
                client.post("/v1/chat/completions", json=chat_body("shared"), headers={"Authorization": "Bearer burst"})
                for client in (first, second)
                for _ in range(10)
            )
        )
        assert {answer.status for answer in answers} == {200}
        assert fake.calls["/chat/completions"] == 1
        fake.latency = 0
        statuses = [
            (
                await (first if index % 2 else second).post(
                    "/v1/chat/completions", json=chat_body(f"q{index}"), headers=headers
                )
            ).status
            for index in range(5)
        ]
        assert statuses == [200, 200, 200, 429, 429]  # 3 per minute, across both replicas
    finally:
        await stop_replica(first, first_store)
        await stop_replica(second, second_store)


async def test_a_primary_dies_the_proxy_keeps_answering_and_hits_return(
    cluster: LocalCluster,
    upstream_url: str,
    fake: FakeUpstream,
    aiohttp_client,  # type: ignore[no-untyped-def]
) -> None:
    proxy, store = await start_replica(aiohttp_client, upstream_url, cluster, PROXY_TIER1_MAX_BYTES="0")
    try:
        await (await proxy.get("/artworks/mona-lisa")).read()
        assert (await proxy.get("/artworks/mona-lisa")).headers["X-Cache"] == "HIT"
        cluster.kill(await cluster.primary_of("artwork_info:mona-lisa"))
        outcomes = []
        for _ in range(60):
            response = await proxy.get("/artworks/mona-lisa")
            assert response.status == 200  # failing open while the cluster fails over
            outcomes.append(response.headers["X-Cache"])
            if outcomes[-2:] == ["HIT", "HIT"]:
                break
            await asyncio.sleep(0.2)
        assert "MISS" in outcomes  # the entry's primary was gone: answered from the upstream
        assert outcomes[-2:] == ["HIT", "HIT"]  # the replica took over; hits are back
    finally:
        await stop_replica(proxy, store)


def test_cluster_and_sentinel_urls_are_understood() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"})
    store = open_store(settings.redis_url or "", settings)
    assert isinstance(store, TieredStore)
    sentinel = Settings.from_env({"REDIS_URL": "redis+sentinel://:secret@10.0.0.1:26379,10.0.0.2:26379/mymaster/2"})
    assert sentinel.redis_url is not None


async def test_a_master_found_through_sentinel(
    tmp_path: Path,
    upstream_url: str,
    fake: FakeUpstream,
    aiohttp_client,  # type: ignore[no-untyped-def]
) -> None:
    import shutil
    import subprocess

    import redis.asyncio as redis

    from tests.redis_cluster import cluster_ports

    master_port, sentinel_port = cluster_ports(2)
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor artstory 127.0.0.1 {master_port} 1\n"
        "sentinel down-after-milliseconds artstory 1000\n"
    )
    server = shutil.which("redis-server")
    assert server
    processes = [  # long-lived children, killed below
        subprocess.Popen(  # noqa: ASYNC220
            [server, "--port", str(master_port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        ),
        subprocess.Popen([server, str(config), "--sentinel"], stdout=subprocess.DEVNULL),  # noqa: ASYNC220
    ]
    try:
        sentinel = redis.Redis(port=sentinel_port, socket_timeout=1)
        for _ in range(100):
            try:
                if await sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "artstory"):
                    break
            except redis.ConnectionError:
                pass
            await asyncio.sleep(0.05)
        await sentinel.aclose()
        url = f"redis+sentinel://127.0.0.1:{sentinel_port}/artstory/0"
        settings = settings_for(upstream_url, REDIS_URL=url)
        store = open_store(url, settings)
        proxy = await aiohttp_client(create_app(settings, store=store))
        assert (await proxy.get("/artworks/guernica")).headers["X-Cache"] == "MISS"
        assert (await proxy.get("/artworks/guernica")).headers["X-Cache"] == "HIT"
        master = redis.Redis(port=master_port)
        assert await master.exists("artwork_info:guernica") == 1
        await master.aclose()
        await stop_replica(proxy, store)
    finally:
        for process in processes:
            process.kill()
            process.wait()
