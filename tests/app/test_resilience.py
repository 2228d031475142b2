"""Upstream faults, tenants under concurrency, and random input that must never break the proxy."""

from __future__ import annotations

import asyncio
import hashlib
import random
import string
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.state import PROXY
from tests.conftest import ProxyClientFactory, chat_body
from tests.fake_upstream import FakeUpstream

FLAKY_ROUTES = """
[[route]]
name = "flaky_get"
path = "/flaky/{name}"
upstream = "flaky"
upstream_path = "/things/{name}"
key = "{name}"

[[route]]
name = "flaky_post"
methods = ["POST"]
path = "/flaky-post"
upstream = "flaky"
upstream_path = "/things/post"
"""


async def flaky_upstream(aiohttp_server) -> tuple[TestServer, dict[str, int]]:  # type: ignore[no-untyped-def]
    """Drops the connection without an answer on every other request."""
    seen = {"count": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen["count"] += 1
        if seen["count"] % 2 == 1:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/things/{name}", handler)
    return await aiohttp_server(app), seen


async def test_idempotent_requests_are_retried_once_on_a_dropped_connection(
    make_proxy: ProxyClientFactory,
    aiohttp_server,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    server, seen = await flaky_upstream(aiohttp_server)
    routes = tmp_path / "routes.toml"
    routes.write_text(FLAKY_ROUTES)
    proxy = await make_proxy(PROXY_ROUTES=str(routes), PROXY_UPSTREAM_FLAKY_URL=str(server.make_url("")).rstrip("/"))
    response = await proxy.get("/flaky/a")
    assert response.status == 200
    assert seen["count"] == 2  # dropped once, retried once
    post = await proxy.post("/flaky-post", data=b"x")
    assert post.status == 502  # a POST is never sent twice
    body = await post.json()
    assert body["request_id"] == post.headers["X-Request-ID"]
    assert seen["count"] == 3


async def test_many_tenants_never_receive_each_others_answers(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    fake.latency = 0.05
    proxy = await make_proxy()
    tenants = [f"sk-tenant-{index:02d}" for index in range(20)]
    plan = [tenant for tenant in tenants for _ in range(8)]
    random.Random(7).shuffle(plan)

    async def ask(key: str) -> tuple[str, str]:
        response = await proxy.post(
            "/v1/chat/completions", json=chat_body("same question"), headers={"Authorization": f"Bearer {key}"}
        )
        return key, (await response.json())["tenant"]

    for key, tenant in await asyncio.gather(*(ask(key) for key in plan)):
        assert tenant == hashlib.sha256(f"Bearer {key}".encode()).hexdigest()[:12]
    assert fake.calls["/chat/completions"] == len(tenants)


PATH_CHARS = string.ascii_letters + string.digits + "-._~%/:@!$&'()*+,;=?#[]\\ \x00\x7f\u00e9\u4e2d"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.text(alphabet=PATH_CHARS, max_size=60),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "FETCH"]),
    headers=st.dictionaries(
        st.text(alphabet=string.ascii_letters + "-", min_size=1, max_size=20),
        st.text(alphabet=string.printable.replace("\r", "").replace("\n", ""), max_size=40),
        max_size=5,
    ),
    body=st.binary(max_size=300),
)
async def test_random_requests_never_cause_a_500(
    proxy: TestClient[web.Request, web.Application],
    fake: FakeUpstream,
    path: str,
    method: str,
    headers: dict[str, str],
    body: bytes,
) -> None:
    target = "/" + path.encode("utf-8", "surrogatepass").decode("latin-1")
    request = f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    for name, value in headers.items():
        if name.lower() not in ("host", "connection", "content-length", "transfer-encoding"):
            request += f"{name}: {value}\r\n"
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(request.encode("latin-1") + b"\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
    assert status is None or status < 500 or status in (502, 504), answer[:300]
    json_error = b"application/json" in answer.split(b"\r\n\r\n")[0]
    if status is not None and 400 <= status < 500 and json_error and method != "HEAD":
        assert b'"error"' in answer
    # Nothing outside the route table was ever forwarded.
    routed = {
        "/chat/completions",
        "/completions",
        "/embeddings",
        "/images/generations",
        "/responses",
        "/moderations",
        "/models",
    }
    assert all(seen.path in routed or seen.path.startswith(("/artworks/", "/images/")) for seen in fake.seen)
    assert not proxy.app[PROXY].flights  # every fetch ended and left nothing behind
