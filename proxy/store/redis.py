"""The Redis store: redis.asyncio (hiredis parser) over a bounded, blocking connection pool.

Short socket timeouts bound every command; failures become `StoreError` and the fail-open
wrapper (`failopen.py`) decides what the request does next. Redis-py's own retries are limited
to one immediate retry on a broken connection (a restarted server), never on timeouts, so a
dead Redis costs a request at most one timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from proxy.errors import StoreError
from proxy.store.autopipeline import AutoPipeline, Endpoint
from proxy.store.base import CounterWrite, KeyspaceUsage, Store, StoreInfo
from proxy.store.redis_clients import RedisClient, redis_client

SCAN_BATCH = 1000
READ_BATCH = 60  # HGETALLs per pipeline when reading many counter hashes (short parses between)
SCRATCH_TTL = 10  # seconds a union's scratch key may outlive a failed read
# Redis failures, and the odd exception redis-py itself raises mid-failover (an AttributeError on a
# connection being torn down): a cache must fail open on all of them.
REDIS_FAILURES = (RedisError, OSError, AttributeError, KeyError, IndexError, TypeError)
_ERRNO = re.compile(r"Err(?:or|no) (\d+)")
T = TypeVar("T")


class RedisStore(Store):
    backend = "redis"

    def __init__(self, client: RedisClient, *, lane: AutoPipeline | None = None) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        # Lookups and writes go through one auto-pipelined connection when the URL allows (a
        # single server: redis://, rediss://, unix://); the rest through redis-py's pool.
        self.lane = lane
        self.closed = False

    @classmethod
    def from_url(cls, url: str, *, timeout: float, max_connections: int) -> RedisStore:
        """Any `REDIS_URL` form: a server, a Cluster, a master behind Sentinel (`redis_clients.py`)."""
        scheme = urlsplit(url).scheme.lower()
        fast = AutoPipeline(Endpoint.from_url(url), timeout=timeout) if scheme in ("redis", "rediss", "unix") else None
        return cls(redis_client(url, timeout=timeout, max_connections=max_connections), lane=fast)

    def get_soon(self, key: str) -> asyncio.Future[bytes | None] | None:
        if self.lane is None or self.closed:
            return None
        return self.lane.get_soon(key)

    async def get(self, key: str) -> bytes | None:
        if self.lane is not None:
            return await self._call(self.lane.get(key))
        value = await self._call(self.client.get(key))
        return value if value is None or isinstance(value, bytes) else value.encode()

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        if self.lane is not None:  # issued in one tick: one write, one round trip
            return list(await asyncio.gather(*(self.get(key) for key in keys)))
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        values: list[bytes | None] = await self._call(pipe.execute())
        return values

    async def put(self, key: str, value: bytes, ttl: float, *, if_absent: bool = False) -> None:
        px = max(1, int(ttl * 1000))
        if self.lane is not None:
            await self._call(self.lane.execute(b"SET", key, value, b"PX", px, *((b"NX",) if if_absent else ())))
            return
        await self._call(self.client.set(key, value, px=px, nx=if_absent))

    async def delete(self, key: str) -> bool:
        removed: int = await self._call(self.client.unlink(key))
        return removed > 0

    async def _key_batches(self, pattern: str) -> AsyncIterator[list[bytes]]:
        """The keys matching a pattern, a SCAN batch at a time (on every primary of a cluster)."""
        batch: list[bytes] = []
        try:
            async for key in self.client.scan_iter(match=pattern, count=SCAN_BATCH):
                batch.append(key)
                if len(batch) >= SCAN_BATCH:
                    yield batch
                    batch = []
        except REDIS_FAILURES as exc:
            raise StoreError(_describe(exc)) from exc
        if batch:
            yield batch

    async def delete_matching(self, pattern: str) -> int:
        """SCAN in batches and UNLINK each batch: Redis never blocks on a big keyspace."""
        removed = 0
        async for keys in self._key_batches(pattern):
            removed += await self._call(self.client.unlink(*keys))
        return removed

    async def usage(self, pattern: str, *, budget: float) -> KeyspaceUsage:
        """SCAN the pattern; STRLEN each batch in one pipeline; stop after `budget` seconds."""
        deadline = time.monotonic() + budget
        entries = size = 0
        async for keys in self._key_batches(pattern):
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.strlen(key)
            lengths = await self._call(pipe.execute())
            entries += sum(1 for length in lengths if length)
            size += sum(lengths) + sum(len(key) for key, length in zip(keys, lengths, strict=True) if length)
            if time.monotonic() > deadline:
                return KeyspaceUsage(entries, size, complete=False)
        return KeyspaceUsage(entries, size)

    async def add_counters(self, key: str, deltas: dict[str, int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name, delta in deltas.items():
            pipe.hincrby(key, name, delta)
        await self._call(pipe.execute())

    async def read_counters(self, key: str) -> dict[str, int]:
        raw = await self._call(self.client.hgetall(key))
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
            await self._call(pipe.execute())

    async def read_counters_many(self, keys: Sequence[str]) -> list[dict[str, int]]:
        """Pipelined HGETALLs, a few hundred a round trip."""
        result: list[dict[str, int]] = []
        for start in range(0, len(keys), READ_BATCH):
            pipe = self.client.pipeline(transaction=False)
            for key in keys[start : start + READ_BATCH]:
                pipe.hgetall(key)
            result.extend(map(_counters, await self._call(pipe.execute())))
        return result

    async def top_scores(self, keys: Sequence[str], count: int, *, scratch_key: str) -> list[tuple[str, int]]:
        """ZUNIONSTORE into a scratch key, ZREVRANGE its top, UNLINK it: one MULTI, nothing left behind."""
        if not keys or count <= 0:
            return []
        if self.cluster:  # the sets live in different slots: add them up here instead
            return await self._top_scores_merged(keys, count)
        pipe = self.client.pipeline(transaction=True)
        pipe.zunionstore(scratch_key, list(keys))
        pipe.expire(scratch_key, SCRATCH_TTL)
        pipe.zrevrange(scratch_key, 0, count - 1, withscores=True)
        pipe.unlink(scratch_key)
        replies = await self._call(pipe.execute())
        return [(_text(member), int(score)) for member, score in replies[2]]

    async def _top_scores_merged(self, keys: Sequence[str], count: int) -> list[tuple[str, int]]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.zrange(key, 0, -1, withscores=True)
        totals: dict[str, int] = {}
        for members in await self._call(pipe.execute()):
            for member, score in members:
                name = _text(member)
                totals[name] = totals.get(name, 0) + int(score)
        return sorted(totals.items(), key=lambda item: item[1], reverse=True)[:count]

    async def ping(self) -> StoreInfo:
        started = time.perf_counter()
        if self.cluster:
            await self._call(self.client.ping(target_nodes=RedisCluster.PRIMARIES))
        else:
            await self._call(self.client.ping())
        round_trip_ms = (time.perf_counter() - started) * 1000
        try:
            info: dict[str, Any] = await self._call(self._info())
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
                **({"cluster_primaries": info["cluster_primaries"]} if "cluster_primaries" in info else {}),
            },
        )

    async def _info(self) -> dict[str, Any]:
        """INFO of the server, or of every primary of a cluster with the sizes added up."""
        if not self.cluster:
            info: dict[str, Any] = await self.client.info()
            return info
        per_node: dict[str, dict[str, Any]] = await self.client.info(target_nodes=RedisCluster.PRIMARIES)
        nodes = list(per_node.values())
        total = {
            field: sum(int(node.get(field) or 0) for node in nodes)
            for field in ("used_memory", "maxmemory", "evicted_keys")
        }
        return {
            **nodes[0],
            **total,
            "used_memory_human": f"{total['used_memory'] / 2**20:.2f}M",
            "cluster_primaries": len(nodes),
        }

    async def _call(self, awaitable: Awaitable[T]) -> T:
        if self.closed:
            # redis-py would quietly open new connections that nobody closes: refuse instead.
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise StoreError("the Redis store is closed")
        return await _call(awaitable)

    async def close(self) -> None:
        self.closed = True
        if self.lane is not None:
            self.lane.close()
        if isinstance(self.client, RedisCluster):
            await self.client.aclose()
        else:
            await self.client.aclose(close_connection_pool=True)
            # Behind Sentinel: the connections that asked the sentinels where the master is.
            manager = getattr(self.client.connection_pool, "sentinel_manager", None)
            for sentinel in getattr(manager, "sentinels", ()):
                await sentinel.aclose()


async def _call(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except REDIS_FAILURES as exc:
        raise StoreError(_describe(exc)) from exc


def _describe(exc: BaseException) -> str:
    """A short reason: `Connection refused`, `Timeout reading from socket`, ..."""
    text = str(exc).strip() or type(exc).__name__
    errno = _ERRNO.search(text)
    if errno:
        return os.strerror(int(errno.group(1)))
    return text.splitlines()[0]


def _counters(raw: dict[Any, Any]) -> dict[str, int]:
    """An HGETALL reply of counters, names decoded (the fast path for the usual bytes replies)."""
    if raw and isinstance(next(iter(raw)), bytes):
        return dict(zip(map(bytes.decode, raw), map(int, raw.values()), strict=True))
    return {_text(name): int(value) for name, value in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
