"""Running the proxy as a real process (`python -m proxy`), as users and orchestrators do."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProxyProcess:
    """`python -m proxy serve` with the given environment, its output kept in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *, args: tuple[str, ...] = ()) -> None:
        self.port = int(env.get("PROXY_PORT") or free_port())
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "PROXY_HOST": "127.0.0.1",
            "PROXY_LOG_FORMAT": "json",
            "PROXY_DRAIN_DELAY": "0",
            "PROXY_WORKERS": "1",
            **env,
            "PROXY_PORT": str(self.port),
        }
        self.log_path = log_path
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, wait: float = 15.0) -> None:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, waited for below
            [sys.executable, "-m", "proxy", "serve", *self.args],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + wait
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"proxy exited with {self.process.returncode}: {self.output()}")
                try:
                    async with session.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"proxy did not start: {self.output()}")

    async def stop(self, wait: float = 15.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + wait
        while self.process.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a child
            await asyncio.sleep(0.05)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        return self.process.returncode

    async def wait(self, wait: float = 15.0) -> int | None:
        """The exit code once the process ends by itself, or None if it is still running."""
        assert self.process is not None
        deadline = time.monotonic() + wait
        while self.process.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a child
            await asyncio.sleep(0.05)
        return self.process.poll()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
