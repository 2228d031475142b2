"""Scenario 3: streaming. Time to first byte of `"stream": true` chat completions through the
proxy on a miss against straight to the upstream, and time to last byte of the replayed stream
on a hit."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.payloads import CHAT_PATH, UPSTREAM_CHAT_PATH, chat_body
from benchmarks.probes import StreamTiming, stream_timings
from benchmarks.scenarios.common import RunContext, percentile, serving
from benchmarks.servers import default_proxy

WORDS = " ".join(f"word{index}" for index in range(120))  # the fake streams one event per word


def summarize(timings: list[StreamTiming]) -> dict[str, Any]:
    """Median and p99 of time to first and last byte, with how the answers ended."""
    ttfb = [timing.ttfb_ms for timing in timings]
    ttlb = [timing.ttlb_ms for timing in timings]
    x_cache: dict[str, int] = {}
    for timing in timings:
        x_cache[timing.x_cache or "-"] = x_cache.get(timing.x_cache or "-", 0) + 1
    return {
        "requests": len(timings),
        "ttfb_ms": {"p50": percentile(ttfb, 0.5), "p99": percentile(ttfb, 0.99)},
        "ttlb_ms": {"p50": percentile(ttlb, 0.5), "p99": percentile(ttlb, 0.99)},
        "complete": sum(timing.complete for timing in timings),
        "ok": sum(timing.status == 200 for timing in timings),
        "x_cache": x_cache,
    }


def run(ctx: RunContext) -> dict[str, Any]:
    """Time streams direct, through the proxy on misses, then the same requests again as hits."""
    count = ctx.cfg.stream_requests
    salt = ctx.new_salt("stream")

    def bodies(tag: str) -> list[bytes]:
        # The first body of each list only opens the connections; its timing is dropped.
        return [chat_body(f"{salt} {tag} {index} {WORDS}", stream=True) for index in range(count + 1)]

    direct = asyncio.run(stream_timings(ctx.fake.url(UPSTREAM_CHAT_PATH), bodies("direct")))[1:]
    with serving(ctx, default_proxy(ctx.features)) as server:
        proxied = bodies("proxy")
        miss = asyncio.run(stream_timings(server.url(CHAT_PATH), proxied))[1:]
        time.sleep(0.2)  # the last flight stores its entry
        hit = asyncio.run(stream_timings(server.url(CHAT_PATH), proxied))[1:]
    results = {
        "proxy_settings": default_proxy(ctx.features).label,
        "upstream_latency_ms": ctx.cfg.upstream_latency * 1000,
        "events": len(WORDS.split()) + 2,
        "data": {"direct": summarize(direct), "proxy_miss": summarize(miss), "proxy_hit": summarize(hit)},
    }
    for name, summary in results["data"].items():
        ctx.log(
            f"stream {name:11} ttfb p50 {summary['ttfb_ms']['p50']:6.2f} p99 {summary['ttfb_ms']['p99']:6.2f}  "
            f"ttlb p50 {summary['ttlb_ms']['p50']:6.2f} p99 {summary['ttlb_ms']['p99']:6.2f} ms  {summary['x_cache']}"
        )
    return results
