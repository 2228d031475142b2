"""Scenario 2: miss overhead. Distinct requests (every one a miss) through the proxy against the
same requests straight to the fake upstream, at low concurrency; the overhead is the proxy's
latency percentile minus the direct one.

It runs twice: with the configured upstream latency (20 ms by default, the figure the target is
judged on) and with none, where only the proxy's own work separates the two paths.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from benchmarks.payloads import CHAT_PATH, UPSTREAM_CHAT_PATH
from benchmarks.scenarios.common import RunContext, measure, serving
from benchmarks.servers import NGINX, Server, default_proxy, runs_here
from benchmarks.wrk import UNIQUE_SCRIPT


def latency_label(seconds: float) -> str:
    """`0.02` -> `20ms`: the key of one upstream latency in the results."""
    return f"{seconds * 1000:g}ms"


def run(ctx: RunContext) -> dict[str, Any]:
    """Measure direct, proxy and (when installed) nginx misses, interleaved at each connection count."""
    cfg = ctx.cfg
    latencies = [cfg.upstream_latency] + ([0.0] if cfg.upstream_latency else [])
    results: dict[str, Any] = {
        "upstream_latency_ms": cfg.upstream_latency * 1000,
        "latencies": [latency_label(latency) for latency in latencies],
        "connections": list(cfg.miss_connections),
        "data": {},
        "overhead_ms": {},
        "skipped": {},
        "proxy_settings": default_proxy(ctx.features).label,
    }
    with ExitStack() as stack:
        targets: list[tuple[str, Server, str]] = [("direct", ctx.fake, UPSTREAM_CHAT_PATH)]
        for spec in (default_proxy(ctx.features), NGINX):
            reason = runs_here(spec, cfg, ctx.features)
            if reason is not None:
                results["skipped"][spec.name] = reason
                continue
            name = "proxy" if spec.role == "proxy" else spec.name
            targets.append((name, stack.enter_context(serving(ctx, spec)), CHAT_PATH))
        common: dict[str, Any] = {"script": UNIQUE_SCRIPT, "method": "POST", "body_file": ctx.unique_template}
        for _name, server, path in targets:  # open the upstream connection pools
            measure(
                ctx,
                server,
                path,
                connections=max(cfg.miss_connections),
                duration=cfg.warmup,
                repeat=1,
                retries=0,
                **common,
            )
        for latency in latencies:
            label = latency_label(latency)
            data: dict[str, dict[str, Any]] = {name: {} for name, _server, _path in targets}
            headers = (f"x-fake-delay: {latency:g}",)
            for connections in cfg.miss_connections:
                for name, server, path in targets:
                    result = measure(ctx, server, path, connections=connections, headers=headers, **common)
                    data[name][str(connections)] = result.to_json()
                    ctx.log(
                        f"miss  {label:>5} {name:8} c={connections:<4} {result.rps:8.0f} req/s  "
                        f"p50 {result.ms('p50'):7.2f} ms  p99 {result.ms('p99'):7.2f} ms  "
                        f"cpu {result.extra['server_cpu']:.2f} other {result.extra['foreign_cpu']:.2f}"
                        + (f"  errors {result.errors}" if result.error_count else "")
                    )
            results["data"][label] = data
            results["overhead_ms"][label] = overheads(data)
    return results


def overheads(data: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per server and connection count: its p50 and p99 minus the direct ones, in ms."""
    found: dict[str, dict[str, dict[str, float]]] = {}
    for name, series in data.items():
        if name == "direct":
            continue
        for connections, result in series.items():
            direct = data["direct"].get(connections)
            if direct is None:
                continue
            found.setdefault(name, {})[connections] = {
                stat: (result["latency_us"][stat] - direct["latency_us"][stat]) / 1000 for stat in ("p50", "p99")
            }
    return found
