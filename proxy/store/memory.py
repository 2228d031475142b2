"""The embedded in-process store: an LRU dictionary bounded in bytes, with per-key expiry.

Used when no Redis is configured or reachable at start, and as the fast store in unit tests.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

from proxy.store.base import CounterWrite, KeyspaceUsage, Store, StoreInfo, glob_to_regex

# Rough bookkeeping cost of one entry beyond its key and value (dict slot, tuple, objects).
ENTRY_OVERHEAD_BYTES = 120


class _Item(NamedTuple):
    value: bytes
    expires_at: float


class MemoryStore(Store):
    backend = "memory"

    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._bytes = 0
        self.evictions = 0
        self._counters: dict[str, dict[str, int]] = {}
        # Counter hashes and sorted sets written with a TTL (statistics history), by expiry time.
        self._sorted: dict[str, dict[str, int]] = {}
        self._counter_expiry: dict[str, float] = {}

    @property
    def used_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> bytes | None:
        return self.get_local(key)

    def get_local(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item.expires_at <= self._clock():
            self._remove(key)
            return None
        self._items.move_to_end(key)
        return item.value

    async def put(self, key: str, value: bytes, ttl: float, *, if_absent: bool = False) -> None:
        if if_absent and await self.get(key) is not None:
            return
        size = _cost(key, value)
        if key in self._items:
            self._remove(key)
        if size > self.max_bytes or ttl <= 0:
            return
        self._items[key] = _Item(value, self._clock() + ttl)
        self._bytes += size
        self._evict()

    async def delete(self, key: str) -> bool:
        if key in self._items:
            self._remove(key)
            return True
        return False

    async def delete_matching(self, pattern: str) -> int:
        regex = glob_to_regex(pattern)
        doomed = [key for key in self._items if regex.fullmatch(key)]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    async def usage(self, pattern: str, *, budget: float) -> KeyspaceUsage:
        regex = glob_to_regex(pattern)
        now = self._clock()
        entries = size = 0
        for key, item in self._items.items():
            if item.expires_at > now and regex.fullmatch(key):
                entries += 1
                size += len(key) + len(item.value)
        return KeyspaceUsage(entries, size)

    async def add_counters(self, key: str, deltas: dict[str, int]) -> None:
        counters = self._counters.setdefault(key, {})
        for name, delta in deltas.items():
            counters[name] = counters.get(name, 0) + delta

    async def read_counters(self, key: str) -> dict[str, int]:
        self._expire_counters()
        return dict(self._counters.get(key, {}))

    async def write_counters(self, writes: Sequence[CounterWrite]) -> None:
        self._expire_counters()
        for write in writes:
            if not write.deltas:
                continue
            target = (self._sorted if write.sorted_set else self._counters).setdefault(write.key, {})
            for name, delta in write.deltas.items():
                target[name] = target.get(name, 0) + delta
            if write.sorted_set and write.keep is not None and len(target) > write.keep:
                kept = heapq.nlargest(write.keep, target.items(), key=lambda item: item[1])
                target.clear()
                target.update(kept)
            if write.ttl is not None:
                self._counter_expiry[write.key] = self._clock() + write.ttl

    async def top_scores(self, keys: Sequence[str], count: int, *, scratch_key: str) -> list[tuple[str, int]]:
        self._expire_counters()
        union: dict[str, int] = {}
        for key in keys:
            for member, score in self._sorted.get(key, {}).items():
                union[member] = union.get(member, 0) + score
        return heapq.nlargest(count, union.items(), key=lambda item: (item[1], item[0]))

    def _expire_counters(self) -> None:
        if not self._counter_expiry:
            return
        now = self._clock()
        for key in [key for key, expires_at in self._counter_expiry.items() if expires_at <= now]:
            del self._counter_expiry[key]
            self._counters.pop(key, None)
            self._sorted.pop(key, None)

    async def ping(self) -> StoreInfo:
        now = self._clock()
        for key in [key for key, item in self._items.items() if item.expires_at <= now]:
            self._remove(key)
        return StoreInfo(
            backend=self.backend,
            round_trip_ms=0.0,
            details={
                "used_memory": self._bytes,
                "maxmemory": self.max_bytes,
                "maxmemory_policy": "allkeys-lru",
                "keys": len(self._items),
                "evicted_keys": self.evictions,
            },
        )

    def _remove(self, key: str) -> None:
        item = self._items.pop(key)
        self._bytes -= _cost(key, item.value)

    def _evict(self) -> None:
        now = self._clock()
        while self._bytes > self.max_bytes and self._items:
            key, item = next(iter(self._items.items()))
            self._remove(key)
            if item.expires_at > now:
                self.evictions += 1


def _cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD_BYTES
