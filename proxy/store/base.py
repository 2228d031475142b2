"""The store interface: what the proxy needs from Redis or the in-process memory store."""

from __future__ import annotations

import abc
import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StoreInfo:
    """What `ping()` reports: the round trip and what the server says about itself."""

    backend: str
    round_trip_ms: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyspaceUsage:
    """Entries and bytes (keys plus values) under one pattern; `complete` is False when the
    walk stopped at its time budget, so the figures are a lower bound."""

    entries: int
    bytes: int
    complete: bool = True


@dataclass(frozen=True)
class CounterWrite:
    """One key's part of a `write_counters` batch: add `deltas` to the fields of a hash (or, with
    `sorted_set`, to the scores of a sorted set's members); with `ttl`, (re)set the key's expiry
    to that many seconds; with `keep`, trim a sorted set to its `keep` highest members."""

    key: str
    deltas: Mapping[str, int]
    ttl: float | None = None
    sorted_set: bool = False
    keep: int | None = None


class Store(abc.ABC):
    """Bytes under string keys with a TTL. Implementations raise `StoreError` on failure."""

    backend: str = "abstract"

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The stored value, or None when absent or expired."""

    def get_local(self, key: str) -> bytes | None:
        """The value when this process holds it (a first tier, the embedded store), found without
        waiting for anything; None means ask `get`. A miss here is not counted as one."""
        return None

    def get_soon(self, key: str) -> asyncio.Future[bytes | None] | None:
        """The lookup as a future when the store can start it without a coroutine (an
        auto-pipelined Redis GET), for the fast lane; None means use `get`. The future fails
        with whatever the connection raised: a caller treats any failure as a miss and asks
        `get` again, which reports it."""
        return None

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Several values at once, in order (one round trip where the store allows)."""
        return [await self.get(key) for key in keys]

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, ttl: float, *, if_absent: bool = False) -> None:
        """Store `value` for `ttl` seconds, value and expiry in one step (only if the key is
        absent, with `if_absent`)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove one key; True when it existed."""

    @abc.abstractmethod
    async def delete_matching(self, pattern: str) -> int:
        """Remove every key matching a Redis glob pattern, in batches; return how many."""

    @abc.abstractmethod
    async def ping(self) -> StoreInfo:
        """Check the store answers; raise `StoreError` when it does not."""

    @abc.abstractmethod
    async def usage(self, pattern: str, *, budget: float) -> KeyspaceUsage:
        """Count entries and bytes matching a glob, walking for at most `budget` seconds."""

    @abc.abstractmethod
    async def add_counters(self, key: str, deltas: dict[str, int]) -> None:
        """Add each delta to a field of the counter hash `key` (created as needed, never expiring)."""

    @abc.abstractmethod
    async def read_counters(self, key: str) -> dict[str, int]:
        """Every field of the counter hash `key`."""

    @abc.abstractmethod
    async def write_counters(self, writes: Sequence[CounterWrite]) -> None:
        """Apply several counter writes together (one round trip where the store allows)."""

    async def read_counters_many(self, keys: Sequence[str]) -> list[dict[str, int]]:
        """Every field of several counter hashes, in order (absent keys read as empty)."""
        return [await self.read_counters(key) for key in keys]

    @abc.abstractmethod
    async def top_scores(self, keys: Sequence[str], count: int, *, scratch_key: str) -> list[tuple[str, int]]:
        """The `count` highest members of the union (scores added) of the sorted sets `keys`,
        highest first; `scratch_key` is a key the store may use briefly for the union."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release connections."""


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """A Redis glob (`*`, `?`, `[...]`, backslash escapes) as an anchored regex."""
    pieces: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            pieces.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        if char == "[":
            end = pattern.find("]", index + 1)
            if end > index + 1:
                pieces.append(_bracket(pattern[index + 1 : end]))
                index = end + 1
                continue
        pieces.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
        index += 1
    return re.compile("".join(pieces), re.DOTALL)


def _bracket(body: str) -> str:
    negate = body.startswith("^") and len(body) > 1
    if negate:
        body = body[1:]
    chars = [
        "-" if char == "-" and 0 < position < len(body) - 1 else re.escape(char) for position, char in enumerate(body)
    ]
    return "[" + ("^" if negate else "") + "".join(chars) + "]"
