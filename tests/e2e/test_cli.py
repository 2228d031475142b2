"""The command line: help, one-line errors for bad configuration, the embedded default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.processes import REPO, ProxyProcess, free_port

pytestmark = pytest.mark.slow


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_help_explains_every_option() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for option in (
        "--host",
        "--port",
        "--routes",
        "--redis-url",
        "--key-prefix",
        "--log-level",
        "--log-format",
        "--no-access-log",
        "PROXY_PORT",
        "REDIS_URL",
    ):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"PROXY_PORT": "not-a-port"}, "invalid setting PROXY_PORT"),
        ({"REDIS_URL": "mysql://db"}, "invalid setting REDIS_URL"),
        ({"PROXY_ROUTES": "/nonexistent/routes.toml"}, "does not exist"),
    ],
)
def test_bad_configuration_is_one_line_and_a_non_zero_exit(env: dict[str, str], fragment: str) -> None:
    result = run_cli(env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_a_bad_route_file_names_the_field(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\nname = "x"\npath = "/x"\nupstream = "openai"\nttl = "forever"\n')
    result = run_cli(env={"PROXY_ROUTES": str(routes)})
    assert result.returncode == 2
    assert "route 'x'.ttl" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_without_any_redis_it_starts_on_the_embedded_store(tmp_path: Path) -> None:
    # REDIS_PORT points nowhere? No: with no Redis variable at all the proxy probes localhost:6379.
    # Here we force the fallback by naming the memory store explicitly, as the README's run command
    # does on a machine without Redis.
    process = ProxyProcess({"REDIS_URL": "memory://", "PROXY_PORT": str(free_port())}, tmp_path / "log")
    await process.start()
    async with aiohttp.ClientSession() as session, session.get(f"{process.url}/redis/health") as response:
        body = await response.json()
    assert body["store"] == "memory"
    assert await process.stop() == 0
