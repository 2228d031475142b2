"""Optional (`--profile`): py-spy samples the proxy while wrk loads it with chat hits; the top
frames by own time and by total time go to the results and `profile.txt`, the collapsed stacks
to `profile.collapsed` (feed it to any flame-graph tool)."""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.processes import Child
from benchmarks.scenarios.common import RunContext, measure, serving, warm
from benchmarks.servers import PROXY, PROXY_DEFAULT, PROXY_NOLOG

TOP = 25
_LINE = re.compile(r"^(.*) (\d+)$")
_LOCATION = re.compile(r"\(([^():]+)(?::\d+)?\)$")
PROFILE_SECONDS = 10
SCAFFOLDING = 0.97


def py_spy() -> str | None:
    """The py-spy executable (next to the running Python, or on PATH)."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def summarize(collapsed: str, top: int = TOP) -> dict[str, Any]:
    """Top frames by own samples and by inclusive samples from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        frames = [frame for frame in match.group(1).split(";") if frame]
        count = int(match.group(2))
        samples += count
        if frames:
            own[frames[-1]] += count
            packages[package_of(frames[-1])] += count
        for frame in set(frames):
            total[frame] += count
    return {
        "samples": samples,
        "own": [(frame, count / samples) for frame, count in own.most_common(top)] if samples else [],
        # Frames on (nearly) every stack are the event loop's scaffolding: leave them out.
        "total": [(frame, count / samples) for frame, count in total.most_common() if count < SCAFFOLDING * samples][
            :top
        ],
        "packages": [(name, count / samples) for name, count in packages.most_common()] if samples else [],
    }


def package_of(frame: str) -> str:
    """`decode_entry (proxy/entry.py:107)` -> `proxy`; `... (asyncio/events.py:78)` -> `asyncio`."""
    match = _LOCATION.search(frame)
    if match is None:
        return "?"
    path = match.group(1)
    return path.split("/", 1)[0] if "/" in path else path


def start_recorder(ctx: RunContext, name: str, argv: list[str], attempts: int = 5) -> Child:
    """Start `py-spy record`; retry when it gives up at once (it sometimes fails to read the
    interpreter's version from a busy process)."""
    for _ in range(attempts):
        recorder = ctx.registry.start(f"py-spy-{name}", argv, cpus=ctx.cfg.load_cpus)
        time.sleep(1.0)
        if recorder.alive():
            return recorder
        ctx.log(f"py-spy did not attach ({recorder.log_tail(200).strip().splitlines()[0:1]}); retrying")
    raise RuntimeError(f"py-spy could not attach: {recorder.log_tail(500)}")


def run(ctx: RunContext) -> dict[str, Any]:
    """Profile the proxy under chat hits at the target connection count: Redis hits with the
    access log on and off, and first-tier hits (defaults) when the proxy has a first tier."""
    binary = py_spy()
    if binary is None:
        return {"skipped": "py-spy is not installed (pip install py-spy, or the bench extra)"}
    cfg = ctx.cfg
    results: dict[str, Any] = {}
    for spec in (PROXY, PROXY_NOLOG, *((PROXY_DEFAULT,) if ctx.features.tier1 else ())):
        with serving(ctx, spec) as server:
            warm(server, ctx.chat)
            out = cfg.output / f"profile-{spec.name}.collapsed"
            seconds = max(PROFILE_SECONDS, round(cfg.duration))
            # 100 samples/s: each sample pauses the proxy briefly, so the rate costs throughput.
            argv = [binary, "record", "--pid", str(server.pid), "--format", "raw", "--rate", "100", "--function"]
            argv += ["--duration", str(seconds + 1), "--output", str(out)]
            recorder = start_recorder(ctx, spec.name, argv)
            try:
                result = measure(
                    ctx,
                    server,
                    ctx.chat.path,
                    connections=cfg.target_connections,
                    method="POST",
                    body_file=ctx.chat.body_file,
                    duration=seconds + 1,
                    repeat=1,
                )
                recorder.popen.wait(timeout=60)
            finally:
                ctx.registry.stop(recorder)
            summary = summarize(out.read_text() if out.exists() else "")
            summary["rps_while_profiled"] = round(result.rps, 1)
            results[spec.name] = summary
            ctx.log(f"profile {spec.name}: {summary['samples']} samples -> {out.name}")
    return results
