"""Moving statistics between this process and the shared store.

A background task flushes what grew since the last flush into one counter hash every
`PROXY_STATS_FLUSH_INTERVAL` seconds (one pipelined HINCRBY batch), so a hit never waits for a
counter round trip; a failed flush is retried with the next one, nothing is lost. The same
pipeline adds the deltas to the per-minute history and the per-key hits to the most-hit keys
(`history.py`). Keyspace usage (entries and bytes per namespace) walks the store, so it is
cached for a few seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from proxy.constants import INTERNAL_NAMESPACE
from proxy.errors import StoreError
from proxy.history import DEFAULT_RETENTION, History
from proxy.stats import Stats, report
from proxy.store.base import CounterWrite, KeyspaceUsage, Store

USAGE_MAX_AGE = 10.0
USAGE_BUDGET = 2.0
log = structlog.get_logger("proxy.stats")


class StatsKeeper:
    def __init__(
        self,
        stats: Stats,
        store: Store,
        *,
        namespaces: tuple[str, ...],
        key_prefix: str,
        retention: float = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stats = stats
        self.store = store
        self.namespaces = namespaces
        self.key_prefix = key_prefix
        self.counters_key = f"{key_prefix}{INTERNAL_NAMESPACE}:stats"
        self.history = History(store, key_prefix=key_prefix, namespaces=namespaces, retention=retention, clock=clock)
        self._usage: dict[str, KeyspaceUsage] = {}
        self._usage_at = 0.0
        self._usage_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()

    async def flush(self) -> bool:
        """Write pending deltas (counters, history, key hits in one batch); True when there was
        nothing to write or the write succeeded."""
        async with self._flush_lock:  # two flushes at once would write the same deltas twice
            pending = self.stats.pending()
            key_hits = self.stats.take_key_hits()
            if not pending and not key_hits:
                return True
            writes = [CounterWrite(self.counters_key, pending)] if pending else []
            writes += self.history.writes(pending, key_hits, self.history.clock())
            try:
                await self.store.write_counters(writes)
            except StoreError:
                self.stats.restore_key_hits(key_hits)
                return False  # the store logged the outage; these deltas go with the next flush
            self.stats.acknowledge(pending)
            return True

    async def run_flusher(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.flush()

    async def cluster_fields(self) -> dict[str, int]:
        """Every replica's flushed counters plus this process's pending ones."""
        async with self._flush_lock:  # no flush between the read and `pending`: nothing counted twice or missed
            shared = await self.store.read_counters(self.counters_key)
            for name, delta in self.stats.pending().items():
                shared[name] = shared.get(name, 0) + delta
        return shared

    async def history_report(self, window: int, step: int) -> dict[str, Any]:
        """The body of `GET /redis/stats/history`: every replica's flushed history plus this
        process's pending part."""
        async with self._flush_lock:  # as in `cluster_fields`
            return await self.history.read(window, step, pending=self.stats.pending, key_hits=self.stats.key_hits)

    async def usage(self, *, max_age: float = USAGE_MAX_AGE) -> dict[str, KeyspaceUsage]:
        """Entries and bytes per namespace, walked at most every `max_age` seconds."""
        async with self._usage_lock:
            if time.monotonic() - self._usage_at > max_age:
                fresh = {}
                for namespace in self.namespaces:
                    fresh[namespace] = await self.store.usage(f"{self.key_prefix}{namespace}:*", budget=USAGE_BUDGET)
                self._usage, self._usage_at = fresh, time.monotonic()
        return self._usage

    def cached_usage(self) -> Mapping[str, KeyspaceUsage]:
        return self._usage

    async def snapshot(self) -> dict[str, Any]:
        """The body of `GET /redis/stats`."""
        body: dict[str, Any] = {
            "process": {"since": round(self.stats.started_at, 3), **report(self.stats.fields, self.namespaces)},
        }
        try:
            body["cluster"] = report(await self.cluster_fields(), self.namespaces)
            usage = await self.usage()
            info = await self.store.ping()
        except StoreError as exc:
            body["cluster"] = None
            body["store"] = {"backend": self.store.backend, "error": f"Redis connection failed: {exc}"}
            return body
        body["store"] = {
            "backend": info.backend,
            "used_memory": info.details.get("used_memory"),
            "maxmemory": info.details.get("maxmemory"),
            "evicted_keys": info.details.get("evicted_keys"),
            "tier1": info.details.get("tier1"),  # the in-process first tier, when there is one
            "complete": all(item.complete for item in usage.values()),
            "namespaces": {name: {"entries": item.entries, "bytes": item.bytes} for name, item in usage.items()},
            "entries": sum(item.entries for item in usage.values()),
            "bytes": sum(item.bytes for item in usage.values()),
        }
        return body
