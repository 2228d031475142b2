"""Clearing a big keyspace while hits are served (issue 3): hit throughput during the clear, and the
longest Redis stall.

    python -m benchmarks.clear [--keys 1000000] [--redis-db 12]

Fills a Redis database of the benchmark's own with `--keys` entries in the `artwork_info`
namespace (proxy-format entries, written with pipelines), starts a proxy on it (pinned to CPU 0)
and a fake upstream, and drives hits on one artwork with wrk (CPU 1). While wrk runs, it sends
`DELETE /redis/clear/artwork_info:*`, and a probe pings Redis every millisecond on a connection of
its own, recording the slowest answer. It prints hit throughput before and during the clear, the
clear's duration and count, and the longest PING; it empties its database at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import redis.asyncio as redis

from proxy.entry import Entry, encode_entry
from tests.processes import free_port

REPO = Path(__file__).resolve().parent.parent
LUA = REPO / "benchmarks" / "lua"


async def fill(client: redis.Redis, count: int) -> None:
    value = encode_entry(Entry(200, (("Content-Type", "application/json"),), b'{"story": "x"}' * 60, time.time(), 7200))
    batch = 10_000
    for start in range(0, count, batch):
        async with client.pipeline(transaction=False) as pipe:
            for index in range(start, min(start + batch, count)):
                pipe.set(f"artwork_info:filler-{index}", value, ex=7200)
            await pipe.execute()


async def probe(url: str, stop: asyncio.Event, worst: list[float]) -> None:
    client = redis.Redis.from_url(url)
    try:
        while not stop.is_set():
            started = time.perf_counter()
            await client.ping()
            worst[0] = max(worst[0], time.perf_counter() - started)
            await asyncio.sleep(0.001)
    finally:
        await client.aclose()


def wrk(url: str, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["taskset", "-c", "1", "wrk", "-t1", "-c50", f"-d{seconds:g}s", "-s", "fixed.lua", url],
        cwd=LUA,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def requests_per_second(output: str) -> float:
    for line in output.splitlines():
        if line.startswith("BENCH_RESULT "):
            result = json.loads(line.split(" ", 1)[1])
            return float(result["requests"]) / (result["duration_us"] / 1e6)
    raise RuntimeError(f"wrk printed no result: {output[-500:]}")


async def main_async(args: argparse.Namespace) -> None:
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    client = redis.Redis.from_url(redis_url)
    if await client.dbsize():
        raise SystemExit(f"database {args.redis_db} is not empty: choose another with --redis-db")
    upstream_port, proxy_port = free_port(), free_port()
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}
    children = [
        subprocess.Popen(  # noqa: ASYNC220 - long-lived children, stopped below
            ["taskset", "-c", "1", sys.executable, "-m", "tests.fake_upstream", "--port", str(upstream_port)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        ),
        subprocess.Popen(  # noqa: ASYNC220
            [
                "taskset",
                "-c",
                "0",
                sys.executable,
                "-m",
                "proxy",
                "serve",
                "--port",
                str(proxy_port),
                "--host",
                "127.0.0.1",
            ],
            cwd=REPO,
            env={
                **env,
                "REDIS_URL": redis_url,
                "ARTWORK_API_URL": f"http://127.0.0.1:{upstream_port}",
                "PROXY_ACCESS_LOG": "false",
                "PROXY_WORKERS": "1",
                "PROXY_TIER1_MAX_BYTES": "0",
                "PROXY_DRAIN_DELAY": "0",
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        ),
    ]
    try:
        started = time.perf_counter()
        await fill(client, args.keys)
        print(f"filled {args.keys:,} keys in {time.perf_counter() - started:.1f} s", flush=True)
        base = f"http://127.0.0.1:{proxy_port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"{base}/artworks/hot-artwork") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            before = wrk(f"{base}/artworks/hot-artwork", 5)
            before_rps = requests_per_second(before.communicate()[0])
            stop, worst = asyncio.Event(), [0.0]
            probing = asyncio.ensure_future(probe(redis_url, stop, worst))
            during = wrk(f"{base}/artworks/hot-artwork", args.seconds)
            clear_started = time.perf_counter()
            async with session.delete(
                f"{base}/redis/clear/artwork_info:filler-*", timeout=aiohttp.ClientTimeout(total=600)
            ) as response:
                cleared = await response.json()
            clear_seconds = time.perf_counter() - clear_started
            during_output = await asyncio.get_running_loop().run_in_executor(None, during.communicate)
            stop.set()
            await probing
        summary = {
            "keys": args.keys,
            "removed": cleared.get("removed"),
            "clear_seconds": round(clear_seconds, 2),
            "hits_per_second_before": round(before_rps),
            "hits_per_second_during": round(requests_per_second(during_output[0])),
            "longest_redis_ping_ms": round(worst[0] * 1000, 2),
            "note": f"wrk ran {args.seconds:g} s from the start of the clear",
        }
        print(json.dumps(summary, indent=2))
    finally:
        for child in children:
            os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            child.wait(timeout=15)
        await client.flushdb()
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk's run during the clear")
    parser.add_argument("--redis-db", type=int, default=12)
    args = parser.parse_args()
    if args.redis_db == 0:
        raise SystemExit("never database 0: it may hold other applications' keys")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
