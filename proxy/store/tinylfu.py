"""An in-process cache bounded in bytes, with W-TinyLFU admission and eviction.

Recency and frequency both count, so a burst of one-off requests cannot flush the popular
entries. New entries go to a small LRU window (1 % of the bytes); when the window overflows, its
oldest entry competes for a place in the main space with that space's next victim, and wins only
if a count-min sketch says it was asked for more often. The main space is a segmented LRU: an
entry hit again while on probation moves to the protected segment (80 % of the main space).
The sketch's 4-bit counters are halved every `10 x width` increments, so old popularity fades.
This is the scheme of Caffeine (Einarsson, Manes, Friedman: "TinyLFU", 2017), sized in bytes.
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from collections.abc import Callable
from hashlib import blake2b
from typing import NamedTuple

from proxy.store.base import glob_to_regex

ENTRY_OVERHEAD_BYTES = 300  # key and value objects, the item tuple, the ordered dict node (measured)
WINDOW_SHARE = 0.01
PROTECTED_SHARE = 0.80
_MASK64 = (1 << 64) - 1
_SEEDS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5)


@functools.lru_cache(maxsize=4096)  # hot keys are hashed on every access
def _stable_hash(key: str) -> int:
    """64 bits from the key alone: Python's `hash()` of a str changes with every process
    (PYTHONHASHSEED), which would make admission decisions differ from run to run."""
    return int.from_bytes(blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class CountMinSketch:
    """Approximate access counts in four rows of 4-bit saturating counters, with ageing.

    A doorkeeper (a small Bloom filter) takes each key's first access, so the one-off keys that
    make up most of a scan never reach the counters and cannot inflate other keys' counts."""

    def __init__(self, width: int) -> None:
        self.width = max(64, 1 << (width - 1).bit_length())
        self._mask = self.width - 1
        self._rows = [bytearray(self.width) for _ in _SEEDS]
        self._door = bytearray(self.width)  # 8 bits per counter
        self._additions = 0
        self._sample = 10 * self.width

    def _slots(self, base: int) -> list[int]:
        return [((base ^ seed) * 0xFF51AFD7ED558CCD >> 17) & self._mask for seed in _SEEDS]

    def _door_bits(self, key_hash: int) -> list[tuple[int, int]]:
        base = (key_hash * 0x9E3779B97F4A7C15) & _MASK64
        bits = self.width * 8
        return [(bit >> 3, 1 << (bit & 7)) for bit in (base % bits, (base >> 32) % bits)]

    def increment(self, key: str) -> None:
        # `_door_bits` and `_slots` written out: this runs on every first-tier access.
        key_hash = _stable_hash(key)
        base = (key_hash * 0x9E3779B97F4A7C15) & _MASK64
        bits = self.width * 8
        first, second = base % bits, (base >> 32) % bits
        door = self._door
        byte1, mask1, byte2, mask2 = first >> 3, 1 << (first & 7), second >> 3, 1 << (second & 7)
        if door[byte1] & mask1 and door[byte2] & mask2:
            width_mask = self._mask
            for row, seed in zip(self._rows, _SEEDS, strict=True):
                slot = ((key_hash ^ seed) * 0xFF51AFD7ED558CCD >> 17) & width_mask
                if row[slot] < 15:
                    row[slot] += 1
        else:
            door[byte1] |= mask1
            door[byte2] |= mask2
        self._additions += 1
        if self._additions >= self._sample:
            self._age()

    def frequency(self, key: str) -> int:
        key_hash = _stable_hash(key)
        seen = all(self._door[byte] & mask for byte, mask in self._door_bits(key_hash))
        return int(seen) + min(row[slot] for row, slot in zip(self._rows, self._slots(key_hash), strict=True))

    def _age(self) -> None:
        for row in self._rows:
            for index, value in enumerate(row):
                if value:
                    row[index] = value >> 1
        self._door = bytearray(self.width)
        self._additions //= 2


class _Item(NamedTuple):
    value: bytes
    expires_at: float
    size: int


