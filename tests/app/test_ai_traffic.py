"""AI traffic: coalescing, what an AI route stores, request-level controls, image links."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest

from proxy.entry import decode_entry
from proxy.store.failopen import FailOpenStore
from proxy.store.redis import RedisStore
from tests.conftest import ProxyClientFactory, ReplicasFactory, chat_body
from tests.fake_upstream import FakeUpstream


async def test_200_concurrent_identical_requests_make_one_upstream_call(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    fake.latency = 0.3
    proxy = await make_proxy()
    responses = await asyncio.gather(
        *(proxy.post("/v1/chat/completions", json=chat_body(stream=True)) for _ in range(200))
    )
    bodies = {await response.read() for response in responses}
    assert len(bodies) == 1
    assert next(iter(bodies)).rstrip().endswith(b"data: [DONE]")
    assert fake.calls["/chat/completions"] == 1


async def test_a_leader_that_hangs_up_does_not_abort_its_followers(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    fake.latency = 0.3
    proxy = await make_proxy()
    leader = asyncio.ensure_future(proxy.post("/v1/chat/completions", json=chat_body()))
    await asyncio.sleep(0.05)
    followers = [asyncio.ensure_future(proxy.post("/v1/chat/completions", json=chat_body())) for _ in range(5)]
    await asyncio.sleep(0.05)
    leader.cancel()
    for follower in followers:
        response = await follower
        assert response.status == 200
        assert response.headers["X-Cache"] == "COALESCED"
        assert (await response.json())["choices"][0]["message"]["content"].startswith("Story 1")
    assert fake.calls["/chat/completions"] == 1


@pytest.mark.parametrize(
    ("header", "modes"),
    [
        ({"x-fake-finish-reason": "length"}, (False, True)),
        ({"x-fake-finish-reason": "content_filter"}, (False, True)),
        ({"x-fake-empty-choices": "1"}, (False,)),
        ({"x-fake-error-body": "1"}, (False,)),
    ],
)
async def test_truncated_empty_or_error_answers_are_not_stored(
    make_proxy: ProxyClientFactory, fake: FakeUpstream, header: dict[str, str], modes: tuple[bool, ...]
) -> None:
    proxy = await make_proxy()
    for stream in modes:
        for _ in range(2):
            response = await proxy.post("/v1/chat/completions", json=chat_body(stream=stream), headers=header)
            assert response.status == 200
            assert response.headers["X-Cache"] == "MISS"
            await response.read()
    assert fake.calls["/chat/completions"] == 2 * len(modes)


async def test_x_cache_ttl_stores_for_the_asked_time_within_the_route_ceiling(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    client = fakeredis.aioredis.FakeRedis()
    proxy = await make_proxy(store=FailOpenStore(RedisStore(client)))
    await (await proxy.post("/v1/chat/completions", json=chat_body("short"), headers={"X-Cache-TTL": "60"})).read()
    [key] = await client.keys("ai_content:*")
    assert 55_000 < await client.pttl(key) <= 60_000
    assert decode_entry(await client.get(key)).fresh_for == 60
    too_long = await proxy.post("/v1/chat/completions", json=chat_body("long"), headers={"X-Cache-TTL": "999999"})
    assert too_long.status == 400
    assert "from 1 to 86400" in (await too_long.json())["error"]["message"]
    garbage = await proxy.get("/artworks/x", headers={"X-Cache-TTL": "soon"})
    assert garbage.status == 400
    assert fake.calls["/chat/completions"] == 1
    assert "x-cache-ttl" not in {name.lower() for name in fake.seen[-1].headers}


async def test_the_debug_header_explains_the_key(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy()
    response = await proxy.post(
        "/v1/chat/completions",
        json=chat_body(),
        headers={"X-Cache-Debug": "1", "Authorization": "Bearer sk-a", "OpenAI-Beta": "assistants=v2"},
    )
    assert response.headers["X-Cache-Key"].startswith("ai_content:chat.completions:")
    fields = response.headers["X-Cache-Key-Fields"].split(", ")
    assert fields == [
        "method",
        "upstream-path",
        "media-type",
        "header:openai-beta",
        "credential-fingerprint",
        "body:json-canonical",
    ]
    plain = await proxy.post("/v1/chat/completions", json=chat_body())
    assert "X-Cache-Key" not in plain.headers


async def test_the_debug_header_needs_the_admin_token_when_one_is_set(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy(PROXY_ADMIN_TOKEN="debug-token-123")
    assert (await proxy.get("/artworks/x", headers={"X-Cache-Debug": "1"})).status == 401
    allowed = await proxy.get("/artworks/x", headers={"X-Cache-Debug": "debug-token-123"})
    assert allowed.headers["X-Cache-Key"] == "artwork_info:x"
    assert allowed.headers["X-Cache-Key-Fields"] == "path-param:artwork_name"


async def test_image_generations_never_outlive_their_links(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    client = fakeredis.aioredis.FakeRedis()
    proxy = await make_proxy(store=FailOpenStore(RedisStore(client)))
    prompt = {"model": "dall-e-3", "prompt": "a starry night over Istanbul"}
    await (await proxy.post("/v1/images/generations", json=prompt, headers={"x-fake-url-expires-in": "600"})).read()
    [key] = await client.keys("ai_content:images.generations:*")
    assert 500 < decode_entry(await client.get(key)).fresh_for <= 540  # 600 s minus the safety margin
    soon = {**prompt, "prompt": "a link about to die"}
    for _ in range(2):
        response = await proxy.post("/v1/images/generations", json=soon, headers={"x-fake-url-expires-in": "30"})
        assert response.headers["X-Cache"] == "MISS"
        await response.read()
    b64 = {**prompt, "response_format": "b64_json"}
    await (await proxy.post("/v1/images/generations", json=b64)).read()
    assert (await proxy.post("/v1/images/generations", json=b64)).headers["X-Cache"] == "HIT"
    assert fake.calls["/images/generations"] == 4


async def test_one_replica_waits_for_the_others_entry(fake: FakeUpstream, make_replicas: ReplicasFactory) -> None:
    replicas = await make_replicas()
    fake.latency = 0.3
    first = asyncio.ensure_future(replicas[0].post("/v1/chat/completions", json=chat_body()))
    await asyncio.sleep(0.1)
    second = await replicas[1].post("/v1/chat/completions", json=chat_body())
    assert second.headers["X-Cache"] == "COALESCED"
    assert (await first).headers["X-Cache"] == "MISS"
    assert await (await first).read() == await second.read()
    assert fake.calls["/chat/completions"] == 1


async def test_replicas_do_not_reuse_an_unstorable_answer(fake: FakeUpstream, make_replicas: ReplicasFactory) -> None:
    replicas = await make_replicas()
    fake.latency = 0.2
    headers = {"x-fake-status": "503"}
    first = asyncio.ensure_future(replicas[0].post("/v1/chat/completions", json=chat_body(), headers=headers))
    await asyncio.sleep(0.05)
    second = await replicas[1].post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert second.status == 503
    assert (await first).status == 503
    assert fake.calls["/chat/completions"] == 2


async def test_an_embedding_batch_reuses_known_inputs_and_asks_for_the_rest(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    from tests.fake_upstream import _vector

    proxy = await make_proxy()
    model = {"model": "text-embedding-3-small"}
    first = await proxy.post("/v1/embeddings", json={**model, "input": "The Starry Night"})
    assert first.headers["X-Cache"] == "MISS"
    await first.read()
    batch = ["Mona Lisa", "The Starry Night", "Guernica"]
    response = await proxy.post("/v1/embeddings", json={**model, "input": batch})
    assert response.status == 200
    assert response.headers["X-Cache"] == "MISS"
    assert response.headers["X-Cache-Inputs"] == "hits=1, misses=2"
    body = await response.json()
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert [item["embedding"] for item in body["data"]] == [_vector(text) for text in batch]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] >= 3
    # The upstream saw one request for the two inputs it did not know, in order.
    assert fake.calls["/embeddings"] == 2
    assert fake.seen[-1].body
    assert orjson_loads(fake.seen[-1].body)["input"] == ["Mona Lisa", "Guernica"]
    again = await proxy.post("/v1/embeddings", json={**model, "input": list(reversed(batch))})
    assert again.headers["X-Cache"] == "HIT"
    assert [item["embedding"] for item in (await again.json())["data"]] == [_vector(t) for t in reversed(batch)]
    single = await proxy.post("/v1/embeddings", json={**model, "input": "Guernica"})
    assert single.headers["X-Cache"] == "HIT"
    assert (await single.json())["data"][0]["embedding"] == _vector("Guernica")
    assert fake.calls["/embeddings"] == 2
    other_model = await proxy.post("/v1/embeddings", json={"model": "text-embedding-3-large", "input": batch})
    assert other_model.headers["X-Cache-Inputs"] == "hits=0, misses=3"


def orjson_loads(body: bytes) -> dict:  # type: ignore[type-arg]
    import orjson

    return orjson.loads(body)  # type: ignore[no-any-return]
