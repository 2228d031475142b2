"""A full run at debug level, with known secrets, never writes one of them to the log."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from proxy.access import hash_access_key
from tests.conftest import chat_body
from tests.processes import ProxyProcess

pytestmark = pytest.mark.slow

UPSTREAM_KEY = "sk-upstream-secret-7f3a9c2e"
ADMIN_TOKEN = "admin-secret-4b8d1e6f"
CLIENT_KEY = "sk-client-secret-91c0d7aa"
REDIS_PASSWORD = "redis-secret-2e5f8a1b"
JWT_SECRET = "jwt-secret-0d9c3b7e"


async def test_secrets_never_reach_the_log(upstream_url: str, tmp_path: Path, unused_tcp_port: int) -> None:
    process = ProxyProcess(
        {
            "OPENAI_BASE_URL": upstream_url,
            "ARTWORK_API_URL": upstream_url,
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "PROXY_ADMIN_TOKEN": ADMIN_TOKEN,
            "PROXY_ACCESS_KEYS": "frontend:" + hash_access_key(CLIENT_KEY),
            "PROXY_JWT_HS256_SECRET": JWT_SECRET,
            # A Redis that refuses connections, so error paths log too.
            "REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{unused_tcp_port}/0",
            "PROXY_LOG_LEVEL": "debug",
        },
        tmp_path / "proxy.log",
    )
    await process.start()
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as session:
        for headers, status in (
            ({}, 401),
            ({"Authorization": f"Bearer {CLIENT_KEY}"}, 200),
            ({"Authorization": f"Bearer {CLIENT_KEY}x"}, 401),
            ({"Authorization": "Bearer a.b.c"}, 401),
        ):
            async with session.post(f"{process.url}/v1/chat/completions", json=chat_body(), headers=headers) as r:
                assert r.status == status
        async with session.get(f"{process.url}/v1/files", headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as r:
            assert r.status == 404
        async with session.delete(f"{process.url}/redis/clear", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        for path in ("/redis/stats", "/redis/health", "/metrics"):
            async with session.get(f"{process.url}{path}", headers=auth) as r:
                await r.read()
        async with session.get(
            f"{process.url}/artworks/x?api_key={CLIENT_KEY}", headers={"X-Cache-Debug": ADMIN_TOKEN}
        ) as r:
            await r.read()
    assert await process.stop() == 0
    log = process.output()
    assert "Redis connection failed" in log  # the run did exercise the error paths
    for secret in (UPSTREAM_KEY, ADMIN_TOKEN, CLIENT_KEY, REDIS_PASSWORD, JWT_SECRET):
        assert secret not in log, secret