class _Segment:
    """An LRU list with a byte budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.items: OrderedDict[str, _Item] = OrderedDict()
        self.bytes = 0

    def add(self, key: str, item: _Item) -> None:
        self.items[key] = item
        self.bytes += item.size

    def pop(self, key: str) -> _Item:
        item = self.items.pop(key)
        self.bytes -= item.size
        return item

    def oldest(self) -> str:
        return next(iter(self.items))


class TinyLfuCache:
    """Bytes under string keys with expiry; `get`, `put`, `delete_matching` never do I/O."""

    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        window = max(int(max_bytes * WINDOW_SHARE), 1)
        main = max_bytes - window
        self._window = _Segment(window)
        self._probation = _Segment(main - int(main * PROTECTED_SHARE))
        self._protected = _Segment(int(main * PROTECTED_SHARE))
        # About one counter per entry the cache can hold, taking 1 KiB as a typical entry.
        self._sketch = CountMinSketch(max(1024, max_bytes // 1024))
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.rejections = 0

    @property
    def used_bytes(self) -> int:
        return self._window.bytes + self._probation.bytes + self._protected.bytes

    def __len__(self) -> int:
        return len(self._window.items) + len(self._probation.items) + len(self._protected.items)

    def get(self, key: str, *, record_miss: bool = True) -> bytes | None:
        """The value, counted as an access; `record_miss=False` leaves a miss unrecorded (for a
        caller that asks again, recording it, when this finds nothing)."""
        segment = self._segment_of(key)
        item = None if segment is None else segment.items[key]
        if item is not None and item.expires_at <= self._clock():
            assert segment is not None
            segment.pop(key)
            item = None
        if item is None:
            if record_miss:
                self._sketch.increment(key)
                self.misses += 1
            return None
        self._sketch.increment(key)
        self.hits += 1
        assert segment is not None
        if segment is self._probation:
            self._probation.pop(key)
            self._protected.add(key, item)
            while self._protected.bytes > self._protected.budget and len(self._protected.items) > 1:
                demoted = self._protected.oldest()
                self._probation.add(demoted, self._protected.pop(demoted))
        else:
            segment.items.move_to_end(key)
        return item.value

    def record_miss(self, key: str) -> None:
        """A miss found by `get(key, record_miss=False)`, counted once the caller looks further."""
        self._sketch.increment(key)
        self.misses += 1

    def put(self, key: str, value: bytes, ttl: float) -> None:
        self.delete(key)
        size = len(key) + len(value) + ENTRY_OVERHEAD_BYTES
        if ttl <= 0 or size > self._probation.budget + self._protected.budget:
            return
        # A put follows the miss that was already counted by `get`: it is not counted again.
        self._window.add(key, _Item(value, self._clock() + ttl, size))
        while self._window.bytes > self._window.budget and self._window.items:
            candidate = self._window.oldest()
            self._admit(candidate, self._window.pop(candidate))

    def delete(self, key: str) -> bool:
        segment = self._segment_of(key)
        if segment is None:
            return False
        segment.pop(key)
        return True

    def delete_matching(self, pattern: str) -> int:
        regex = glob_to_regex(pattern)
        removed = 0
        for segment in (self._window, self._probation, self._protected):
            for key in [key for key in segment.items if regex.fullmatch(key)]:
                segment.pop(key)
                removed += 1
        return removed

    def clear(self) -> None:
        for segment in (self._window, self._probation, self._protected):
            segment.items.clear()
            segment.bytes = 0

    def _segment_of(self, key: str) -> _Segment | None:
        for segment in (self._window, self._probation, self._protected):
            if key in segment.items:
                return segment
        return None

    def _admit(self, key: str, item: _Item) -> None:
        """A window evictee enters the main space if it is asked for more often than the victims."""
        main_budget = self._probation.budget + self._protected.budget
        candidate_frequency = self._sketch.frequency(key)
        while self._probation.bytes + self._protected.bytes + item.size > main_budget:
            victims = self._probation if self._probation.items else self._protected
            if not victims.items:
                break
            victim = victims.oldest()
            if (
                candidate_frequency <= self._sketch.frequency(victim)
                and victims.items[victim].expires_at > self._clock()
            ):
                self.rejections += 1
                return
            victims.pop(victim)
            self.evictions += 1
        self._probation.add(key, item)
