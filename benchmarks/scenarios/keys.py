"""Scenario 5: key-count scaling. Hit throughput on one fixed request with 1e3, 1e5 and 1e6
entries stored, for the proxy and the pipelined Redis limit; Redis bytes per stored entry.

The database is filled with copies of the entry the proxy itself stored for the warm request,
under distinct digest keys of the same namespace, so every filler entry looks like a real one.

The steps are minutes apart (filling 1e6 entries takes a while), and a shared host's speed drifts
more than the 10 % the target allows over minutes. So at each step the proxy and the aiohttp
ceiling (which stores nothing: the host's speed alone) are also loaded in turn for
`verdict_rounds` rounds, and flatness is judged on the proxy's median over the ceiling's.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.scenarios.common import RunContext, load_briefly, loaded_in_turn, measure, serving, warm
from benchmarks.servers import CEILING, PIPELINED, PROXY

NAMESPACE = "ai_content:chat.completions"
FILL_TTL_MS = 2 * 3600 * 1000


def run(ctx: RunContext) -> dict[str, Any]:
    """Fill the database step by step and measure hits at each step."""
    cfg = ctx.cfg
    ctx.redis.flush()
    results: dict[str, Any] = {"counts": sorted(cfg.key_counts), "connections": cfg.target_connections, "data": {}}
    payload = ctx.chat
    common: dict[str, Any] = {"method": payload.method, "body_file": payload.body_file}
    with serving(ctx, PROXY) as proxy, serving(ctx, PIPELINED) as baseline, serving(ctx, CEILING) as ceiling:
        warmed = warm(proxy, payload)
        warm(baseline, payload)
        warm(ceiling, payload)
        stored = ctx.redis.find_keys(f"{NAMESPACE}:*", limit=2)
        if len(stored) != 1:
            raise RuntimeError(f"expected the one entry of the warm request, found {stored}")
        value = ctx.redis.get(stored[0])
        if value is None:
            raise RuntimeError("the warm entry expired")
        results["entry"] = {
            "value_bytes": len(value),
            "memory_usage": ctx.redis.memory_usage(stored[0]),
            "answer_bytes": warmed["second"]["bytes"],
        }
        next_index = 0
        for target in results["counts"]:
            step: dict[str, Any] = {}
            need = target - ctx.redis.size()
            if need > 0:
                before = ctx.redis.used_memory()
                started = time.monotonic()
                ctx.redis.fill(NAMESPACE, next_index, need, value, FILL_TTL_MS)
                next_index += need
                step["fill_seconds"] = round(time.monotonic() - started, 2)
                step["filled"] = need
                step["bytes_per_entry"] = round((ctx.redis.used_memory() - before) / need, 1)
            step["entries"] = ctx.redis.size()
            step["used_memory"] = ctx.redis.used_memory()
            for server in (proxy, baseline):
                load_briefly(ctx, server, payload.path, **common)
                result = measure(ctx, server, payload.path, connections=cfg.target_connections, **common)
                step[server.spec.name] = result.to_json()
                ctx.log(
                    f"keys  {step['entries']:>9} entries {server.spec.name:15} {result.rps:8.0f} req/s  "
                    f"p99 {result.ms('p99'):7.2f} ms  other {result.extra['foreign_cpu']:.2f}"
                    f"  rss {result.extra['peak_rss'] / 2**20:.1f} MiB"
                )
            step["side_by_side"] = loaded_in_turn(ctx, (proxy, ceiling), payload.path, "keys  side by side", **common)
            results["data"][str(target)] = step
    ctx.redis.flush()
    return results
