"""The operations API: stats shared by replicas, Prometheus metrics, admin auth, clears."""

from __future__ import annotations

import socket

import fakeredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_app
from proxy.state import STATS_KEEPER
from proxy.store.failopen import FailOpenStore
from proxy.store.redis import RedisStore
from tests.conftest import ProxyClientFactory, ReplicasFactory, chat_body, settings_for
from tests.fake_upstream import FakeUpstream


async def traffic(proxy: TestClient[web.Request, web.Application]) -> None:
    for _ in range(3):
        await (await proxy.post("/v1/chat/completions", json=chat_body())).read()
        await (await proxy.get("/artworks/Mona%20Lisa")).read()


async def test_stats_count_what_happened(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy()
    await traffic(proxy)
    body = await (await proxy.get("/redis/stats")).json()
    process = body["process"]["totals"]
    assert (process["requests"], process["hits"], process["misses"]) == (6, 4, 2)
    assert process["hit_rate"] == round(4 / 6, 4)
    assert process["upstream_calls_saved"] == 4
    assert process["latency_ms"]["hit"]["count"] == 4
    assert process["latency_ms"]["hit"]["p99"] is not None
    assert process["latency_ms"]["miss"]["p50"] is not None
    ai = body["process"]["namespaces"]["ai_content"]
    # Two hits on a gpt-4o-mini answer with 12 prompt and 30 completion tokens.
    assert ai["tokens_saved"] == {"input": 24, "output": 60, "total": 84}
    assert ai["money_saved_usd"] == round(2 * (12 * 0.15 + 30 * 0.60) / 1e6, 8)
    assert body["cluster"]["totals"]["hits"] == 4  # this process's pending counts are included
    store = body["store"]
    assert store["namespaces"]["artwork_info"]["entries"] == 1
    assert store["namespaces"]["ai_content"]["entries"] == 1
    assert store["namespaces"]["ai_content"]["bytes"] > 200
    assert store["complete"] is True


async def test_two_replicas_share_their_counters(make_replicas: ReplicasFactory) -> None:
    clients = await make_replicas()
    for client in clients:
        await traffic(client)
        assert await client.app[STATS_KEEPER].flush()
    body = await (await clients[0].get("/redis/stats")).json()
    assert body["process"]["totals"]["requests"] == 6
    assert body["cluster"]["totals"]["requests"] == 12
    # The second replica found the first one's entries: only two misses in all.
    assert body["cluster"]["totals"]["misses"] == 2
    assert body["cluster"]["totals"]["hits"] == 10


async def test_metrics_parse_with_prometheus_own_parser(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy()
    await traffic(proxy)
    response = await proxy.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(await response.text())}
    requests = {
        (s.labels["namespace"], s.labels["cache"]): s.value
        for s in families["artstory_proxy_requests"].samples
        if s.name == "artstory_proxy_requests_total"
    }
    assert requests[("ai_content", "HIT")] == 2
    assert requests[("artwork_info", "MISS")] == 1
    hit_count = next(
        s.value
        for s in families["artstory_proxy_request_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels["namespace"] == "ai_content" and s.labels["kind"] == "hit"
    )
    assert hit_count == 2
    tokens = {
        s.labels["direction"]: s.value
        for s in families["artstory_proxy_tokens_saved"].samples
        if s.labels["namespace"] == "ai_content"
    }
    assert tokens == {"input": 24, "output": 60}
    entries = {s.labels["namespace"]: s.value for s in families["artstory_proxy_store_entries"].samples}
    assert entries["ai_content"] == 1
    assert "artstory_proxy_store_errors" in families
    assert "artstory_proxy_money_saved_dollars" in families


async def test_admin_token_guards_stats_metrics_and_clear_but_not_probes(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy(PROXY_ADMIN_TOKEN="s3cret-admin-token")
    for method, path in (
        ("GET", "/redis/stats"),
        ("GET", "/metrics"),
        ("DELETE", "/redis/clear"),
        ("DELETE", "/redis/clear/artwork_info:*"),
    ):
        denied = await proxy.request(method, path)
        assert denied.status == 401, path
        assert (await denied.json())["error"]["type"] == "authentication_error"
        wrong = await proxy.request(method, path, headers={"Authorization": "Bearer s3cret-admin-tokeX"})
        assert wrong.status == 401
        allowed = await proxy.request(method, path, headers={"Authorization": "Bearer s3cret-admin-token"})
        assert allowed.status == 200, path
    for path in ("/healthz", "/readyz", "/redis/health"):
        assert (await proxy.get(path)).status == 200


def non_loopback_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        address = str(probe.getsockname()[0])
    assert not address.startswith("127."), "the machine needs a non-loopback interface for this test"
    return address


async def test_without_a_token_clear_answers_only_loopback_clients(upstream_url: str, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    store = FailOpenStore(RedisStore(fakeredis.aioredis.FakeRedis()))
    address = non_loopback_address()
    server = TestServer(create_app(settings_for(upstream_url), store=store), host=address)
    client = await aiohttp_client(server)
    forbidden = await client.delete("/redis/clear")
    assert forbidden.status == 403
    assert "loopback" in (await forbidden.json())["error"]["message"]
    assert (await client.get("/redis/stats")).status == 200  # stats stay open without a token
    loopback = await aiohttp_client(create_app(settings_for(upstream_url), store=store))
    assert (await loopback.delete("/redis/clear")).status == 200


async def test_health_answers_within_a_second_when_redis_hangs(
    make_proxy: ProxyClientFactory,
) -> None:
    # A server that accepts connections and never answers: the worst kind of Redis outage.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    port = hung.getsockname()[1]
    try:
        store = FailOpenStore(RedisStore.from_url(f"redis://127.0.0.1:{port}/0", timeout=5.0, max_connections=2))
        proxy = await make_proxy(store=store)
        response = await proxy.get("/redis/health")
        assert response.status == 503
        body = await response.json()
        assert body == {
            "status": "unhealthy",
            "store": "redis",
            "error": "Redis connection failed: no answer within 1 s",
            "rate_limits": "off",
        }
    finally:
        hung.close()


async def test_clear_counts_removed_keys_and_spares_other_namespaces(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy()
    await traffic(proxy)
    await (await proxy.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})).read()
    cleared = await (await proxy.delete("/redis/clear/ai_content:chat.completions:*")).json()
    assert cleared == {"status": "cleared", "pattern": "ai_content:chat.completions:*", "removed": 1}
    stats = await (await proxy.get("/redis/stats")).json()
    assert stats["store"]["namespaces"]["ai_content"]["entries"] == 1  # the embedding is still there
