"""An in-process first tier (W-TinyLFU, bounded in bytes) in front of the shared store.

A first-tier hit touches no Redis at all. Entries come into the first tier when they are read
from, or written to, the shared store, and never outlive their life there: the first-tier TTL is
what is left of the entry's own (fresh time plus stale window, read from the entry's header),
capped at `PROXY_TIER1_MAX_TTL` so that an entry refreshed by another replica is picked up within
that time. A clear on any replica empties the matching first-tier entries of every replica: it is
announced on a Redis channel (`invalidation.py`) and applied here by `invalidate_locally`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from proxy.entry import entry_expiry
from proxy.store.base import CounterWrite, KeyspaceUsage, Store, StoreInfo
from proxy.store.tinylfu import TinyLfuCache

Announce = Callable[[str], Awaitable[None]]


class TieredStore(Store):
    def __init__(
        self,
        first: TinyLfuCache,
        second: Store,
        *,
        max_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.first = first
        self.second = second
        self.backend = second.backend
        self.max_ttl = max_ttl
        self._clock = clock
        self._announce: Announce | None = None

    def announce_clears_with(self, announce: Announce) -> None:
        """Tell other replicas about clears through `announce(pattern)`."""
        self._announce = announce

    # What the probes and metrics read from the fail-open store underneath.
    @property
    def available(self) -> bool:
        return bool(getattr(self.second, "available", True))

    @property
    def errors(self) -> int:
        return int(getattr(self.second, "errors", 0))

    def get_local(self, key: str) -> bytes | None:
        return self.first.get(key, record_miss=False)

    def get_soon(self, key: str) -> asyncio.Future[bytes | None] | None:
        """After `get_local` found nothing: the shared store's lookup (the first tier's miss counted)."""
        future = self.second.get_soon(key)
        if future is not None:
            self.first.record_miss(key)
            future.add_done_callback(functools.partial(self._remember_found, key))
        return future

    def _remember_found(self, key: str, future: asyncio.Future[bytes | None]) -> None:
        if not future.cancelled() and future.exception() is None:
            value = future.result()
            if value is not None:
                self._remember(key, value)

    async def get(self, key: str) -> bytes | None:
        value = self.first.get(key)
        if value is not None:
            return value
        value = await self.second.get(key)
        if value is not None:
            self._remember(key, value)
        return value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        found: list[bytes | None] = [self.first.get(key) for key in keys]
        missing = [index for index, value in enumerate(found) if value is None]
        if missing:
            fetched = await self.second.get_many([keys[index] for index in missing])
            for index, value in zip(missing, fetched, strict=True):
                if value is not None:
                    self._remember(keys[index], value)
                found[index] = value
        return found

    async def put(self, key: str, value: bytes, ttl: float, *, if_absent: bool = False) -> None:
        await self.second.put(key, value, ttl, if_absent=if_absent)
        if not if_absent:
            self.first.put(key, value, min(ttl, self.max_ttl))
        else:
            self.first.delete(key)  # the shared store may have kept another replica's entry

    async def delete(self, key: str) -> bool:
        self.first.delete(key)
        return await self.second.delete(key)

    async def delete_matching(self, pattern: str) -> int:
        self.first.delete_matching(pattern)
        removed = await self.second.delete_matching(pattern)
        if self._announce is not None:
            await self._announce(pattern)
        return removed

    def invalidate_locally(self, pattern: str) -> int:
        return self.first.delete_matching(pattern)

    async def usage(self, pattern: str, *, budget: float) -> KeyspaceUsage:
        return await self.second.usage(pattern, budget=budget)

    async def ping(self) -> StoreInfo:
        info = await self.second.ping()
        details = {**info.details, "tier1": self.tier1_figures()}
        return StoreInfo(info.backend, info.round_trip_ms, details)

    def tier1_figures(self) -> dict[str, Any]:
        return {
            "hits": self.first.hits,
            "misses": self.first.misses,
            "entries": len(self.first),
            "bytes": self.first.used_bytes,
            "max_bytes": self.first.max_bytes,
            "evictions": self.first.evictions,
            "rejections": self.first.rejections,
        }

    async def add_counters(self, key: str, deltas: dict[str, int]) -> None:
        await self.second.add_counters(key, deltas)

    async def read_counters(self, key: str) -> dict[str, int]:
        return await self.second.read_counters(key)

    async def write_counters(self, writes: Sequence[CounterWrite]) -> None:
        await self.second.write_counters(writes)

    async def read_counters_many(self, keys: Sequence[str]) -> list[dict[str, int]]:
        return await self.second.read_counters_many(keys)

    async def top_scores(self, keys: Sequence[str], count: int, *, scratch_key: str) -> list[tuple[str, int]]:
        return await self.second.top_scores(keys, count, scratch_key=scratch_key)

    async def close(self) -> None:
        self.first.clear()
        await self.second.close()

    def _remember(self, key: str, value: bytes) -> None:
        expires_at = entry_expiry(value)
        if expires_at is not None:
            self.first.put(key, value, min(expires_at - self._clock(), self.max_ttl))
