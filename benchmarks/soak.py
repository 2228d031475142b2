"""Load and soak: many concurrent connections of mixed hits, misses and streams for a fixed time.

    python -m benchmarks.soak [--duration 60] [--connections 200] [--rss-growth-mb 30]

Starts the fake upstream and a proxy process on loopback (the proxy on Redis database 11 under
the prefix `soak:`, deleted afterwards), drives them for `--duration` seconds, samples the
proxy's resident memory every second, and prints a summary. Exits 1 if any request failed or
resident memory grew by more than `--rss-growth-mb` between the end of the warm-up (the first
quarter) and the end. It stops by itself and stops every process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis.asyncio as redis

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/11"
PREFIX = "soak:"


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


async def wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def request_for(rng: random.Random, serial: int) -> tuple[str, str, dict[str, object] | None]:
    """70 % hits over a small set, 20 % unique misses, 10 % streams (half repeated, half unique)."""
    roll = rng.random()
    if roll < 0.35:
        return "GET", f"/artworks/artwork-{rng.randrange(50)}", None
    if roll < 0.7:
        return "POST", "/v1/chat/completions", _chat(f"popular {rng.randrange(50)}", stream=False)
    if roll < 0.9:
        return "POST", "/v1/chat/completions", _chat(f"unique {serial}", stream=False)
    label = f"stream {rng.randrange(20)}" if rng.random() < 0.5 else f"unique stream {serial}"
    return "POST", "/v1/chat/completions", _chat(label, stream=True)


def _chat(content: str, *, stream: bool) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "stream": stream}


async def drive(base: str, connections: int, duration: float, tally: Tally, pid: int) -> None:
    deadline = time.monotonic() + duration
    connector = aiohttp.TCPConnector(limit=connections)
    serial = 0

    async def worker(seed: int) -> None:
        nonlocal serial
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            serial += 1
            method, path, body = request_for(rng, serial)
            try:
                async with session.request(method, base + path, json=body) as response:
                    await response.read()
                    tally.requests += 1
                    if response.status != 200:
                        tally.errors[f"status {response.status}"] += 1
                    tally.outcomes[response.headers.get("X-Cache", "?")] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.requests += 1
                tally.errors[type(exc).__name__] += 1

    async def sample() -> None:
        started = time.monotonic()
        while time.monotonic() < deadline:
            tally.rss_samples.append((time.monotonic() - started, rss_bytes(pid)))
            await asyncio.sleep(1)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(sample(), *(worker(index) for index in range(connections)))


async def clean_redis() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        async for key in client.scan_iter(match=f"{PREFIX}*", count=1000):
            await client.unlink(key)
    finally:
        await client.aclose()


async def main_async(args: argparse.Namespace) -> int:
    upstream_port, proxy_port = free_port(), free_port()
    base_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}
    upstream = start(
        [sys.executable, "-m", "tests.fake_upstream", "--port", str(upstream_port), "--latency", "0.02"], base_env
    )
    proxy_env = {
        **base_env,
        "PROXY_HOST": "127.0.0.1",
        "PROXY_PORT": str(proxy_port),
        "REDIS_URL": REDIS_URL,
        "PROXY_KEY_PREFIX": PREFIX,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}",
        "ARTWORK_API_URL": f"http://127.0.0.1:{upstream_port}",
        "PROXY_ACCESS_LOG": "false",
        "PROXY_DRAIN_DELAY": "0",
    }
    proxy = start([sys.executable, "-m", "proxy", "serve"], proxy_env)
    tally = Tally()
    try:
        await wait_ready(f"http://127.0.0.1:{upstream_port}/__stats")
        await wait_ready(f"http://127.0.0.1:{proxy_port}/healthz")
        started = time.monotonic()
        await drive(f"http://127.0.0.1:{proxy_port}", args.connections, args.duration, tally, proxy.pid)
        elapsed = time.monotonic() - started
    finally:
        for child in (proxy, upstream):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        for child in (proxy, upstream):
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
        await clean_redis()
    warm = [rss for at, rss in tally.rss_samples if at >= args.duration / 4]
    baseline, final = (warm[0], warm[-1]) if warm else (0, 0)
    peak = max((rss for _, rss in tally.rss_samples), default=0)
    growth_mb = (final - baseline) / 2**20
    summary = {
        "duration_s": round(elapsed, 1),
        "connections": args.connections,
        "requests": tally.requests,
        "requests_per_s": round(tally.requests / elapsed),
        "outcomes": dict(tally.outcomes),
        "errors": dict(tally.errors),
        "rss_after_warmup_mb": round(baseline / 2**20, 1),
        "rss_end_mb": round(final / 2**20, 1),
        "rss_peak_mb": round(peak / 2**20, 1),
        "rss_growth_mb": round(growth_mb, 1),
        "rss_growth_bound_mb": args.rss_growth_mb,
    }
    print(json.dumps(summary, indent=2))
    ok = not tally.errors and growth_mb <= args.rss_growth_mb and tally.requests > 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--connections", type=int, default=200, help="concurrent connections (default 200)")
    parser.add_argument("--rss-growth-mb", type=float, default=30.0, help="allowed RSS growth after warm-up")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
