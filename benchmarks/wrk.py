"""Running wrk pinned to the load core and reading the JSON line its Lua `done()` hook prints."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.config import LUA_DIR
from benchmarks.processes import ProcessError, ProcessRegistry

RESULT_MARK = "BENCH_RESULT "
FIXED_SCRIPT = LUA_DIR / "fixed.lua"
UNIQUE_SCRIPT = LUA_DIR / "unique.lua"


class WrkMissing(RuntimeError):
    """wrk is not installed."""


def wrk_binary() -> str:
    """The wrk executable, or `WrkMissing` with how to install it."""
    found = shutil.which("wrk")
    if found is None:
        raise WrkMissing("wrk is not installed: `apt-get install -y wrk` (Debian's package), then rerun")
    return found


@dataclass
class WrkResult:
    """One wrk run: counts, errors and latency percentiles (microseconds)."""

    connections: int
    requests: int
    duration_us: int
    bytes: int
    errors: dict[str, int]
    latency_us: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def ms(self, percentile: str) -> float:
        """A latency figure in milliseconds: `p50`, `p99`, `mean`, ..."""
        return self.latency_us[percentile] / 1000.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rps"] = round(self.rps, 1)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WrkResult:
        return cls(
            connections=data["connections"],
            requests=data["requests"],
            duration_us=data["duration_us"],
            bytes=data["bytes"],
            errors=data["errors"],
            latency_us=data["latency_us"],
            extra=data.get("extra", {}),
        )


def parse_output(stdout: str, connections: int) -> WrkResult:
    """The result line of a wrk run; `ProcessError` when the script printed none."""
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARK):
            data = json.loads(line[len(RESULT_MARK) :])
            return WrkResult(
                connections=connections,
                requests=data["requests"],
                duration_us=data["duration_us"],
                bytes=data["bytes"],
                errors=data["errors"],
                latency_us=data["latency_us"],
            )
    raise ProcessError(f"wrk printed no result line:\n{stdout[-2000:]}")


def run_wrk(
    registry: ProcessRegistry,
    url: str,
    *,
    connections: int,
    duration: float,
    cpus: str,
    script: Path = FIXED_SCRIPT,
    method: str = "GET",
    body_file: Path | None = None,
    salt: str = "",
    headers: Sequence[str] = (),
    threads: int = 1,
    timeout: float = 10.0,
) -> WrkResult:
    """One wrk run against `url` (loopback only), pinned to `cpus`, parsed from the Lua hook."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"benchmarks target 127.0.0.1 only, not {url}")
    argv = [
        wrk_binary(),
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout:g}s",
        "-s",
        str(script),
    ]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    env = {
        **os.environ,
        "LUA_PATH": f"{LUA_DIR}/?.lua;;",
        "BENCH_METHOD": method,
        "BENCH_BODY_FILE": str(body_file or ""),
        "BENCH_SALT": salt,
    }
    code, out, err = registry.run("wrk", argv, cpus=cpus, env=env, timeout=duration + timeout + 30)
    if code != 0:
        raise ProcessError(f"wrk exited with {code}: {err.strip() or out.strip()}")
    return parse_output(out, connections)
