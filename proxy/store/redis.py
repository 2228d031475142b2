"""The Redis store: redis.asyncio (hiredis parser) over a bounded, blocking connection pool.

Short socket timeouts bound every command; failures become `StoreError` and the fail-open
wrapper (`failopen.py`) decides what the request does next. Redis-py's own retries are limited
to one immediate retry on a broken connection (a restarted server), never on timeouts, so a
dead Redis costs a request at most one timeout.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from proxy.errors import StoreError
from proxy.store.base import CounterWrite, KeyspaceUsage, Store, StoreInfo

SCAN_BATCH = 1000
READ_BATCH = 240  # HGETALLs per pipeline when reading many counter hashes
SCRATCH_TTL = 10  # seconds a union's scratch key may outlive a failed read
_ERRNO = re.compile(r"Err(?:or|no) (\d+)")
T = TypeVar("T")


class RedisStore(Store):
    backend = "redis"

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @classmethod
    def from_url(cls, url: str, *, timeout: float, max_connections: int) -> RedisStore:
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            client_name="artstory-proxy",
        )
        return cls(redis.Redis(connection_pool=pool))

    async def get(self, key: str) -> bytes | None:
        value = await _call(self.client.get(key))
        return value if value is None or isinstance(value, bytes) else value.encode()

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        values: list[bytes | None] = await _call(pipe.execute())
        return values

    async def put(self, key: str, value: bytes, ttl: float, *, if_absent: bool = False) -> None:
        await _call(self.client.set(key, value, px=max(1, int(ttl * 1000)), nx=if_absent))

    async def delete(self, key: str) -> bool:
        removed: int = await _call(self.client.unlink(key))
        return removed > 0

    async def delete_matching(self, pattern: str) -> int:
        """SCAN in batches and UNLINK each batch: Redis never blocks on a big keyspace."""
        removed = 0
        cursor: int = 0
        while True:
            cursor, keys = await _call(self.client.scan(cursor=cursor, match=pattern, count=SCAN_BATCH))
            if keys:
                removed += await _call(self.client.unlink(*keys))
            if cursor == 0:
                return removed

    async def usage(self, pattern: str, *, budget: float) -> KeyspaceUsage:
        """SCAN the pattern; STRLEN each batch in one pipeline; stop after `budget` seconds."""
        deadline = time.monotonic() + budget
        entries = size = 0
        cursor: int = 0
        while True:
            cursor, keys = await _call(self.client.scan(cursor=cursor, match=pattern, count=SCAN_BATCH))
            if keys:
                pipe = self.client.pipeline(transaction=False)
                for key in keys:
                    pipe.strlen(key)
                lengths = await _call(pipe.execute())
                entries += sum(1 for length in lengths if length)
                size += sum(lengths) + sum(len(key) for key, length in zip(keys, lengths, strict=True) if length)
            if cursor == 0:
                return KeyspaceUsage(entries, size)
            if time.monotonic() > deadline:
                return KeyspaceUsage(entries, size, complete=False)

    async def add_counters(self, key: str, deltas: dict[str, int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name, delta in deltas.items():
            pipe.hincrby(key, name, delta)
        await _call(pipe.execute())

    async def read_counters(self, key: str) -> dict[str, int]:
        raw = await _call(self.client.hgetall(key))
        return {_text(name): int(value) for name, value in raw.items()}

    async def write_counters(self, writes: Sequence[CounterWrite]) -> None:
        """HINCRBY / ZINCRBY each delta, then trim and EXPIRE, all in one pipeline."""
        pipe = self.client.pipeline(transaction=False)
        for write in writes:
            if not write.deltas:
                continue
            if write.sorted_set:
                for member, delta in write.deltas.items():
                    pipe.zincrby(write.key, delta, member)
                if write.keep is not None:
                    pipe.zremrangebyrank(write.key, 0, -(write.keep + 1))
            else:
                for name, delta in write.deltas.items():
                    pipe.hincrby(write.key, name, delta)
            if write.ttl is not None:
                pipe.expire(write.key, max(1, math.ceil(write.ttl)))
        if len(pipe):
            await _call(pipe.execute())

    async def read_counters_many(self, keys: Sequence[str]) -> list[dict[str, int]]:
        """Pipelined HGETALLs, a few hundred a round trip."""
        result: list[dict[str, int]] = []
        for start in range(0, len(keys), READ_BATCH):
            pipe = self.client.pipeline(transaction=False)
            for key in keys[start : start + READ_BATCH]:
                pipe.hgetall(key)
            for raw in await _call(pipe.execute()):
                result.append({_text(name): int(value) for name, value in raw.items()})
        return result

    async def top_scores(self, keys: Sequence[str], count: int, *, scratch_key: str) -> list[tuple[str, int]]:
        """ZUNIONSTORE into a scratch key, ZREVRANGE its top, UNLINK it: one MULTI, nothing left behind."""
        if not keys or count <= 0:
            return []
        pipe = self.client.pipeline(transaction=True)
        pipe.zunionstore(scratch_key, list(keys))
        pipe.expire(scratch_key, SCRATCH_TTL)
        pipe.zrevrange(scratch_key, 0, count - 1, withscores=True)
        pipe.unlink(scratch_key)
        replies = await _call(pipe.execute())
        return [(_text(member), int(score)) for member, score in replies[2]]

    async def ping(self) -> StoreInfo:
        started = time.perf_counter()
        await _call(self.client.ping())
        round_trip_ms = (time.perf_counter() - started) * 1000
        try:
            info: dict[str, Any] = await _call(self.client.info())
        except StoreError as exc:
            if not isinstance(exc.__cause__, ResponseError):
                raise
            info = {}  # INFO renamed or disabled (some managed services): PING alone says healthy
        return StoreInfo(
            backend=self.backend,
            round_trip_ms=round(round_trip_ms, 3),
            details={
                "redis_version": info.get("redis_version"),
                "used_memory": info.get("used_memory"),
                "used_memory_human": info.get("used_memory_human"),
                "maxmemory": info.get("maxmemory"),
                "maxmemory_policy": info.get("maxmemory_policy"),
                "evicted_keys": info.get("evicted_keys"),
            },
        )

    async def close(self) -> None:
        await self.client.aclose(close_connection_pool=True)


async def _call(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except (RedisError, OSError) as exc:
        raise StoreError(_describe(exc)) from exc


def _describe(exc: BaseException) -> str:
    """A short reason: `Connection refused`, `Timeout reading from socket`, ..."""
    text = str(exc).strip() or type(exc).__name__
    errno = _ERRNO.search(text)
    if errno:
        return os.strerror(int(errno.group(1)))
    return text.splitlines()[0]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
