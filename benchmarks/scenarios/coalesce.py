"""Scenario 4: coalescing. N identical concurrent misses (a slow upstream) against the upstream
calls they cause, and how long after the first answer the last follower got its own."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.payloads import CHAT_PATH, UPSTREAM_CHAT_PATH, chat_body
from benchmarks.probes import coalesce_round, upstream_calls
from benchmarks.scenarios.common import RunContext, serving
from benchmarks.servers import NGINX, default_proxy, runs_here


def run(ctx: RunContext) -> dict[str, Any]:
    """Rounds of identical concurrent misses through the proxy and (when installed) nginx."""
    cfg = ctx.cfg
    results: dict[str, Any] = {
        "requests": cfg.coalesce_requests,
        "upstream_latency_ms": cfg.coalesce_latency * 1000,
        "data": {},
        "skipped": {},
        "proxy_settings": default_proxy(ctx.features).label,
    }
    for spec in (default_proxy(ctx.features), NGINX):
        reason = runs_here(spec, cfg, ctx.features)
        if reason is not None:
            results["skipped"][spec.name] = reason
            continue
        rounds: list[dict[str, Any]] = []
        with serving(ctx, spec) as server:
            for number in range(cfg.coalesce_rounds):
                body = chat_body(f"{ctx.new_salt('coalesce')} round {number}: tell the story of the Mona Lisa")
                before = asyncio.run(upstream_calls(ctx.fake.port, UPSTREAM_CHAT_PATH))
                outcome = asyncio.run(
                    coalesce_round(
                        server.port,
                        CHAT_PATH,
                        body,
                        cfg.coalesce_requests,
                        {"x-fake-delay": str(cfg.coalesce_latency)},
                    )
                )
                time.sleep(0.1)
                calls = asyncio.run(upstream_calls(ctx.fake.port, UPSTREAM_CHAT_PATH)) - before
                rounds.append(
                    {
                        "upstream_calls": calls,
                        "leader_ms": outcome.leader_ms,
                        "last_ms": outcome.last_ms,
                        "spread_ms": outcome.spread_ms,
                        "done_ms": sorted(outcome.done_ms),
                        "statuses": {str(status): n for status, n in outcome.statuses.items()},
                        "x_cache": outcome.x_cache,
                    }
                )
                ctx.log(
                    f"coalesce {spec.name:8} round {number}: {calls} upstream call(s), "
                    f"leader {outcome.leader_ms:.1f} ms, last {outcome.last_ms:.1f} ms, "
                    f"spread {outcome.spread_ms:.1f} ms, {outcome.x_cache}"
                )
        results["data"]["proxy" if spec.role == "proxy" else spec.name] = rounds
    return results
