"""Cache analytics over HTTP: `/redis/stats/history` on both stores, and the dashboard page."""

from __future__ import annotations

import re

import fakeredis
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from proxy.state import STATS_KEEPER
from proxy.store.base import Store
from proxy.store.failopen import FailOpenStore
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from tests.conftest import ProxyClientFactory, ReplicasFactory, chat_body
from tests.unit.test_failopen import FlakyStore

TOKEN = "an-admin-token-for-the-dashboard"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def traffic(proxy: TestClient[web.Request, web.Application]) -> None:
    """2 misses, 4 hits: 2 on the chat answer (with usage), 2 on mona-lisa."""
    for _ in range(3):
        await (await proxy.post("/v1/chat/completions", json=chat_body())).read()
        await (await proxy.get("/artworks/Mona%20Lisa")).read()


@pytest.mark.parametrize("backend", ["fakeredis", "memory"])
async def test_history_holds_what_stats_counted(make_proxy: ProxyClientFactory, backend: str) -> None:
    store: Store = (
        FailOpenStore(RedisStore(fakeredis.aioredis.FakeRedis()))
        if backend == "fakeredis"
        else FailOpenStore(MemoryStore(16 * 1024 * 1024))
    )
    proxy = await make_proxy(store=store)
    await traffic(proxy)
    assert await proxy.app[STATS_KEEPER].flush()
    response = await proxy.get("/redis/stats/history?window=15m")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = await response.json()
    assert (body["window"], body["step"], body["retention"]) == (900, 60, 86400)
    assert len(body["points"]) == 15
    assert sum(point["totals"]["requests"] for point in body["points"]) == 6
    stats = await (await proxy.get("/redis/stats")).json()
    window = body["window_totals"]
    for field in ("requests", "hits", "misses", "stale", "coalesced", "upstream_calls_saved", "latency_ms"):
        assert window["totals"][field] == stats["cluster"]["totals"][field], field
    ai = window["namespaces"]["ai_content"]
    assert ai["tokens_saved"] == {"input": 24, "output": 60, "total": 84}
    assert ai["money_saved_usd"] == stats["cluster"]["namespaces"]["ai_content"]["money_saved_usd"]
    assert body["today"]["totals"]["upstream_calls_saved"] == 4
    keys = {item["key"]: item["hits"] for item in body["top_keys"]["keys"]}
    assert keys["artwork_info:mona-lisa"] == 2
    assert [key for key in keys if key.startswith("ai_content:chat.completions:")] != []
    assert all(hits == 2 for hits in keys.values())


async def test_history_counts_unflushed_traffic_too(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy(PROXY_STATS_FLUSH_INTERVAL="3600")
    await traffic(proxy)
    body = await (await proxy.get("/redis/stats/history")).json()
    assert body["window"] == 3600
    assert body["window_totals"]["totals"]["hits"] == 4
    assert body["top_keys"]["keys"][0]["hits"] == 2


async def test_two_replicas_share_one_history(make_replicas: ReplicasFactory) -> None:
    clients = await make_replicas()
    for client in clients:
        await traffic(client)
        assert await client.app[STATS_KEEPER].flush()
    body = await (await clients[1].get("/redis/stats/history?window=5m")).json()
    assert body["window_totals"]["totals"]["requests"] == 12
    assert body["window_totals"]["totals"]["hits"] == 10
    assert {item["key"]: item["hits"] for item in body["top_keys"]["keys"]}["artwork_info:mona-lisa"] == 5


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("window=2d", "longer than the history kept"),
        ("window=10s", "too short"),
        ("window=lots", "duration"),
        ("window=1h&step=45s", "whole number of minutes"),
    ],
)
async def test_bad_windows_are_400_json(make_proxy: ProxyClientFactory, query: str, message: str) -> None:
    proxy = await make_proxy()
    response = await proxy.get(f"/redis/stats/history?{query}")
    assert response.status == 400
    assert message in (await response.json())["error"]["message"]


async def test_long_windows_have_fewer_wider_points(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy()
    await traffic(proxy)
    assert await proxy.app[STATS_KEEPER].flush()
    body = await (await proxy.get("/redis/stats/history?window=24h")).json()
    assert (body["window"], body["step"]) == (86400, 1200)
    assert len(body["points"]) in (72, 73)  # 144 ten-minute buckets, in 20-minute steps on 20-minute boundaries
    assert body["window_totals"]["totals"]["requests"] == 6
    chosen = await (await proxy.get("/redis/stats/history?window=2h&step=10m")).json()
    assert (chosen["step"], len(chosen["points"])) == (600, 12)


async def test_the_window_is_bounded_by_the_retention_setting(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy(PROXY_STATS_RETENTION="2h")
    assert (await proxy.get("/redis/stats/history?window=2h")).status == 200
    short = await make_proxy(PROXY_STATS_RETENTION="10m")
    assert (await (await short.get("/redis/stats/history")).json())["window"] == 600  # the default, shortened
    refused = await proxy.get("/redis/stats/history?window=3h")
    assert refused.status == 400
    assert "PROXY_STATS_RETENTION: 2h" in (await refused.json())["error"]["message"]


async def test_history_is_503_while_the_store_is_down(make_proxy: ProxyClientFactory) -> None:
    flaky = FlakyStore()
    proxy = await make_proxy(store=FailOpenStore(flaky))
    flaky.down = True
    response = await proxy.get("/redis/stats/history")
    assert response.status == 503
    assert (await response.json())["error"]["message"] == "Redis connection failed: Connection refused"


async def test_history_and_dashboard_need_the_admin_token(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy(PROXY_ADMIN_TOKEN=TOKEN)
    denied = await proxy.get("/redis/stats/history")
    assert denied.status == 401
    assert (await denied.json())["error"]["type"] == "authentication_error"
    assert (await proxy.get("/redis/stats/history", headers=AUTH)).status == 200
    # The token in the address is for the page only, never for the data.
    assert (await proxy.get(f"/redis/stats/history?token={TOKEN}")).status == 401

    login = await proxy.get("/redis/dashboard")
    assert login.status == 401
    assert login.headers["Content-Type"].startswith("text/html")
    assert login.headers["WWW-Authenticate"].startswith("Bearer")
    assert 'type="password"' in await login.text()
    assert (await proxy.get("/redis/dashboard?token=wrong")).status == 401
    with capture_logs() as logs:
        page = await proxy.get(f"/redis/dashboard?token={TOKEN}")
    assert page.status == 200
    assert TOKEN not in str(logs)
    assert (await proxy.get("/redis/dashboard", headers=AUTH)).status == 200
    assert (await proxy.post("/redis/dashboard", headers=AUTH)).status == 405
    assert (await proxy.delete("/redis/stats/history", headers=AUTH)).status == 405


async def test_the_page_is_self_contained_and_locked_down(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy()
    response = await proxy.get("/redis/dashboard", headers={"Accept-Encoding": "gzip"})
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    html = await response.text()
    # The chart library is inlined: nothing is loaded from anywhere else.
    assert "uPlot" in html
    assert "/*UPLOT_JS*/" not in html
    assert "/*UPLOT_CSS*/" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert len(re.findall(r"'sha256-", policy)) == html.count("<script>") + html.count("<style>")
    # What the page fetches is relative to it, so it also works behind a path prefix.
    for path in ('api("stats")', 'api("stats/history" + query)', 'api("health")'):
        assert path in html
