"""The embedded store: expiry, a byte bound with LRU eviction, glob deletes."""

import pytest

from proxy.store.base import glob_to_regex
from proxy.store.memory import ENTRY_OVERHEAD_BYTES, MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_put_get_and_expiry() -> None:
    clock = Clock()
    store = MemoryStore(1_000_000, clock=clock)
    await store.put("a", b"1", ttl=10)
    assert await store.get("a") == b"1"
    clock.now += 10
    assert await store.get("a") is None
    assert store.used_bytes == 0


async def test_bounded_in_bytes_least_recently_used_goes_first() -> None:
    entry_cost = 1 + 100 + ENTRY_OVERHEAD_BYTES
    store = MemoryStore(entry_cost * 3)
    for key in "abc":
        await store.put(key, b"x" * 100, ttl=60)
    await store.get("a")  # a is now the most recent
    await store.put("d", b"x" * 100, ttl=60)
    assert await store.get("b") is None
    assert {key for key in "acd" if await store.get(key) is not None} == {"a", "c", "d"}
    assert store.used_bytes <= store.max_bytes
    assert store.evictions == 1


async def test_a_value_larger_than_the_bound_is_not_kept() -> None:
    store = MemoryStore(100)
    await store.put("big", b"x" * 1000, ttl=60)
    assert await store.get("big") is None


async def test_delete_matching_uses_redis_globs() -> None:
    store = MemoryStore(1_000_000)
    for key in ("artwork_info:a", "artwork_info:b", "ai_content:x", "other"):
        await store.put(key, b"v", ttl=60)
    assert await store.delete_matching("artwork_info:*") == 2
    assert await store.get("ai_content:x") == b"v"
    assert await store.delete("other")
    assert not await store.delete("other")


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("a*", "abc", True),
        ("a?c", "abc", True),
        ("a?c", "abbc", False),
        ("a[bx]c", "axc", True),
        ("a[^b]c", "abc", False),
        ("a[^b]c", "azc", True),
        ("a[a-c]d", "abd", True),
        ("a\\*", "a*", True),
        ("a\\*", "ab", False),
        ("a.c", "abc", False),
    ],
)
def test_glob_translation(pattern: str, key: str, matches: bool) -> None:
    assert bool(glob_to_regex(pattern).fullmatch(key)) is matches


async def test_the_local_redis_probe(unused_tcp_port: int) -> None:
    from proxy.store.factory import local_redis_answers

    assert not await local_redis_answers(port=unused_tcp_port)
