"""Scenario 1: hit throughput and latency for a 1 KB chat completion and a 60 KB image, at each
connection count, for the proxy (access log on and off, N workers) and every baseline.

The table measures one server after another, a minute or so each; on a shared machine the speed
of the host drifts more than that between minutes. So the throughput targets (a ratio of two
servers) are judged on interleaved runs: the servers they compare run side by side and are
loaded in turn, one short run each, for `verdict_rounds` rounds; each keeps its median.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from benchmarks.procinfo import rss_bytes
from benchmarks.scenarios.common import RunContext, load_briefly, loaded_in_turn, measure, serving, warm
from benchmarks.servers import (
    CEILING,
    NAIVE,
    NGINX,
    PIPELINED,
    PROXY,
    PROXY_DEFAULT,
    PROXY_NOLOG,
    PROXY_WORKERS,
    runs_here,
)

SERVERS = (PROXY, PROXY_NOLOG, PROXY_DEFAULT, PROXY_WORKERS, CEILING, PIPELINED, NAIVE, NGINX)
VERDICT_SERVERS = (PROXY, PIPELINED, PROXY_DEFAULT, CEILING)  # the pairs the throughput targets compare


def run(ctx: RunContext) -> dict[str, Any]:
    """Measure every server of `SERVERS` that can run here on both payloads at each connection count."""
    cfg = ctx.cfg
    payloads = (ctx.chat, ctx.image)
    results: dict[str, Any] = {
        "connections": list(cfg.connections),
        "payloads": {payload.name: payload.label for payload in payloads},
        "servers": {spec.name: spec.label.replace("N workers", f"{cfg.workers} workers") for spec in SERVERS},
        "skipped": {},
        "idle_rss": {},
        "answer_bytes": {},
        "data": {payload.name: {} for payload in payloads},
    }
    for spec in SERVERS:
        reason = runs_here(spec, cfg, ctx.features)
        if reason is not None:
            results["skipped"][spec.name] = reason
            ctx.log(f"hits: {spec.name} skipped: {reason}")
            continue
        with serving(ctx, spec) as server:
            results["idle_rss"][spec.name] = rss_bytes(server.pid)
            for payload in payloads:
                warmed = warm(server, payload)
                results["answer_bytes"].setdefault(payload.name, {})[spec.name] = warmed["second"]["bytes"]
                common: dict[str, Any] = {"method": payload.method, "body_file": payload.body_file}
                load_briefly(ctx, server, payload.path, **common)
                series = results["data"][payload.name].setdefault(spec.name, {})
                for connections in cfg.connections:
                    result = measure(ctx, server, payload.path, connections=connections, **common)
                    series[str(connections)] = result.to_json()
                    ctx.log(
                        f"hits {payload.name:5} {spec.name:15} c={connections:<5} {result.rps:8.0f} req/s  "
                        f"p50 {result.ms('p50'):7.2f} ms  p99 {result.ms('p99'):7.2f} ms  "
                        f"cpu {result.extra['server_cpu']:.2f} other {result.extra['foreign_cpu']:.2f}"
                        f"  rss {result.extra['peak_rss'] / 2**20:.1f} MiB"
                        + (f"  errors {result.errors}" if result.error_count else "")
                    )
    results["interleaved"] = interleaved(ctx)
    return results


def interleaved(ctx: RunContext) -> dict[str, Any]:
    """The chat payload at the target connection count, the servers of `VERDICT_SERVERS` loaded
    in turn for `verdict_rounds` rounds: per server its runs' throughput and their median."""
    cfg = ctx.cfg
    specs = [spec for spec in VERDICT_SERVERS if runs_here(spec, cfg, ctx.features) is None]
    common: dict[str, Any] = {"method": ctx.chat.method, "body_file": ctx.chat.body_file}
    with ExitStack() as stack:
        servers = [stack.enter_context(serving(ctx, spec)) for spec in specs]
        for server in servers:
            warm(server, ctx.chat)
            load_briefly(ctx, server, ctx.chat.path, **common)
        found = loaded_in_turn(ctx, servers, ctx.chat.path, "hits interleaved", **common)
    return {"connections": cfg.target_connections, "rounds": cfg.verdict_rounds, **found}
