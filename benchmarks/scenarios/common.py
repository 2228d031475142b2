"""What every scenario shares: the run context, starting servers, warming entries, measuring."""

from __future__ import annotations

import http.client
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.config import BenchConfig
from benchmarks.payloads import Payload
from benchmarks.processes import ProcessRegistry
from benchmarks.procinfo import Sampler
from benchmarks.redisdb import BenchRedis
from benchmarks.servers import ProxyFeatures, Server, ServerSpec, start_server
from benchmarks.wrk import FIXED_SCRIPT, WrkResult, run_wrk

FOREIGN_CPU_LIMIT = 0.1  # CPUs other programs may use during a run before it is measured again


@dataclass
class RunContext:
    """Everything a scenario needs: settings, the process registry, the fake upstream, Redis."""

    cfg: BenchConfig
    registry: ProcessRegistry
    fake: Server
    redis: BenchRedis
    chat: Payload
    image: Payload
    unique_template: Path
    features: ProxyFeatures
    salt: str
    log: Callable[[str], None]
    redis_pid: int | None = None  # the local Redis server, whose CPU is part of the run's own
    proxy_rss: list[int] = field(default_factory=list)  # every proxy RSS peak seen under load

    def new_salt(self, tag: str) -> str:
        """A string no earlier request of this run has used."""
        return f"{self.salt}-{tag}-{time.monotonic_ns()}"


@contextmanager
def serving(ctx: RunContext, spec: ServerSpec) -> Iterator[Server]:
    """Start a server under test for the duration of the block, and stop it whatever happens."""
    server = start_server(spec, ctx.cfg, ctx.registry, upstream_port=ctx.fake.port, features=ctx.features)
    try:
        yield server
    finally:
        ctx.registry.stop(server.child)


def send(
    server: Server, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """One request; its status, X-Cache and body length."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        send_headers = {"Content-Type": "application/json"} if body else {}
        connection.request(method, path, body=body or None, headers={**send_headers, **(headers or {})})
        response = connection.getresponse()
        data = response.read()
        return {"status": response.status, "x_cache": response.getheader("X-Cache", ""), "bytes": len(data)}
    finally:
        connection.close()


def warm(server: Server, payload: Payload) -> dict[str, Any]:
    """Store the payload's entry (one request), then check a second request is answered (a hit)."""
    body = payload.body_file.read_bytes() if payload.body_file else b""
    first = send(server, payload.method, payload.path, body)
    time.sleep(0.05)  # the flight stores the entry just after the answer
    second = send(server, payload.method, payload.path, body)
    if second["status"] != 200:
        raise RuntimeError(f"{server.spec.name}: {payload.path} answered {second['status']} after warming")
    if server.spec.role == "proxy" and second["x_cache"] != "HIT":
        raise RuntimeError(f"{server.spec.name}: {payload.path} was not a hit after warming ({second['x_cache']})")
    return {"first": first, "second": second}


def measure(
    ctx: RunContext,
    server: Server,
    path: str,
    *,
    connections: int,
    method: str = "GET",
    body_file: Path | None = None,
    script: Path = FIXED_SCRIPT,
    headers: Sequence[str] = (),
    duration: float | None = None,
    repeat: int | None = None,
    retries: int | None = None,
) -> WrkResult:
    """Load `server` with wrk (median of `repeat` runs by throughput), sampling its RSS and CPU.

    A run during which other programs used more than `FOREIGN_CPU_LIMIT` CPUs is measured again
    (up to `noisy_retries` times) and the least disturbed attempt is kept.
    """
    runs: list[WrkResult] = []
    for _ in range(repeat or ctx.cfg.repeat):
        attempts: list[WrkResult] = []
        for _attempt in range(1 + (ctx.cfg.noisy_retries if retries is None else retries)):
            attempts.append(_measure_once(ctx, server, path, connections, method, body_file, script, headers, duration))
            if attempts[-1].extra["foreign_cpu"] <= FOREIGN_CPU_LIMIT:
                break
            time.sleep(1.0)
        best = min(attempts, key=lambda run: run.extra["foreign_cpu"])
        best.extra["attempts"] = len(attempts)
        runs.append(best)
    runs.sort(key=lambda run: run.rps)
    chosen = runs[len(runs) // 2]
    if len(runs) > 1:
        chosen.extra["rps_runs"] = [round(run.rps, 1) for run in runs]
        chosen.extra["rps_spread"] = round((runs[-1].rps - runs[0].rps) / statistics.median(r.rps for r in runs), 3)
    return chosen


def loaded_in_turn(ctx: RunContext, servers: Sequence[Server], path: str, label: str, **options: Any) -> dict[str, Any]:
    """The servers loaded one after the other at the target connection count, `verdict_rounds`
    rounds (the host's drift between minutes hits them alike): each one's runs and their median."""
    runs: dict[str, list[float]] = {server.spec.name: [] for server in servers}
    for round_number in range(ctx.cfg.verdict_rounds):
        for server in servers:
            result = measure(ctx, server, path, connections=ctx.cfg.target_connections, repeat=1, **options)
            runs[server.spec.name].append(round(result.rps, 1))
            ctx.log(f"{label} round {round_number + 1} {server.spec.name:15} {result.rps:8.0f} req/s")
    return {"runs": runs, "median": {name: statistics.median(values) for name, values in runs.items()}}


def load_briefly(ctx: RunContext, server: Server, path: str, **options: Any) -> None:
    """Unmeasured load for `cfg.warmup` seconds at the target connection count, before a server's
    measured runs (its pools, buffers and caches filled, as in a steady state)."""
    cfg = ctx.cfg
    measure(ctx, server, path, connections=cfg.target_connections, duration=cfg.warmup, repeat=1, retries=0, **options)


def _measure_once(
    ctx: RunContext,
    server: Server,
    path: str,
    connections: int,
    method: str,
    body_file: Path | None,
    script: Path,
    headers: Sequence[str],
    duration: float | None,
) -> WrkResult:
    with Sampler(server.pid, extra=(ctx.redis_pid,) if ctx.redis_pid else ()) as sampler:
        result = run_wrk(
            ctx.registry,
            server.url(path),
            connections=connections,
            duration=duration or ctx.cfg.duration,
            cpus=ctx.cfg.load_cpus,
            script=script,
            method=method,
            body_file=body_file,
            salt=ctx.new_salt(server.spec.name),
            headers=headers,
        )
    result.extra.update(
        peak_rss=sampler.peak_rss,
        server_cpu=round(sampler.cpu_share, 3),
        foreign_cpu=round(sampler.foreign_cpu, 3),
    )
    if server.spec.role == "proxy" and server.spec.name != "proxy-workers":  # the targets are for one worker
        ctx.proxy_rss.append(sampler.peak_rss)
    return result


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of `values` (fraction 0.5 for the median, 0.99 for p99)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]
