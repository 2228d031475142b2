"""Statistics history: per-minute buckets of the `/redis/stats` counters, kept by every replica.

Each flush (`stats_keeper.py`) adds the deltas it adds to the cumulative counter hash to three
more keys in the same pipeline, so the history is cluster-wide and costs no extra round trip:

- `<prefix>_artstory_proxy:history:<minute>`: a hash of the same fields (see `proxy.stats`) for
  the minute in which the flush happens (`<minute>` is the Unix time of its start), expiring
  `retention + 60` seconds later;
- `<prefix>_artstory_proxy:history:10m:<start>`: the same for its ten minutes, expiring
  `retention + 600` seconds later, so that long windows read a tenth as many hashes;
- `<prefix>_artstory_proxy:history:day:<day>`: the same for the UTC day (the "today" figures),
  expiring two days later;
- `<prefix>_artstory_proxy:topkeys:<hour>`: a sorted set of cache keys scored by their hits in
  that hour, trimmed to its `TOP_KEYS_KEPT` highest after each write (so heavy hitters stay exact
  and the long tail is dropped), expiring `retention + 3600` seconds later.

Reading a window fetches its minute hashes (pipelined HGETALL; its ten-minute hashes when the
step is a multiple of ten minutes, as it is by default for windows over two hours), adds them up
step by step and turns each step into the summary `proxy.stats.report` makes, so percentiles
come from merged buckets exactly as in `/redis/stats`. Deltas are attributed to the minute of the flush that
wrote them: with the default flush interval of one second a count lands in the minute it
happened in, or the next one when it happened in the last second of a minute (or during an
outage, in the minute of the flush that finally wrote it).
"""

from __future__ import annotations

import heapq
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from proxy.constants import INTERNAL_NAMESPACE
from proxy.errors import ClientRequestError
from proxy.routes import parse_duration
from proxy.stats import report
from proxy.store.base import CounterWrite, Store

MINUTE = 60
TEN_MINUTES = 600
HOUR = 3600
DAY = 86400
DEFAULT_RETENTION = DAY
DEFAULT_WINDOW = HOUR
DAY_KEPT = 2 * DAY  # today's hash lives through tomorrow, whatever the retention
TOP_KEYS_KEPT = 1000  # members of one hour's sorted set
KEY_HITS_PER_FLUSH = 1000  # most-hit keys one flush writes; the rest of its tail is dropped
TOP_KEYS_SHOWN = 20
MAX_POINTS = 120  # the default step keeps a window to about this many points
FINE_WINDOW = 2 * HOUR  # the longest window read minute by minute by default


