"""Scenario 6: memory. Proxy RSS idle, under hit load at 1000 connections (from scenario 1), and
after many distinct misses; Redis bytes per stored entry come from scenario 5."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.payloads import CHAT_PATH, UPSTREAM_CHAT_PATH
from benchmarks.probes import upstream_calls
from benchmarks.procinfo import Sampler, rss_bytes
from benchmarks.scenarios.common import RunContext, serving
from benchmarks.servers import default_proxy
from benchmarks.wrk import UNIQUE_SCRIPT, run_wrk

FIRST_CHUNK_SECONDS = 3.0
MAX_CHUNK_SECONDS = 60.0


def run(ctx: RunContext) -> dict[str, Any]:
    """Drive `miss_count` distinct misses (no upstream delay) through a fresh proxy; read its RSS."""
    cfg = ctx.cfg
    ctx.redis.flush()
    results: dict[str, Any] = {
        "miss_target": cfg.miss_count,
        "connections": cfg.miss_load_connections,
        "proxy_settings": default_proxy(ctx.features).label,
    }
    with serving(ctx, default_proxy(ctx.features)) as proxy:
        time.sleep(0.5)
        results["idle_rss"] = rss_bytes(proxy.pid)
        start_calls = asyncio.run(upstream_calls(ctx.fake.port, UPSTREAM_CHAT_PATH))
        done = 0
        chunk = FIRST_CHUNK_SECONDS
        elapsed = 0.0
        peak = 0
        errors = 0
        while done < cfg.miss_count:
            with Sampler(proxy.pid) as sampler:
                started = time.monotonic()
                result = run_wrk(
                    ctx.registry,
                    proxy.url(CHAT_PATH),
                    connections=cfg.miss_load_connections,
                    duration=chunk,
                    cpus=cfg.load_cpus,
                    script=UNIQUE_SCRIPT,
                    method="POST",
                    body_file=ctx.unique_template,
                    salt=ctx.new_salt("memory"),
                    headers=("x-fake-delay: 0",),
                )
                elapsed += time.monotonic() - started
            peak = max(peak, sampler.peak_rss)
            errors += result.error_count
            done = asyncio.run(upstream_calls(ctx.fake.port, UPSTREAM_CHAT_PATH)) - start_calls
            rate = done / elapsed if elapsed else 0.0
            ctx.log(f"memory {done} misses so far, {rate:.0f}/s, rss {sampler.last_rss / 2**20:.1f} MiB")
            if rate <= 0:
                raise RuntimeError("no misses reached the upstream")
            chunk = min(MAX_CHUNK_SECONDS, max(1.0, (cfg.miss_count - done) / rate * 1.05))
        time.sleep(2.0)  # let flights finish and the store writes settle
        results.update(
            misses=done,
            miss_rps=round(done / elapsed, 1),
            errors=errors,
            peak_rss=peak,
            rss_after=rss_bytes(proxy.pid),
            stored_entries=ctx.redis.size(),
        )
    ctx.proxy_rss.append(peak)
    ctx.log(
        f"memory after {done} misses: rss {results['rss_after'] / 2**20:.1f} MiB "
        f"(peak {peak / 2**20:.1f} MiB, idle {results['idle_rss'] / 2**20:.1f} MiB)"
    )
    ctx.redis.flush()
    return results
