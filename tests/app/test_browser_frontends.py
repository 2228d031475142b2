"""Serving browsers: CORS, client access keys and JWTs, rate limits and budgets."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.access import hash_access_key
from proxy.store.failopen import FailOpenStore
from proxy.store.redis import RedisStore
from tests.conftest import ProxyClientFactory, ReplicasFactory, chat_body
from tests.fake_upstream import FakeUpstream

APP = "https://artstory.example"
EVIL = "https://evil.example"
KEYED = {"OPENAI_API_KEY": "sk-held-by-the-proxy", "PROXY_ACCESS_KEYS": "frontend:" + hash_access_key("ask-frontend")}
FRONTEND = {"Authorization": "Bearer ask-frontend"}


async def test_preflight_is_answered_by_the_proxy(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy(PROXY_CORS_ORIGINS=APP)
    response = await proxy.options(
        "/v1/chat/completions",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, x-cache-ttl",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert response.headers["Access-Control-Allow-Methods"] == "POST"
    assert "x-stainless-os" in response.headers["Access-Control-Allow-Headers"]
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert fake.total_calls == 0


async def test_preflights_that_are_not_allowed(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy(PROXY_CORS_ORIGINS=APP)
    wrong_method = await proxy.options(
        "/v1/chat/completions", headers={"Origin": APP, "Access-Control-Request-Method": "DELETE"}
    )
    assert wrong_method.status == 403
    assert "Access-Control-Allow-Origin" not in wrong_method.headers
    odd_header = await proxy.options(
        "/artworks/x",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-something-else",
        },
    )
    assert odd_header.status == 403
    evil = await proxy.options(
        "/v1/chat/completions", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"}
    )
    assert evil.status == 403
    assert "Access-Control-Allow-Origin" not in evil.headers
    stats = await (await proxy.get("/redis/stats")).json()
    assert stats["refusals"]["cors_preflight"] == 2
    assert stats["refusals"]["cors_origin"] == 1
    assert fake.total_calls == 0


async def test_an_allowed_origin_gets_cors_headers_on_hits_misses_and_streams(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy(PROXY_CORS_ORIGINS=f"{APP}, http://localhost:5173")
    for body in (chat_body(), chat_body(), chat_body(stream=True)):
        response = await proxy.post("/v1/chat/completions", json=body, headers={"Origin": APP})
        await response.read()
        assert response.headers["Access-Control-Allow-Origin"] == APP
        exposed = response.headers["Access-Control-Expose-Headers"]
        for header in ("X-Cache", "Cache-Status", "Age", "X-Request-ID"):
            assert header in exposed
        assert "Origin" in response.headers["Vary"]


async def test_a_disallowed_origin_is_refused_and_nothing_is_forwarded(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    for env in ({"PROXY_CORS_ORIGINS": APP}, {}):  # none allowed by default
        proxy = await make_proxy(**env)
        response = await proxy.get("/artworks/x", headers={"Origin": EVIL})
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "not allowed" in (await response.json())["error"]["message"]
    assert fake.total_calls == 0
    server_to_server = await proxy.get("/artworks/x")  # no Origin: not a browser
    assert server_to_server.status == 200


async def test_access_keys(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy(**KEYED)
    for headers in ({}, {"Authorization": "Bearer ask-unknown"}, {"Authorization": "Basic ask-frontend"}):
        denied = await proxy.post("/v1/chat/completions", json=chat_body(), headers=headers)
        assert denied.status == 401
        assert denied.headers["WWW-Authenticate"].startswith("Bearer")
    assert fake.total_calls == 0
    for headers in (FRONTEND, {"X-Proxy-Key": "ask-frontend"}):
        allowed = await proxy.post("/v1/chat/completions", json=chat_body(), headers=headers)
        assert allowed.status == 200
        await allowed.read()
    assert fake.calls["/chat/completions"] == 1  # both clients share the entry
    seen = fake.seen[-1].headers
    assert seen["Authorization"] == "Bearer sk-held-by-the-proxy"
    assert "X-Proxy-Key" not in seen
    # Routes whose upstream holds no key of the proxy's need no access key.
    assert (await proxy.get("/artworks/x")).status == 200


def rsa_keys() -> tuple[bytes, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, public.decode()


async def test_jwts(make_proxy: ProxyClientFactory, tmp_path: Path) -> None:
    private_pem, public_pem = rsa_keys()
    key_file = tmp_path / "jwt.pub"
    key_file.write_text(public_pem)
    proxy = await make_proxy(
        OPENAI_API_KEY="sk-held",
        PROXY_JWT_HS256_SECRET="hs-secret-for-tests-0123456789abcdef-0123456789abcdef",
        PROXY_JWT_RS256_PUBLIC_KEY=str(key_file),
        PROXY_JWT_AUDIENCE="artstory",
    )
    now = int(time.time())
    good = {"sub": "user-42", "aud": "artstory", "exp": now + 300}
    cases = [
        (jwt.encode(good, "hs-secret-for-tests-0123456789abcdef-0123456789abcdef", algorithm="HS256"), 200, None),
        (jwt.encode(good, private_pem, algorithm="RS256"), 200, None),
        (
            jwt.encode(
                {**good, "exp": now - 10}, "hs-secret-for-tests-0123456789abcdef-0123456789abcdef", algorithm="HS256"
            ),
            401,
            "expired",
        ),
        (
            jwt.encode(
                {**good, "aud": "other"}, "hs-secret-for-tests-0123456789abcdef-0123456789abcdef", algorithm="HS256"
            ),
            401,
            "audience",
        ),
        (jwt.encode(good, "a-different-secret-0123456789abcdef-0123456789abcdef", algorithm="HS256"), 401, "not valid"),
        (
            jwt.encode(good, "hs-secret-for-tests-0123456789abcdef-0123456789abcdef", algorithm="HS384"),
            401,
            "not valid",
        ),
    ]
    for token, status, fragment in cases:
        response = await proxy.post(
            "/v1/chat/completions", json=chat_body(), headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status == status, fragment
        if fragment:
            assert fragment in (await response.json())["error"]["message"]
        await response.read()


async def test_a_route_can_keep_clients_entries_apart(
    make_proxy: ProxyClientFactory, fake: FakeUpstream, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(
        '[[route]]\nname = "ai_private"\nmethods = ["POST"]\npath = "/v1/chat/completions"\nupstream = "openai"\n'
        'strip_prefix = "/v1"\nshare_entries = false\n'
    )
    keys = ",".join(f"{name}:{hash_access_key(name)}" for name in ("alice", "bob"))
    proxy = await make_proxy(OPENAI_API_KEY="sk-held", PROXY_ACCESS_KEYS=keys, PROXY_ROUTES=str(routes))
    for name in ("alice", "bob", "alice"):
        await (
            await proxy.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": f"Bearer {name}"})
        ).read()
    assert fake.calls["/chat/completions"] == 2


async def test_upstream_limit_refuses_misses_but_hits_go_on(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy(**KEYED, PROXY_RATE_LIMIT_UPSTREAM="2/min")
    for index in range(2):
        assert (await proxy.post("/v1/chat/completions", json=chat_body(f"q{index}"), headers=FRONTEND)).status == 200
    limited = await proxy.post("/v1/chat/completions", json=chat_body("q2"), headers=FRONTEND)
    assert limited.status == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 30
    assert "rate limit" in (await limited.json())["error"]["message"]
    hit = await proxy.post("/v1/chat/completions", json=chat_body("q0"), headers=FRONTEND)
    assert hit.status == 200
    assert hit.headers["X-Cache"] == "HIT"
    assert fake.calls["/chat/completions"] == 2


async def test_hits_can_count_against_the_upstream_limit(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy(**KEYED, PROXY_RATE_LIMIT_UPSTREAM="2/min", PROXY_RATE_LIMIT_SERVE_HITS="false")
    for _ in range(2):
        assert (await proxy.post("/v1/chat/completions", json=chat_body(), headers=FRONTEND)).status == 200
    assert (await proxy.post("/v1/chat/completions", json=chat_body(), headers=FRONTEND)).status == 429


async def test_hit_limit(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy(PROXY_RATE_LIMIT_HITS="3/min")
    statuses = [(await proxy.get("/artworks/x")).status for _ in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]  # one miss, three hits, then the hit bucket is empty


async def test_daily_budget_from_known_usage(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    # Each fake answer uses 12 prompt and 30 completion tokens of gpt-4o: $0.00033.
    proxy = await make_proxy(**KEYED, PROXY_DAILY_BUDGET_USD="0.0006")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "a"}]}
    for content in ("a", "b"):
        response = await proxy.post(
            "/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": content}]}, headers=FRONTEND
        )
        assert response.status == 200
        await response.read()
    spent = await proxy.post(
        "/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "c"}]}, headers=FRONTEND
    )
    assert spent.status == 429
    assert "daily budget" in (await spent.json())["error"]["message"]
    assert 0 < int(spent.headers["Retry-After"]) <= 86400
    assert (await proxy.post("/v1/chat/completions", json=body, headers=FRONTEND)).headers["X-Cache"] == "HIT"
    stats = await (await proxy.get("/redis/stats")).json()
    assert stats["refusals"]["budget_spent"] == 1


async def test_limits_fall_back_to_this_process_when_redis_is_down(
    make_proxy: ProxyClientFactory, unused_tcp_port: int
) -> None:
    store = FailOpenStore(RedisStore.from_url(f"redis://127.0.0.1:{unused_tcp_port}/0", timeout=0.2, max_connections=2))
    proxy = await make_proxy(store=store, PROXY_RATE_LIMIT_UPSTREAM="2/min")
    statuses = [(await proxy.get(f"/artworks/a{index}")).status for index in range(3)]
    assert statuses == [200, 200, 429]
    health = await (await proxy.get("/redis/health")).json()
    assert health["rate_limits"].startswith("local")
    await store.close()


@pytest.mark.parametrize("variable", ["PROXY_RATE_LIMIT_UPSTREAM", "PROXY_RATE_LIMIT_HITS"])
def test_bad_limits_name_the_variable(variable: str) -> None:
    from proxy.errors import SettingsError
    from proxy.settings import Settings

    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: "lots"})


async def test_limits_are_shared_through_redis(make_replicas: ReplicasFactory) -> None:
    replicas = await make_replicas(**KEYED, PROXY_RATE_LIMIT_UPSTREAM="3/min")
    statuses = []
    for index in range(6):
        response = await replicas[index % 2].post("/v1/chat/completions", json=chat_body(f"q{index}"), headers=FRONTEND)
        statuses.append(response.status)
    assert statuses.count(200) == 3
    assert statuses.count(429) == 3