def floor_to(moment: float, size: int) -> int:
    """The start (Unix seconds) of the `size`-second bucket holding `moment`."""
    return int(moment // size) * size


def window_buckets(now: float, window: float, size: int = MINUTE) -> list[int]:
    """Starts of the `size`-second buckets a window ending now covers: the current (partial) one
    and the `ceil(window / size) - 1` before it."""
    current = floor_to(now, size)
    count = max(1, math.ceil(window / size))
    return [current - size * index for index in range(count - 1, -1, -1)]


def default_step(window: float) -> int:
    """One minute for windows up to two hours; longer windows get steps of whole ten minutes
    that keep them to about `MAX_POINTS` points (6 h: 10 minutes, 24 h: 20 minutes)."""
    if window <= FINE_WINDOW:
        return MINUTE
    return TEN_MINUTES * max(1, math.ceil(window / TEN_MINUTES / MAX_POINTS))


def parse_window(raw: str | None, *, retention: float) -> int:
    """`15m`, `1h`, `24h`, `3600` -> whole minutes in seconds, from one minute to the retention."""
    if raw is None:
        return min(DEFAULT_WINDOW, floor_to(retention, MINUTE))
    seconds = _duration("window", raw)
    if seconds < MINUTE:
        raise ClientRequestError(f"window {raw!r} is too short: the history is kept per minute (at least 1m)")
    if seconds > retention:
        raise ClientRequestError(
            f"window {raw!r} is longer than the history kept (PROXY_STATS_RETENTION: {_human(retention)})"
        )
    return math.ceil(seconds / MINUTE) * MINUTE


def parse_step(raw: str | None, *, window: int) -> int:
    """`step=5m`: whole minutes, at most the window; by default `default_step(window)`."""
    if raw is None:
        return default_step(window)
    seconds = _duration("step", raw)
    if seconds % MINUTE or seconds > window:
        raise ClientRequestError(f"step {raw!r} must be a whole number of minutes, at most the window")
    return int(seconds)


def _duration(name: str, raw: str) -> float:
    try:
        return parse_duration(raw.strip())
    except ValueError as exc:
        raise ClientRequestError(f"{name} {raw!r} {exc} (examples: 15m, 1h, 24h)") from None


def _human(seconds: float) -> str:
    for size, unit in ((DAY, "d"), (HOUR, "h"), (MINUTE, "m")):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def merge(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Counter mappings added field by field (buckets merge by addition, like replicas)."""
    total: dict[str, int] = {}
    for part in parts:
        for name, value in part.items():
            total[name] = total.get(name, 0) + value
    return total


def top_key_hits(key_hits: Mapping[str, int], count: int = KEY_HITS_PER_FLUSH) -> dict[str, int]:
    """The `count` most-hit keys of a flush."""
    if len(key_hits) <= count:
        return dict(key_hits)
    return dict(heapq.nlargest(count, key_hits.items(), key=lambda item: item[1]))


class History:
    """Where the history lives in the store, what a flush adds to it, and reading a window."""

    def __init__(
        self,
        store: Store,
        *,
        key_prefix: str,
        namespaces: Sequence[str],
        retention: float = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.key_prefix = key_prefix
        self.namespaces = tuple(namespaces)
        self.retention = retention
        self.clock = clock
        self.base = f"{key_prefix}{INTERNAL_NAMESPACE}"

    def minute_key(self, start: int) -> str:
        return f"{self.base}:history:{start}"

    def ten_minutes_key(self, start: int) -> str:
        return f"{self.base}:history:10m:{start}"

    def day_key(self, start: int) -> str:
        return f"{self.base}:history:day:{start}"

    def top_keys_key(self, start: int) -> str:
        return f"{self.base}:topkeys:{start}"

    def writes(self, pending: Mapping[str, int], key_hits: Mapping[str, int], now: float) -> list[CounterWrite]:
        """What one flush at `now` adds to the history."""
        writes: list[CounterWrite] = []
        if pending:
            minute_ttl = self.retention + MINUTE
            writes.append(CounterWrite(self.minute_key(floor_to(now, MINUTE)), pending, ttl=minute_ttl))
            coarse_ttl = self.retention + TEN_MINUTES
            writes.append(CounterWrite(self.ten_minutes_key(floor_to(now, TEN_MINUTES)), pending, ttl=coarse_ttl))
            writes.append(CounterWrite(self.day_key(floor_to(now, DAY)), pending, ttl=DAY_KEPT))
        if key_hits:
            writes.append(
                CounterWrite(
                    self.top_keys_key(floor_to(now, HOUR)),
                    top_key_hits(key_hits),
                    ttl=self.retention + HOUR,
                    sorted_set=True,
                    keep=TOP_KEYS_KEPT,
                )
            )
        return writes

    async def read(
        self,
        window: int,
        step: int,
        *,
        pending: Callable[[], Mapping[str, int]] = dict,
        key_hits: Mapping[str, int] | None = None,
        top: int = TOP_KEYS_SHOWN,
    ) -> dict[str, Any]:
        """The body of `GET /redis/stats/history`. `pending()` (this process's counts not yet
        flushed, asked for once the store has answered) goes into the current minute and today,
        as `/redis/stats` adds it to `cluster`; `key_hits` likewise into the most-hit keys."""
        now = self.clock()
        size, key_of = (TEN_MINUTES, self.ten_minutes_key) if step % TEN_MINUTES == 0 else (MINUTE, self.minute_key)
        buckets = window_buckets(now, window, size)
        today = floor_to(now, DAY)
        hashes = await self.store.read_counters_many([*map(key_of, buckets), self.day_key(today)])
        today_fields = hashes.pop()
        unflushed = pending()
        if unflushed:
            hashes[-1] = merge([hashes[-1], unflushed])
            today_fields = merge([today_fields, unflushed])

        grouped: dict[int, list[Mapping[str, int]]] = {}
        for start, fields in zip(buckets, hashes, strict=True):
            grouped.setdefault(floor_to(start, step), []).append(fields)
        points = [{"t": start, **report(merge(parts), ())} for start, parts in sorted(grouped.items())]

        hours = sorted({floor_to(start, HOUR) for start in buckets})
        scored = await self.store.top_scores(
            [self.top_keys_key(hour) for hour in hours],
            top * 2,
            scratch_key=f"{self.base}:topkeys:union:{uuid.uuid4().hex}",
        )
        top_keys = merge([dict(scored), dict(key_hits or {})])
        ranked = heapq.nlargest(top, top_keys.items(), key=lambda item: (item[1], item[0]))
        return {
            "now": round(now, 3),
            "window": window,
            "step": step,
            "retention": self.retention,
            "points": points,
            "window_totals": report(merge(hashes), self.namespaces),
            "today": {"since": today, **report(today_fields, self.namespaces)},
            "top_keys": {
                "since": hours[0],
                "keys": [{**self._describe_key(key), "hits": hits} for key, hits in ranked],
            },
        }

    def _describe_key(self, key: str) -> dict[str, str]:
        shown = key[len(self.key_prefix) :] if self.key_prefix and key.startswith(self.key_prefix) else key
        return {"key": shown, "namespace": shown.partition(":")[0]}
