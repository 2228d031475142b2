"""`artstory-proxy health | stats | clear`, on the real Redis and through a running proxy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as redis

from proxy.entry import Entry, encode_entry
from tests.conftest import REDIS_TEST_URL
from tests.processes import REPO, ProxyProcess

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_operations_on_the_real_redis(real_redis: redis.Redis, key_prefix: str) -> None:
    env = {"REDIS_URL": REDIS_TEST_URL, "PROXY_KEY_PREFIX": key_prefix}
    entry = encode_entry(Entry(200, (("Content-Type", "application/json"),), b"{}", 0.0, 60))
    for key in ("artwork_info:a", "artwork_info:b", "ai_content:chat.completions:x"):
        await real_redis.set(key_prefix + key, entry, ex=60)
    await real_redis.set(key_prefix + "session:keep", b"theirs", ex=60)
    try:
        health = cli("health", env=env)
        assert health.returncode == 0
        assert json.loads(health.stdout)["status"] == "healthy"

        stats = json.loads(cli("stats", env=env).stdout)
        assert stats["store"]["namespaces"]["artwork_info"]["entries"] == 2

        refused = cli("clear", "session:*", env=env)
        assert refused.returncode == 2
        assert "outside the proxy's namespaces" in refused.stderr

        cleared = cli("clear", "artwork_info:*", env=env)
        assert json.loads(cleared.stdout)["removed"] == 2
        everything = cli("clear", env=env)
        assert json.loads(everything.stdout)["removed"] == 1
        assert await real_redis.get(key_prefix + "session:keep") == b"theirs"
    finally:
        await real_redis.delete(key_prefix + "session:keep")


def test_health_of_an_unreachable_redis_exits_1(unused_tcp_port: int) -> None:
    result = cli("health", env={"REDIS_URL": f"redis://127.0.0.1:{unused_tcp_port}/0"})
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"] == "Redis connection failed: Connection refused"


async def test_with_the_embedded_store_the_cli_asks_the_running_proxy(tmp_path: Path) -> None:
    process = ProxyProcess({"REDIS_URL": "memory://"}, tmp_path / "proxy.log")
    await process.start()
    try:
        env = {"REDIS_URL": "memory://", "PROXY_PORT": str(process.port)}
        health = cli("health", env=env)
        assert health.returncode == 0
        assert json.loads(health.stdout)["store"] == "memory"
        cleared = cli("clear", "artwork_info:*", env=env)
        assert json.loads(cleared.stdout) == {"status": "cleared", "pattern": "artwork_info:*", "removed": 0}
    finally:
        assert await process.stop() == 0
