"""The in-process first tier: bounded in bytes, frequency-aware, never outliving its entries."""

from __future__ import annotations

from proxy.entry import Entry, encode_entry
from proxy.store.base import KeyspaceUsage, Store, StoreInfo
from proxy.store.memory import MemoryStore
from proxy.store.tiered import TieredStore
from proxy.store.tinylfu import ENTRY_OVERHEAD_BYTES, CountMinSketch, TinyLfuCache


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_bounded_in_bytes() -> None:
    cache = TinyLfuCache(100_000)
    for index in range(1000):
        cache.put(f"k{index}", b"x" * 500, ttl=60)
    assert cache.used_bytes <= 100_000
    assert 0 < len(cache) < 1000


def test_popular_entries_survive_a_flood_of_one_off_requests() -> None:
    cache = TinyLfuCache(200 * (1000 + ENTRY_OVERHEAD_BYTES + 8))
    popular = [f"popular{index}" for index in range(50)]
    for key in popular:
        cache.put(key, b"p" * 1000, ttl=600)
    for _ in range(5):
        for key in popular:
            assert cache.get(key) is not None
    for index in range(5000):  # a scan of one-off requests, each seen once
        cache.get(f"once{index}")
        cache.put(f"once{index}", b"o" * 1000, ttl=600)
    survivors = sum(cache.get(key) is not None for key in popular)
    assert survivors == len(popular)
    assert cache.rejections > 4000


def test_a_plain_lru_would_have_lost_them() -> None:
    lru = MemoryStore(200 * (1000 + 128))
    # The same workload on the embedded store (an LRU): the popular entries are flushed.
    import asyncio

    async def run() -> int:
        for index in range(50):
            await lru.put(f"popular{index}", b"p" * 1000, 600)
        for index in range(5000):
            await lru.put(f"once{index}", b"o" * 1000, 600)
        return sum([await lru.get(f"popular{index}") is not None for index in range(50)])

    assert asyncio.run(run()) == 0


def test_expiry_and_deletes() -> None:
    clock = Clock()
    cache = TinyLfuCache(1_000_000, clock=clock)
    cache.put("artwork_info:a", b"1", ttl=10)
    cache.put("artwork_info:b", b"2", ttl=100)
    cache.put("ai_content:x", b"3", ttl=100)
    clock.now += 11
    assert cache.get("artwork_info:a") is None
    assert cache.delete_matching("artwork_info:*") == 1
    assert cache.get("ai_content:x") == b"3"


def test_the_sketch_counts_and_forgets() -> None:
    sketch = CountMinSketch(64)
    for _ in range(10):
        sketch.increment("hot")
    assert sketch.frequency("hot") == 10
    assert sketch.frequency("cold") <= 1
    for index in range(10 * sketch.width):
        sketch.increment(f"noise{index}")
    assert sketch.frequency("hot") < 10  # aged


class CountingStore(Store):
    """A store that counts its reads, to show the first tier answers without it."""

    backend = "redis"

    def __init__(self) -> None:
        self.inner = MemoryStore(10_000_000)
        self.reads = 0

    async def get(self, key: str) -> bytes | None:
        self.reads += 1
        return await self.inner.get(key)

    async def put(self, key: str, value: bytes, ttl: float, *, if_absent: bool = False) -> None:
        await self.inner.put(key, value, ttl, if_absent=if_absent)

    async def delete(self, key: str) -> bool:
        return await self.inner.delete(key)

    async def delete_matching(self, pattern: str) -> int:
        return await self.inner.delete_matching(pattern)

    async def ping(self) -> StoreInfo:
        return StoreInfo("redis", 0.0)

    async def usage(self, pattern: str, *, budget: float) -> KeyspaceUsage:
        return await self.inner.usage(pattern, budget=budget)

    async def add_counters(self, key: str, deltas: dict[str, int]) -> None:
        await self.inner.add_counters(key, deltas)

    async def read_counters(self, key: str) -> dict[str, int]:
        return await self.inner.read_counters(key)

    async def write_counters(self, writes):  # type: ignore[no-untyped-def]
        await self.inner.write_counters(writes)

    async def top_scores(self, keys, count, *, scratch_key):  # type: ignore[no-untyped-def]
        return await self.inner.top_scores(keys, count, scratch_key=scratch_key)


async def test_a_first_tier_hit_touches_no_shared_store() -> None:
    clock = Clock()
    shared = CountingStore()
    tiered = TieredStore(TinyLfuCache(1_000_000), shared, max_ttl=30, clock=clock)
    entry = encode_entry(Entry(200, (), b"{}", stored_at=clock.now, fresh_for=60))
    await shared.put("artwork_info:a", entry, 60)  # written by another replica
    assert await tiered.get("artwork_info:a") == entry
    assert shared.reads == 1
    for _ in range(10):
        assert await tiered.get("artwork_info:a") == entry
    assert shared.reads == 1
    assert tiered.first.hits == 10


async def test_first_tier_entries_never_outlive_the_entry() -> None:
    clock = Clock()
    first = TinyLfuCache(1_000_000, clock=lambda: clock.now)
    shared = CountingStore()
    tiered = TieredStore(first, shared, max_ttl=3600, clock=clock)
    # Stored 50 s ago for 60 s: 10 s of life left, whatever the tier's own cap.
    entry = encode_entry(Entry(200, (), b"{}", stored_at=clock.now - 50, fresh_for=60))
    await shared.put("k", entry, 10)
    await tiered.get("k")
    clock.now += 11
    assert first.get("k") is None
