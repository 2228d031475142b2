"""Fail open: store errors become misses, the breaker spares requests the wait, one log per outage."""

from collections.abc import Sequence

import pytest
from structlog.testing import capture_logs

from proxy.errors import StoreError
from proxy.store.base import CounterWrite, KeyspaceUsage, Store, StoreInfo
from proxy.store.failopen import FailOpenStore
from proxy.store.memory import MemoryStore


class FlakyStore(Store):
    backend = "redis"

    def __init__(self) -> None:
        self.inner = MemoryStore(1_000_000)
        self.down = False
        self.calls = 0

    async def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise StoreError("Connection refused")

    async def get(self, key: str) -> bytes | None:
        await self._check()
        return await self.inner.get(key)

    async def put(self, key: str, value: bytes, ttl: float, *, if_absent: bool = False) -> None:
        await self._check()
        await self.inner.put(key, value, ttl, if_absent=if_absent)

    async def delete(self, key: str) -> bool:
        await self._check()
        return await self.inner.delete(key)

    async def delete_matching(self, pattern: str) -> int:
        await self._check()
        return await self.inner.delete_matching(pattern)

    async def ping(self) -> StoreInfo:
        await self._check()
        return StoreInfo("redis", 0.1)

    async def usage(self, pattern: str, *, budget: float) -> KeyspaceUsage:
        await self._check()
        return await self.inner.usage(pattern, budget=budget)

    async def add_counters(self, key: str, deltas: dict[str, int]) -> None:
        await self._check()
        await self.inner.add_counters(key, deltas)

    async def read_counters(self, key: str) -> dict[str, int]:
        await self._check()
        return await self.inner.read_counters(key)

    async def write_counters(self, writes: Sequence[CounterWrite]) -> None:
        await self._check()
        await self.inner.write_counters(writes)

    async def top_scores(self, keys: Sequence[str], count: int, *, scratch_key: str) -> list[tuple[str, int]]:
        await self._check()
        return await self.inner.top_scores(keys, count, scratch_key=scratch_key)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_failures_are_misses_and_logged_once_per_outage() -> None:
    flaky, clock = FlakyStore(), Clock()
    store = FailOpenStore(flaky, failure_threshold=3, cooldown=1.0, clock=clock)
    await store.put("k", b"v", 60)
    flaky.down = True
    with capture_logs() as logs:
        for _ in range(10):
            assert await store.get("k") is None
            await store.put("k2", b"v", 60)
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert [entry["event"] for entry in errors] == ["Redis connection failed: Connection refused"]
    assert not store.available
    # Three failures opened the breaker: the other calls never reached the store.
    assert flaky.calls == 1 + 3
    assert store.skipped == 17


async def test_hits_resume_after_the_cooldown() -> None:
    flaky, clock = FlakyStore(), Clock()
    store = FailOpenStore(flaky, failure_threshold=1, cooldown=1.0, clock=clock)
    await store.put("k", b"v", 60)
    flaky.down = True
    assert await store.get("k") is None
    flaky.down = False
    assert await store.get("k") is None  # breaker still open
    clock.now += 1.0
    with capture_logs() as logs:
        assert await store.get("k") == b"v"
    assert store.available
    assert [entry["event"] for entry in logs] == ["Redis connection restored"]


async def test_admin_calls_report_errors() -> None:
    flaky = FlakyStore()
    store = FailOpenStore(flaky)
    flaky.down = True
    with pytest.raises(StoreError, match="Connection refused"):
        await store.ping()
    with pytest.raises(StoreError, match="Connection refused"):
        await store.delete_matching("a:*")
    with pytest.raises(StoreError, match="Connection refused"):
        await store.delete("a")
