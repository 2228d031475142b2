"""Fail open: a store wrapper that turns store failures into misses, with a circuit breaker.

A cache must never make things worse. Reads that fail answer "absent", writes that fail are
dropped, and after `failure_threshold` consecutive failures the breaker opens: for
`cooldown` seconds no request waits on the store at all. Then one call is let through; success
closes the breaker. The outage is logged once when it starts (in the seed's words,
`Redis connection failed: <reason>`) and once when it ends, never once per request.
Administrative calls (delete, clear, ping, statistics counters and history) are not hidden:
their errors reach the caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import structlog

from proxy.errors import StoreError
from proxy.store.base import CounterWrite, KeyspaceUsage, Store, StoreInfo

T = TypeVar("T")
log = structlog.get_logger("proxy.store")


class FailOpenStore(Store):
    def __init__(
        self,
        inner: Store,
        *,
        failure_threshold: int = 3,
        cooldown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._consecutive_failures = 0
        self._open_until = 0.0
        self._outage_started: float | None = None
        self.last_error: str | None = None
        self.errors = 0
        self.skipped = 0

    @property
    def available(self) -> bool:
        """False while an outage is known (the breaker is open or the last call failed)."""
        return self._outage_started is None

    @property
    def breaker_open(self) -> bool:
        return self._clock() < self._open_until

    def get_local(self, key: str) -> bytes | None:
        return self.inner.get_local(key)  # no I/O, so nothing for the breaker to guard

    def get_soon(self, key: str) -> asyncio.Future[bytes | None] | None:
        if self.breaker_open:
            return None
        future = self.inner.get_soon(key)
        if future is not None:
            future.add_done_callback(self._account)
        return future

    def _account(self, future: asyncio.Future[bytes | None]) -> None:
        """The breaker learns from lookups made through `get_soon` too."""
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            self._succeeded()
        else:
            self._failed(StoreError(str(error) or type(error).__name__))

    async def get(self, key: str) -> bytes | None:
        return await self._guarded(self.inner.get(key), None)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return await self._guarded(self.inner.get_many(keys), [None] * len(keys))

    async def put(self, key: str, value: bytes, ttl: float, *, if_absent: bool = False) -> None:
        await self._guarded(self.inner.put(key, value, ttl, if_absent=if_absent), None)

    async def delete(self, key: str) -> bool:
        return await self._reported(self.inner.delete(key))

    async def delete_matching(self, pattern: str) -> int:
        return await self._reported(self.inner.delete_matching(pattern))

    async def ping(self) -> StoreInfo:
        return await self._reported(self.inner.ping())

    async def usage(self, pattern: str, *, budget: float) -> KeyspaceUsage:
        return await self._reported(self.inner.usage(pattern, budget=budget))

    async def add_counters(self, key: str, deltas: dict[str, int]) -> None:
        await self._reported(self.inner.add_counters(key, deltas))

    async def read_counters(self, key: str) -> dict[str, int]:
        return await self._reported(self.inner.read_counters(key))

    async def write_counters(self, writes: Sequence[CounterWrite]) -> None:
        await self._reported(self.inner.write_counters(writes))

    async def read_counters_many(self, keys: Sequence[str]) -> list[dict[str, int]]:
        return await self._reported(self.inner.read_counters_many(keys))

    async def top_scores(self, keys: Sequence[str], count: int, *, scratch_key: str) -> list[tuple[str, int]]:
        return await self._reported(self.inner.top_scores(keys, count, scratch_key=scratch_key))

    async def close(self) -> None:
        await self.inner.close()

    async def _guarded(self, call: Awaitable[T], fallback: T) -> T:
        if self.breaker_open:
            self.skipped += 1
            _discard(call)
            return fallback
        try:
            result = await call
        except StoreError as exc:
            self._failed(exc)
            return fallback
        self._succeeded()
        return result

    async def _reported(self, call: Awaitable[T]) -> T:
        try:
            result = await call
        except StoreError as exc:
            self._failed(exc)
            raise
        self._succeeded()
        return result

    def _failed(self, exc: StoreError) -> None:
        self.errors += 1
        self._consecutive_failures += 1
        self.last_error = str(exc)
        if self._outage_started is None:
            self._outage_started = self._clock()
            log.error(f"{_product(self.backend)} connection failed: {exc}", backend=self.backend)
        if self._consecutive_failures >= self.failure_threshold:
            self._open_until = self._clock() + self.cooldown

    def _succeeded(self) -> None:
        self._consecutive_failures = 0
        self._open_until = 0.0
        if self._outage_started is not None:
            lasted = self._clock() - self._outage_started
            self._outage_started = None
            log.info(f"{_product(self.backend)} connection restored", outage_seconds=round(lasted, 3))


def _product(backend: str) -> str:
    return "Redis" if backend == "redis" else backend.capitalize()


def _discard(call: Awaitable[object]) -> None:
    close = getattr(call, "close", None)
    if close is not None:
        close()
