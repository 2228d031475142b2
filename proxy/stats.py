"""Cache statistics: counted in process on the hot path, flushed to the store in batches.

Every figure is a monotonically growing integer field in one flat mapping, so the same shape
serves this process's own view, the cluster-wide view (the sum every replica flushed into one
Redis hash with HINCRBY) and the Prometheus exposition. Latencies go into fixed log-spaced
buckets, which merge across replicas by addition; percentiles are read off the merged buckets
(to within one bucket, 25 %).

Field names: `<namespace>|n|<outcome>` request counts, `<namespace>|h|<kind>|<bucket>` latency
bucket counts and `<namespace>|hs|<kind>` their sums in microseconds (kind: hit, miss,
upstream), `<namespace>|t|in` / `|t|out` tokens saved, `<namespace>|nusd` nano-dollars saved,
`<namespace>|m|<model>|t` and `|m|<model>|nusd` the same per model.

Hits per cache key are counted beside them (`key_hits`, one dict increment per hit) for the
dashboard's most-hit keys; the flusher takes them with `take_key_hits`.
"""

from __future__ import annotations

import bisect
import heapq
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.constants import BYPASS, COALESCED, HIT, MISS, REFRESH, STALE
from proxy.prices import PriceTable
from proxy.usage import Usage

OUTCOMES = (HIT, MISS, STALE, BYPASS, COALESCED, REFRESH)
HIT_KINDS = frozenset({HIT, STALE})
LOOKUP_OUTCOMES = frozenset({HIT, STALE, MISS, REFRESH, COALESCED})
# 100 us to about 60 s in steps of 25 %.
BUCKETS: tuple[float, ...] = tuple(0.0001 * 1.25**index for index in range(60))
PERCENTILES = (50, 95, 99)
NANO = 1_000_000_000
# Distinct keys whose hit counts wait for a flush at most (an outage keeps the most-hit ones).
MAX_PENDING_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class _FieldNames:
    count: str
    buckets: tuple[str, ...]
    latency_sum: str


class Stats:
    """This process's counters. `record` costs a few dict increments and never awaits."""

    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices
        self.fields: defaultdict[str, int] = defaultdict(int)
        self.started_at = time.time()
        self._names: dict[tuple[str, str], _FieldNames] = {}
        self._flushed: dict[str, int] = {}
        self.key_hits: defaultdict[str, int] = defaultdict(int)
        self.fast_lane_hits = 0  # of the hits, those the fast lane answered (this process; not flushed)
        self.fast_lane_misses = 0  # requests that went upstream (MISS, COALESCED) the lane passed on

    def record(
        self, namespace: str, outcome: str, seconds: float, *, usage: Usage | None = None, key: str | None = None
    ) -> None:
        names = self._names.get((namespace, outcome)) or self._field_names(namespace, outcome)
        fields = self.fields
        fields[names.count] += 1
        fields[names.buckets[bisect.bisect_left(BUCKETS, seconds)]] += 1
        fields[names.latency_sum] += int(seconds * 1_000_000)
        if usage is not None:  # what the cache answered instead of the upstream
            self._record_saving(namespace, usage)
        if key is not None and outcome in HIT_KINDS:
            self.key_hits[key] += 1

    def record_upstream(self, namespace: str, seconds: float) -> None:
        names = self._names.get((namespace, "upstream")) or self._field_names(namespace, "upstream")
        self.fields[names.buckets[bisect.bisect_left(BUCKETS, seconds)]] += 1
        self.fields[names.latency_sum] += int(seconds * 1_000_000)

    def _record_saving(self, namespace: str, usage: Usage) -> None:
        nano_dollars = round(self.prices.cost(usage) * NANO)
        fields = self.fields
        fields[f"{namespace}|t|in"] += usage.input_tokens
        fields[f"{namespace}|t|out"] += usage.output_tokens
        fields[f"{namespace}|nusd"] += nano_dollars
        fields[f"{namespace}|m|{usage.model}|t"] += usage.total_tokens
        fields[f"{namespace}|m|{usage.model}|nusd"] += nano_dollars

    def _field_names(self, namespace: str, outcome: str) -> _FieldNames:
        kind = "upstream" if outcome == "upstream" else ("hit" if outcome in HIT_KINDS else "miss")
        names = _FieldNames(
            count=f"{namespace}|n|{outcome.lower()}",
            buckets=tuple(f"{namespace}|h|{kind}|{index}" for index in range(len(BUCKETS) + 1)),
            latency_sum=f"{namespace}|hs|{kind}",
        )
        self._names[(namespace, outcome)] = names
        return names

    def pending(self) -> dict[str, int]:
        """What grew since the last acknowledged flush."""
        return {
            name: value - self._flushed.get(name, 0)
            for name, value in self.fields.items()
            if value != self._flushed.get(name, 0)
        }

    def acknowledge(self, flushed: Mapping[str, int]) -> None:
        """Mark `flushed` deltas as written to the shared store."""
        for name, delta in flushed.items():
            self._flushed[name] = self._flushed.get(name, 0) + delta

    def take_key_hits(self) -> dict[str, int]:
        """The per-key hit counts since the last take; counting starts again from zero."""
        taken, self.key_hits = dict(self.key_hits), defaultdict(int)
        return taken

    def restore_key_hits(self, taken: Mapping[str, int]) -> None:
        """Give back counts whose flush failed, keeping at most `MAX_PENDING_KEYS` keys (the most hit)."""
        for key, hits in taken.items():
            self.key_hits[key] += hits
        if len(self.key_hits) > MAX_PENDING_KEYS:
            kept = heapq.nlargest(MAX_PENDING_KEYS, self.key_hits.items(), key=lambda item: item[1])
            self.key_hits = defaultdict(int, kept)


