"""SIGTERM: readiness turns 503, in-flight requests finish, the process exits 0."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import chat_body
from tests.processes import ProxyProcess

pytestmark = pytest.mark.slow


async def test_sigterm_drains_requests_in_flight(upstream_url: str, tmp_path: Path) -> None:
    process = ProxyProcess(
        {
            "OPENAI_BASE_URL": upstream_url,
            "REDIS_URL": "memory://",
            "PROXY_DRAIN_DELAY": "1",
            "PROXY_SHUTDOWN_GRACE": "10",
        },
        tmp_path / "proxy.log",
    )
    await process.start()
    async with aiohttp.ClientSession() as session:
        slow = asyncio.ensure_future(
            session.post(f"{process.url}/v1/chat/completions", json=chat_body("slow"), headers={"x-fake-delay": "1.5"})
        )
        await asyncio.sleep(0.3)
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        async with session.get(f"{process.url}/readyz") as ready:
            assert ready.status == 503
            assert (await ready.json())["status"] == "draining"
        async with session.get(f"{process.url}/healthz") as alive:
            assert alive.status == 200  # liveness never fails on shutdown
        response = await slow
        assert response.status == 200
        assert "slow" in (await response.json())["choices"][0]["message"]["content"]
    assert await process.wait() == 0
    assert '"event":"draining"' in process.output()
    assert '"event":"stopped"' in process.output()
