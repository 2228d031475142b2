"""Cache warming: replay a file of requests through a running proxy, so popular content is cached.

The file holds one JSON object per line: `method` (default GET), `path` (required), optional
`body` (an object or array is sent as JSON, a string as it is) and `headers`. Each request goes
through the proxy's normal path, so it is keyed, checked and stored exactly as a client's would
be. The summary counts what was stored (a miss answered 2xx), what was already cached (a hit,
a stale answer or a coalesced one) and what failed (a bad line, an error status, no answer).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp

CACHED = frozenset({"HIT", "STALE", "COALESCED"})


@dataclass(frozen=True)
class WarmRequest:
    line: int
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]


@dataclass
class WarmSummary:
    stored: int = 0
    already_cached: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.stored + self.already_cached + self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.total,
            "stored": self.stored,
            "already_cached": self.already_cached,
            "failed": self.failed,
            "x_cache": dict(self.outcomes),
            "failures": self.failures[:20],
        }


def read_requests(path: Path) -> Iterator[WarmRequest | str]:
    """The requests of a JSON-lines file, and for each bad line a message saying why."""
    with path.open(encoding="utf-8") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            try:
                yield parse_line(number, raw)
            except ValueError as exc:
                yield f"line {number}: {exc}"


def parse_line(number: int, raw: str) -> WarmRequest:
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"].startswith("/"):
        raise ValueError('needs at least {"path": "/..."}')
    headers = item.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ValueError("headers must be an object of strings")
    body = item.get("body")
    encoded: bytes | None
    if body is None:
        encoded = None
    elif isinstance(body, str):
        encoded = body.encode()
    else:
        encoded = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **headers}
    method = str(item.get("method", "POST" if body is not None else "GET")).upper()
    return WarmRequest(number, method, item["path"], encoded, headers)


async def warm(
    requests: Iterator[WarmRequest | str],
    summary: WarmSummary,
    *,
    base_url: str,
    concurrency: int,
    extra_headers: Mapping[str, str],
    total: int,
    progress: TextIO = sys.stderr,
) -> WarmSummary:
    """Send every request through the proxy, at most `concurrency` at a time."""
    queue: asyncio.Queue[WarmRequest | None] = asyncio.Queue(maxsize=concurrency * 2)
    bar = _Progress(total, progress)
    timeout = aiohttp.ClientTimeout(total=300)

    async def worker(session: aiohttp.ClientSession) -> None:
        while (request := await queue.get()) is not None:
            try:
                async with session.request(
                    request.method,
                    base_url + request.path,
                    data=request.body,
                    headers={**request.headers, **extra_headers},
                ) as response:
                    await response.read()
                    outcome = response.headers.get("X-Cache", "?")
                    summary.outcomes[outcome] += 1
                    if response.status >= 400:
                        summary.failed += 1
                        summary.failures.append(
                            f"line {request.line}: {request.method} {request.path} -> {response.status}"
                        )
                    elif outcome in CACHED:
                        summary.already_cached += 1
                    else:
                        summary.stored += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                summary.failed += 1
                summary.failures.append(f"line {request.line}: {request.method} {request.path} -> {exc}")
            bar.step()

    async with aiohttp.ClientSession(timeout=timeout) as session:
        workers = [asyncio.ensure_future(worker(session)) for _ in range(concurrency)]
        for request in requests:
            if isinstance(request, str):
                summary.failed += 1
                summary.failures.append(request)
                bar.step()
            else:
                await queue.put(request)
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    bar.finish()
    return summary


class _Progress:
    """A progress bar on a terminal, a line every 10 % elsewhere."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last_decile = -1

    def step(self) -> None:
        self.done += 1
        share = self.done / self.total
        if self.tty:
            filled = int(share * 30)
            rate = self.done / max(time.monotonic() - self.started, 1e-6)
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {rate:.0f}/s")
            self.stream.flush()
        elif int(share * 10) > self._last_decile:
            self._last_decile = int(share * 10)
            self.stream.write(f"warm: {self.done}/{self.total}\n")

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
