"""The hit/miss path through the whole app, with fakeredis and a fake upstream that counts calls."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import fakeredis
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from proxy.entry import decode_entry, encode_entry
from proxy.store.failopen import FailOpenStore
from proxy.store.redis import RedisStore
from tests.conftest import ProxyClientFactory, chat_body
from tests.fake_upstream import FakeUpstream


async def test_the_seeds_own_test_miss_hit_clear_miss(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy()
    first = await proxy.get("/artworks/Mona%20Lisa")
    assert first.status == 200
    assert first.headers["X-Cache"] == "MISS"
    second = await proxy.get("/artworks/Mona%20Lisa")
    assert second.headers["X-Cache"] == "HIT"
    assert await second.read() == await first.read()
    cleared = await proxy.delete("/redis/clear")
    assert (await cleared.json())["removed"] == 1
    third = await proxy.get("/artworks/Mona%20Lisa")
    assert third.headers["X-Cache"] == "MISS"
    assert fake.calls["/artworks/Mona Lisa"] == 2


async def test_a_hit_is_byte_for_byte_with_cache_headers(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy()
    miss = await proxy.post("/v1/chat/completions", json=chat_body())
    miss_body = await miss.read()
    hit = await proxy.post("/v1/chat/completions", json=chat_body())
    assert hit.status == 200
    assert await hit.read() == miss_body
    assert hit.headers["Content-Type"] == miss.headers["Content-Type"]
    assert hit.headers["openai-model"] == "gpt-4o-mini"
    assert hit.headers["X-Cache"] == "HIT"
    assert int(hit.headers["Age"]) >= 0
    assert hit.headers["Cache-Status"].startswith("artstory-proxy; hit; ttl=")
    assert "detail=ai_content" in hit.headers["Cache-Status"]
    assert "fwd=uri-miss" in miss.headers["Cache-Status"]
    assert hit.headers["X-Request-ID"] != miss.headers["X-Request-ID"]
    assert fake.calls["/chat/completions"] == 1


async def test_binary_images_are_cached_exactly(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    fake.image_bytes = 60_000
    proxy = await make_proxy()
    miss = await proxy.get("/artworks/starry-night/image")
    body = await miss.read()
    hit = await proxy.get("/artworks/Starry%20Night/image")
    assert hit.headers["X-Cache"] == "HIT"
    assert await hit.read() == body
    assert len(body) == 60_000
    assert hit.headers["Content-Type"] == "image/png"
    assert fake.calls["/images/starry-night"] == 1


async def test_spelling_variants_of_an_artwork_share_one_upstream_call(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy()
    for spelling in ("Mona%20Lisa", "mona_lisa", "MONA-LISA", "Mona%20%20Lisa"):
        await (await proxy.get(f"/artworks/{spelling}/similar")).read()
    assert fake.total_calls == 1


async def test_errors_are_never_stored(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy()
    for status in (500, 429, 404):
        for _ in range(2):
            response = await proxy.post(
                "/v1/chat/completions", json=chat_body(), headers={"x-fake-status": str(status)}
            )
            assert response.status == status
            assert response.headers["X-Cache"] == "MISS"
            await response.read()
    assert fake.calls["/chat/completions"] == 6


async def test_no_store_private_and_set_cookie_answers_are_not_stored(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy()
    for header in (
        {"x-fake-cache-control": "no-store"},
        {"x-fake-cache-control": "private"},
        {"x-fake-set-cookie": "1"},
    ):
        for _ in range(2):
            response = await proxy.get("/artworks/secret", headers=header)
            assert response.headers["X-Cache"] == "MISS"
            await response.read()
    assert fake.total_calls == 6


async def test_bodies_over_the_route_limit_are_streamed_but_not_stored(
    make_proxy: ProxyClientFactory, fake: FakeUpstream, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(
        '[[route]]\nname = "artwork_image"\npath = "/img/{artwork_name}"\nupstream = "image"\n'
        'upstream_path = "/images/{artwork_name}"\nkey = "{artwork_name}"\nmax_body_bytes = 10000\n'
    )
    fake.image_bytes = 3 * 1024 * 1024
    proxy = await make_proxy(PROXY_ROUTES=str(routes))
    for _ in range(2):
        response = await proxy.get("/img/big")
        assert len(await response.read()) == 3 * 1024 * 1024
        assert response.headers["X-Cache"] == "MISS"
    assert fake.total_calls == 2


async def test_unknown_paths_are_404_json_and_never_forwarded(proxy: TestClient, fake: FakeUpstream) -> None:  # type: ignore[type-arg]
    for path in ("/v1/files", "/", "/admin", "/v1/chat/completions/extra"):
        response = await proxy.get(path)
        assert response.status == 404
        body = await response.json()
        assert "no route" in body["error"]["message"]
        assert body["request_id"] == response.headers["X-Request-ID"]
    assert fake.total_calls == 0


async def test_host_header_cannot_choose_the_upstream(proxy: TestClient, fake: FakeUpstream) -> None:  # type: ignore[type-arg]
    response = await proxy.get("/v1/models", headers={"Host": "evil.example"})
    assert response.status == 200
    assert fake.calls["/models"] == 1
    assert fake.seen[-1].headers["Host"] != "evil.example"


async def test_the_proxy_key_is_injected_only_when_the_client_sends_none(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(OPENAI_API_KEY="sk-proxy-owned", PROXY_OPEN_ACCESS="true")
    await (await proxy.post("/v1/chat/completions", json=chat_body("a"))).read()
    assert fake.seen[-1].headers["Authorization"] == "Bearer sk-proxy-owned"
    await (
        await proxy.post("/v1/chat/completions", json=chat_body("b"), headers={"Authorization": "Bearer sk-client"})
    ).read()
    assert fake.seen[-1].headers["Authorization"] == "Bearer sk-client"


async def test_two_api_keys_never_share_entries(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy()
    for key in ("sk-alice", "sk-bob", "sk-alice", "sk-bob"):
        response = await proxy.post(
            "/v1/chat/completions", json=chat_body(), headers={"Authorization": f"Bearer {key}"}
        )
        await response.read()
    assert fake.calls["/chat/completions"] == 2
    assert response.headers["X-Cache"] == "HIT"


async def test_hop_by_hop_headers_are_not_forwarded(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy()
    await (
        await proxy.get(
            "/artworks/x",
            headers={
                "Connection": "keep-alive, x-private-hop",
                "x-private-hop": "1",
                "Proxy-Authorization": "Basic x",
                "Cookie": "session=1",
                "x-end-to-end": "kept",
            },
        )
    ).read()
    seen = {name.lower() for name in fake.seen[-1].headers}
    assert "x-private-hop" not in seen
    assert "proxy-authorization" not in seen
    assert "cookie" not in seen
    assert "x-end-to-end" in seen


async def test_unreachable_upstream_is_a_502_json(make_proxy: ProxyClientFactory, unused_tcp_port: int) -> None:
    proxy = await make_proxy(OPENAI_BASE_URL=f"http://127.0.0.1:{unused_tcp_port}")
    response = await proxy.post("/v1/chat/completions", json=chat_body())
    assert response.status == 502
    body = await response.json()
    assert "could not be reached" in body["error"]["message"]
    assert body["request_id"] == response.headers["X-Request-ID"]


async def test_slow_upstream_is_a_504_json_and_nothing_is_stored(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(PROXY_UPSTREAM_READ_TIMEOUT="0.1")
    response = await proxy.post("/v1/chat/completions", json=chat_body(), headers={"x-fake-delay": "0.5"})
    assert response.status == 504
    assert "did not answer in time" in (await response.json())["error"]["message"]
    again = await proxy.post("/v1/chat/completions", json=chat_body())
    assert again.headers["X-Cache"] == "MISS"


async def test_a_corrupt_entry_is_a_miss_and_is_replaced(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.aioredis.FakeRedis(server=server)
    proxy = await make_proxy(store=FailOpenStore(RedisStore(client)))
    await client.set("artwork_info:x", b"APX\x01garbage")
    response = await proxy.get("/artworks/x")
    assert response.status == 200
    assert response.headers["X-Cache"] == "MISS"
    await response.read()
    stored = await client.get("artwork_info:x")
    assert decode_entry(stored).status == 200
    assert (await proxy.get("/artworks/x")).headers["X-Cache"] == "HIT"


async def test_an_entry_replaced_in_redis_is_served_as_it_is_now(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    """Decoded entries are remembered between hits, but only for the exact bytes they came from:
    another replica's (or an operator's) new entry under the same key is what the next hit gets,
    and damaged bytes under a remembered key are still dropped."""
    client = fakeredis.aioredis.FakeRedis()
    proxy = await make_proxy(store=FailOpenStore(RedisStore(client)))
    first = await (await proxy.get("/artworks/x")).read()
    assert (await proxy.get("/artworks/x")).headers["X-Cache"] == "HIT"
    stored = decode_entry(await client.get("artwork_info:x"))
    replacement = dataclasses.replace(stored, body=b'{"title": "replaced elsewhere"}', stored_at=time.time())
    await client.set("artwork_info:x", encode_entry(replacement))
    response = await proxy.get("/artworks/x")
    assert response.headers["X-Cache"] == "HIT"
    assert await response.read() == b'{"title": "replaced elsewhere"}' != first
    await client.set("artwork_info:x", b"APX\x01garbage")
    assert (await proxy.get("/artworks/x")).headers["X-Cache"] == "MISS"


async def test_redis_down_fails_open(make_proxy: ProxyClientFactory, fake: FakeUpstream, unused_tcp_port: int) -> None:
    store = FailOpenStore(RedisStore.from_url(f"redis://127.0.0.1:{unused_tcp_port}/0", timeout=0.2, max_connections=4))
    proxy = await make_proxy(store=store)
    with capture_logs() as logs:
        for _ in range(5):
            response = await proxy.get("/artworks/x")
            assert response.status == 200
            assert response.headers["X-Cache"] == "MISS"
            await response.read()
    failures = [entry for entry in logs if entry["event"].startswith("Redis connection failed")]
    assert len(failures) == 1
    assert "Connection refused" in failures[0]["event"]
    health = await proxy.get("/redis/health")
    assert health.status == 503
    assert (await health.json())["error"].startswith("Redis connection failed: ")
    await store.close()


async def test_request_cache_controls(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy()
    only = await proxy.get("/artworks/x", headers={"Cache-Control": "only-if-cached"})
    assert only.status == 504
    assert fake.total_calls == 0
    bypass = await proxy.get("/artworks/x", headers={"Cache-Control": "no-store"})
    assert bypass.headers["X-Cache"] == "BYPASS"
    await bypass.read()
    assert (await proxy.get("/artworks/x", headers={"Cache-Control": "only-if-cached"})).status == 504
    await (await proxy.get("/artworks/x")).read()
    refresh = await proxy.get("/artworks/x", headers={"Cache-Control": "no-cache"})
    assert refresh.headers["X-Cache"] == "REFRESH"
    await refresh.read()
    assert (await proxy.get("/artworks/x", headers={"Cache-Control": "only-if-cached"})).headers["X-Cache"] == "HIT"
    assert fake.total_calls == 3


async def test_head_uses_the_get_entry_without_a_body(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy()
    body = await (await proxy.get("/artworks/x")).read()
    head = await proxy.head("/artworks/x")
    assert head.status == 200
    assert head.headers["X-Cache"] == "HIT"
    assert int(head.headers["Content-Length"]) == len(body)
    assert await head.read() == b""


async def test_concurrent_identical_misses_make_one_upstream_call(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    fake.latency = 0.2
    proxy = await make_proxy()
    responses = await asyncio.gather(*(proxy.post("/v1/chat/completions", json=chat_body()) for _ in range(30)))
    bodies = {await response.read() for response in responses}
    assert len(bodies) == 1
    assert fake.calls["/chat/completions"] == 1
    outcomes = sorted(response.headers["X-Cache"] for response in responses)
    assert outcomes.count("MISS") == 1
    assert outcomes.count("COALESCED") == 29


async def test_followers_of_an_unstorable_answer_go_upstream_themselves(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    fake.latency = 0.1
    proxy = await make_proxy()
    headers = {"x-fake-status": "500"}
    responses = await asyncio.gather(
        *(proxy.post("/v1/chat/completions", json=chat_body(), headers=headers) for _ in range(5))
    )
    assert all(response.status == 500 for response in responses)
    assert fake.calls["/chat/completions"] == 5


async def test_the_log_line_names_the_outcome_and_holds_no_secret(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy(OPENAI_API_KEY="sk-proxy-secret-123", PROXY_OPEN_ACCESS="true")
    with capture_logs() as logs:
        for _ in range(2):
            await (
                await proxy.post(
                    "/v1/chat/completions", json=chat_body(), headers={"Authorization": "Bearer sk-client-456"}
                )
            ).read()
    lines = [entry for entry in logs if entry["event"] == "request"]
    assert [line["cache"] for line in lines] == ["MISS", "HIT"]
    assert all(line["route"] == "ai_content" and len(line["key_digest"]) == 16 for line in lines)
    text = json.dumps(logs)
    assert "sk-client-456" not in text
    assert "sk-proxy-secret-123" not in text
    assert "Mona Lisa" not in text
