"""The HTTP edge: bad input gets a clear JSON error, never a 500, never a forward."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.app import create_app
from tests.conftest import ProxyClientFactory, chat_body, serve_app, settings_for
from tests.fake_upstream import FakeUpstream


async def raw_request(proxy: TestClient[web.Request, web.Application], data: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (an HTTP client library would normalise the path first)."""
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(data)
    await writer.drain()
    response = await reader.read()
    writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_path_traversal_is_refused(proxy: TestClient[web.Request, web.Application], fake: FakeUpstream) -> None:
    for path in (b"/v1/../redis/clear", b"/v1/%2E%2E/redis/clear", b"/artworks/./x", b"/artworks/%2e%2e"):
        status, body = await raw_request(
            proxy, b"DELETE " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status == 400, path
        assert b"error" in body
    assert fake.total_calls == 0


async def test_an_absolute_uri_target_cannot_choose_the_upstream(
    proxy: TestClient[web.Request, web.Application], fake: FakeUpstream
) -> None:
    request = b"GET http://evil.example/v1/models HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    status, _ = await raw_request(proxy, request)
    assert status == 200
    assert fake.calls["/models"] == 1  # the configured upstream answered, not evil.example


async def test_oversized_bodies_are_a_413_before_reading(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy(PROXY_MAX_REQUEST_BYTES="1KiB")
    response = await proxy.post("/v1/chat/completions", data=b"x" * 5000, headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert "limit" in (await response.json())["error"]["message"]

    async def chunks():  # no Content-Length: refused while streaming in
        for _ in range(10):
            yield b"y" * 512

    streamed = await proxy.post("/v1/chat/completions", data=chunks())
    assert streamed.status == 413
    assert fake.total_calls == 0


async def test_a_method_a_route_does_not_allow_is_a_405(proxy: TestClient[web.Request, web.Application]) -> None:
    response = await proxy.get("/v1/chat/completions")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert "not allowed" in (await response.json())["error"]["message"]
    admin = await proxy.post("/redis/clear")
    assert admin.status == 405
    assert admin.headers["Allow"] == "DELETE"


async def test_malformed_json_is_forwarded_for_the_upstream_to_judge(
    proxy: TestClient[web.Request, web.Application], fake: FakeUpstream
) -> None:
    response = await proxy.post("/v1/embeddings", data=b'{"input": ', headers={"Content-Type": "application/json"})
    assert response.status == 500  # the fake fails to parse it; the proxy passed it through
    assert fake.seen[-1].body == b'{"input": '


async def test_invalid_percent_encoding_in_a_parameter(proxy: TestClient[web.Request, web.Application]) -> None:
    response = await proxy.get("/artworks/%FF%FE")
    assert response.status == 400
    assert "percent-encoding" in (await response.json())["error"]["message"]


async def test_request_id_is_kept_when_sane_and_replaced_when_not(
    proxy: TestClient[web.Request, web.Application],
) -> None:
    kept = await proxy.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert kept.headers["X-Request-ID"] == "abc-123"
    replaced = await proxy.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert replaced.headers["X-Request-ID"] != "x" * 500


async def test_probes(proxy: TestClient[web.Request, web.Application]) -> None:
    assert (await (await proxy.get("/healthz")).json()) == {"status": "alive"}
    ready = await proxy.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"
    health = await proxy.get("/redis/health")
    assert health.status == 200
    body = await health.json()
    assert body["status"] == "healthy"
    assert body["store"] == "redis"
    assert body["ping_ms"] >= 0


async def test_clear_a_pattern_only_inside_the_namespaces(
    proxy: TestClient[web.Request, web.Application], fake: FakeUpstream
) -> None:
    await (await proxy.get("/artworks/a")).read()
    await (await proxy.get("/artworks/b/similar")).read()
    await (await proxy.post("/v1/chat/completions", json=chat_body())).read()
    refused = await proxy.delete("/redis/clear/session:*")
    assert refused.status == 400
    assert "outside the proxy's namespaces" in (await refused.json())["error"]["message"]
    cleared = await proxy.delete("/redis/clear/artwork_info:*")
    assert (await cleared.json())["removed"] == 1
    assert (await proxy.get("/artworks/a")).headers["X-Cache"] == "MISS"
    assert (await proxy.get("/artworks/b/similar")).headers["X-Cache"] == "HIT"
    ai = await proxy.delete("/redis/clear/ai_content:chat.completions:*")
    assert (await ai.json())["removed"] == 1


async def test_admin_token_protects_clear(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy(PROXY_ADMIN_TOKEN="t0ken-for-tests")
    missing = await proxy.delete("/redis/clear")
    assert missing.status == 401
    wrong = await proxy.delete("/redis/clear", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    right = await proxy.delete("/redis/clear", headers={"Authorization": "Bearer t0ken-for-tests"})
    assert right.status == 200


async def test_malformed_and_oversized_headers_are_rejected_not_crashed(
    proxy: TestClient[web.Request, web.Application], fake: FakeUpstream
) -> None:
    huge = b"GET /artworks/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\nConnection: close\r\n\r\n"
    status, _ = await raw_request(proxy, huge)
    assert 400 <= status < 500
    control = b"GET /artworks/x HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\nConnection: close\r\n\r\n"
    status, _ = await raw_request(proxy, control)
    assert status == 400
    split = b"GET /artworks/x HTTP/1.1\r\nHost: x\r\nX-Split: a\rInjected: b\r\nConnection: close\r\n\r\n"
    status, _ = await raw_request(proxy, split)
    assert status == 400
    assert fake.total_calls == 0


async def test_an_upstream_cookie_never_reaches_another_clients_request(
    upstream_url: str, aiohttp_client, fake: FakeUpstream
) -> None:  # type: ignore[no-untyped-def]
    # By host name, as real upstreams are addressed (a client cookie jar ignores IP addresses).
    named = upstream_url.replace("127.0.0.1", "localhost")
    app = create_app(settings_for(named))
    proxy = await aiohttp_client(serve_app(app))
    first = await proxy.post("/v1/chat/completions", json=chat_body("one"), headers={"x-fake-set-cookie": "1"})
    assert first.headers["Set-Cookie"].startswith("session=abc")  # passed on to the client that got it

    await (await proxy.post("/v1/chat/completions", json=chat_body("two"))).read()

    assert [request.headers.get("Cookie") for request in fake.seen] == [None, None]
