"""Every knob of a benchmark run, in one frozen object the scenarios read."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
LUA_DIR = BENCH_DIR / "lua"
RESULTS_DIR = BENCH_DIR / "results"

SCENARIOS = ("hits", "miss", "stream", "coalesce", "keys", "memory")


@dataclass(frozen=True)
class BenchConfig:
    """What to run and how long; `quick()` derives the short variant."""

    duration: float = 5.0  # seconds of each measured wrk run
    warmup: float = 1.0  # seconds of unmeasured load before a server's first measured run
    repeat: int = 1  # measured runs per point (the median by throughput is kept)
    noisy_retries: int = 2  # runs measured again when other programs used the CPU meanwhile
    connections: tuple[int, ...] = (1, 10, 50, 100, 1000)
    target_connections: int = 50  # where the throughput and p99 targets are judged
    verdict_rounds: int = 3  # rounds of the interleaved hit runs the throughput targets are judged on
    miss_connections: tuple[int, ...] = (1, 10)
    workers: int = 2  # N of the "N workers" rows
    workers_cpus: str | None = None  # CPUs of the N-worker proxy (default: the server CPUs)
    upstream_latency: float = 0.02  # seconds the fake upstream waits before answering (misses)
    coalesce_latency: float = 0.2  # seconds of upstream latency in the coalescing scenario
    coalesce_requests: int = 100
    coalesce_rounds: int = 3
    stream_requests: int = 40
    key_counts: tuple[int, ...] = (1_000, 100_000, 1_000_000)
    miss_count: int = 100_000  # distinct misses before the "RSS after misses" reading
    miss_load_connections: int = 100
    chat_answer_bytes: int = 1024
    image_bytes: int = 61_440
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_db: int = 12
    own_redis: bool = False  # start a private redis-server instead of using the machine's
    key_prefix: str = "bench:"
    server_cpus: str = "0"
    load_cpus: str = "1"
    scenarios: tuple[str, ...] = SCENARIOS
    nginx: bool = True
    profile: bool = False
    python: str = sys.executable
    proxy_src: Path = REPO  # directory `python -m proxy` runs from (a checkout or an exported commit)
    output: Path = RESULTS_DIR
    quick_mode: bool = False

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def quick(self) -> BenchConfig:
        """Short runs and smaller key and miss counts: a smoke run of every scenario in a few minutes."""
        return replace(
            self,
            duration=2.0,
            warmup=0.5,
            key_counts=(1_000, 10_000, 100_000),
            miss_count=min(self.miss_count, 10_000),
            coalesce_rounds=2,
            stream_requests=20,
            quick_mode=True,
        )
