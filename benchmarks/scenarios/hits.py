"""Scenario 1: hit throughput and latency for a 1 KB chat completion and a 60 KB image, at each
connection count, for the proxy (access log on and off, N workers) and every baseline."""

from __future__ import annotations

from typing import Any

from benchmarks.procinfo import rss_bytes
from benchmarks.scenarios.common import RunContext, load_briefly, measure, serving, warm
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
                common = {"method": payload.method, "body_file": payload.body_file}
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
    return results