def report(fields: Mapping[str, int], namespaces: Iterable[str]) -> dict[str, Any]:
    """The JSON shape of `/redis/stats` for one set of counters: totals and per namespace."""
    per_namespace: dict[str, dict[str, Any]] = {}
    totals_fields: defaultdict[str, int] = defaultdict(int)
    grouped: dict[str, dict[str, int]] = {name: {} for name in namespaces}
    for name, value in fields.items():
        namespace, _, rest = name.partition("|")
        grouped.setdefault(namespace, {})[rest] = value
        totals_fields[rest] += value
    for namespace, own in grouped.items():
        per_namespace[namespace] = _summary(own)
    return {"totals": _summary(totals_fields), "namespaces": per_namespace}


def _summary(fields: Mapping[str, int]) -> dict[str, Any]:
    counts = {outcome.lower(): fields.get(f"n|{outcome.lower()}", 0) for outcome in OUTCOMES}
    lookups = sum(counts[outcome.lower()] for outcome in LOOKUP_OUTCOMES)
    served_from_cache = counts["hit"] + counts["stale"]
    models: dict[str, dict[str, float]] = {}
    for name, value in fields.items():
        if name.startswith("m|"):
            model, _, figure = name[2:].rpartition("|")
            entry = models.setdefault(model, {"tokens": 0, "money_usd": 0.0})
            if figure == "t":
                entry["tokens"] += value
            else:
                entry["money_usd"] = round(entry["money_usd"] + value / NANO, 8)
    return {
        "requests": sum(counts.values()),
        "hits": counts["hit"],
        "misses": counts["miss"],
        "stale": counts["stale"],
        "bypass": counts["bypass"],
        "coalesced": counts["coalesced"],
        "refresh": counts["refresh"],
        "hit_rate": round(served_from_cache / lookups, 4) if lookups else None,
        "upstream_calls_saved": counts["hit"] + counts["stale"] + counts["coalesced"],
        "latency_ms": {kind: percentiles(fields, kind) for kind in ("hit", "miss", "upstream")},
        "tokens_saved": {
            "input": fields.get("t|in", 0),
            "output": fields.get("t|out", 0),
            "total": fields.get("t|in", 0) + fields.get("t|out", 0),
        },
        "money_saved_usd": round(fields.get("nusd", 0) / NANO, 8),
        "saved_by_model": models,
    }


def bucket_counts(fields: Mapping[str, int], kind: str) -> list[int]:
    return [fields.get(f"h|{kind}|{index}", 0) for index in range(len(BUCKETS) + 1)]


def percentiles(fields: Mapping[str, int], kind: str) -> dict[str, float | None]:
    counts = bucket_counts(fields, kind)
    total = sum(counts)
    result: dict[str, float | None] = {}
    for percentile in PERCENTILES:
        result[f"p{percentile}"] = _percentile(counts, total, percentile) if total else None
    result["count"] = total
    return result


def _percentile(counts: list[int], total: int, percentile: int) -> float:
    rank = total * percentile / 100
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank and count:
            bound = BUCKETS[min(index, len(BUCKETS) - 1)]
            return round(bound * 1000, 3)
    return round(BUCKETS[-1] * 1000, 3)
