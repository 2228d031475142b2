"""`artstory-proxy warm FILE`: requests replayed through a running proxy fill its cache."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import chat_body
from tests.fake_upstream import FakeUpstream
from tests.processes import REPO, ProxyProcess

pytestmark = pytest.mark.slow


async def test_warming_fills_the_cache_and_reports(upstream_url: str, fake: FakeUpstream, tmp_path: Path) -> None:
    process = ProxyProcess(
        {"OPENAI_BASE_URL": upstream_url, "ARTWORK_API_URL": upstream_url, "REDIS_URL": "memory://"},
        tmp_path / "proxy.log",
    )
    await process.start()
    requests = tmp_path / "popular.jsonl"
    lines = [json.dumps({"path": f"/artworks/{name}"}) for name in ("Mona Lisa", "Guernica", "The Starry Night")]
    lines += [json.dumps({"path": f"/artworks/{name}/similar"}) for name in ("Mona Lisa", "Guernica")]
    lines += [
        json.dumps({"method": "POST", "path": "/v1/chat/completions", "body": chat_body(f"story {index}")})
        for index in range(5)
    ]
    lines += [
        json.dumps({"path": "/artworks/Mona Lisa"}),  # already cached by then
        "# a comment",
        "{not json",
        json.dumps({"path": "/v1/files"}),  # no such route
    ]
    requests.write_text("\n".join(lines) + "\n")
    try:
        # Not subprocess.run: the fake upstream runs in this test's event loop, which must keep going.
        warm = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "warm",
            str(requests),
            "--concurrency",
            "1",
            "--proxy-url",
            process.url,
            cwd=REPO,
            env={"PATH": os.environ.get("PATH", "")},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(warm.communicate(), 60)
        summary = json.loads(stdout)
        assert warm.returncode == 1  # two lines failed
        assert summary["stored"] == 10
        assert summary["already_cached"] == 1
        assert summary["failed"] == 2
        assert any("not JSON" in failure for failure in summary["failures"])
        assert any("/v1/files -> 404" in failure for failure in summary["failures"])
        assert "warm: 13/13" in stderr.decode()
        assert fake.total_calls == 10
        async with aiohttp.ClientSession() as session, session.get(f"{process.url}/artworks/guernica") as response:
            assert response.headers["X-Cache"] == "HIT"
    finally:
        assert await process.stop() == 0
