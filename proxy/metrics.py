"""Prometheus exposition of this process's statistics (Prometheus sums the replicas itself)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.stats import BUCKETS, NANO, OUTCOMES, Stats, bucket_counts
from proxy.store.base import KeyspaceUsage

PREFIX = "artstory_proxy"
# Every fourth internal bucket bound (steps of about 2.4x): exact cumulative counts, few series.
EXPOSED_BUCKETS = tuple(range(3, len(BUCKETS), 4))


class ProxyCollector(Collector):
    """Builds the metric families from the stats fields at scrape time; nothing on the hot path."""

    def __init__(
        self,
        stats: Stats,
        *,
        routes: tuple[str, ...],
        key_prefix: str,
        store_errors: Callable[[], int],
        store_available: Callable[[], bool],
        usage: Callable[[], Mapping[str, KeyspaceUsage]],
        refusals: Callable[[], Mapping[str, int]] = dict,
        tier1: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.stats = stats
        self.routes = routes
        self.key_prefix = key_prefix
        self.store_errors = store_errors
        self.store_available = store_available
        self.usage = usage
        self.refusals = refusals
        self.tier1 = tier1

    def collect(self) -> Iterator[Metric]:
        fields = dict(self.stats.fields)
        labels = ["route", "namespace"]
        requests = CounterMetricFamily(
            f"{PREFIX}_requests", "Requests by route, namespace and cache result.", labels=[*labels, "cache"]
        )
        durations = HistogramMetricFamily(
            f"{PREFIX}_request_duration_seconds",
            "Time to answer a request, by whether it was served from the cache (hit) or upstream (miss).",
            labels=[*labels, "kind"],
        )
        upstream = HistogramMetricFamily(
            f"{PREFIX}_upstream_duration_seconds", "Time until the upstream's answer began.", labels=labels
        )
        tokens = CounterMetricFamily(
            f"{PREFIX}_tokens_saved",
            "Tokens the cache answered instead of the upstream.",
            labels=[*labels, "direction"],
        )
        money = CounterMetricFamily(
            f"{PREFIX}_money_saved_dollars", "Estimated upstream spend avoided, from the price table.", labels=labels
        )
        for route in self.routes:
            values = [route, self.key_prefix + route]
            for outcome in OUTCOMES:
                requests.add_metric([*values, outcome], fields.get(f"{route}|n|{outcome.lower()}", 0))
            for kind in ("hit", "miss"):
                durations.add_metric([*values, kind], *_histogram(fields, route, kind))
            upstream.add_metric(values, *_histogram(fields, route, "upstream"))
            tokens.add_metric([*values, "input"], fields.get(f"{route}|t|in", 0))
            tokens.add_metric([*values, "output"], fields.get(f"{route}|t|out", 0))
            money.add_metric(values, fields.get(f"{route}|nusd", 0) / NANO)
        yield from (requests, durations, upstream, tokens, money)

        yield CounterMetricFamily(
            f"{PREFIX}_store_errors", "Store (Redis) commands that failed.", value=self.store_errors()
        )
        yield CounterMetricFamily(
            f"{PREFIX}_fast_lane_hits",
            "Hits answered by the fast lane, beneath aiohttp (PROXY_FAST_LANE); included in the requests counter.",
            value=self.stats.fast_lane_hits,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_fast_lane_misses",
            "Misses (MISS, COALESCED) whose upstream answer the fast lane passed on; included in the requests counter.",
            value=self.stats.fast_lane_misses,
        )
        refused = CounterMetricFamily(
            f"{PREFIX}_refusals",
            "Requests refused on purpose: disallowed origins and preflights, bad credentials, rate limits, budgets.",
            labels=["reason"],
        )
        for reason, count in sorted(self.refusals().items()):
            refused.add_metric([reason], count)
        yield refused
        if self.tier1 is not None:
            figures = self.tier1()
            yield CounterMetricFamily(
                f"{PREFIX}_tier1_hits",
                "Hits served by the in-process first tier, without Redis.",
                value=figures["hits"],
            )
            yield CounterMetricFamily(
                f"{PREFIX}_tier1_misses", "First-tier lookups that went on to Redis.", value=figures["misses"]
            )
            yield GaugeMetricFamily(f"{PREFIX}_tier1_bytes", "Bytes held by the first tier.", value=figures["bytes"])
            yield GaugeMetricFamily(
                f"{PREFIX}_tier1_entries", "Entries held by the first tier.", value=figures["entries"]
            )
        yield GaugeMetricFamily(
            f"{PREFIX}_store_available",
            "1 while the store answers, 0 during an outage.",
            value=int(self.store_available()),
        )
        entries = GaugeMetricFamily(f"{PREFIX}_store_entries", "Entries stored, per namespace.", labels=labels)
        size = GaugeMetricFamily(
            f"{PREFIX}_store_bytes", "Bytes of keys and values stored, per namespace.", labels=labels
        )
        for route, usage in self.usage().items():
            entries.add_metric([route, self.key_prefix + route], usage.entries)
            size.add_metric([route, self.key_prefix + route], usage.bytes)
        yield entries
        yield size


def _histogram(fields: Mapping[str, int], route: str, kind: str) -> tuple[list[tuple[str, float]], float]:
    counts = bucket_counts(
        {name[len(route) + 1 :]: value for name, value in fields.items() if name.startswith(f"{route}|h")}, kind
    )
    cumulative: list[tuple[str, float]] = []
    running = 0
    index = 0
    for exposed in EXPOSED_BUCKETS:
        while index <= exposed:
            running += counts[index]
            index += 1
        cumulative.append((f"{BUCKETS[exposed]:.6g}", float(running)))
    cumulative.append(("+Inf", float(sum(counts))))
    total_seconds = fields.get(f"{route}|hs|{kind}", 0) / 1_000_000
    return cumulative, total_seconds


def exposition(collector: ProxyCollector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
