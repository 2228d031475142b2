"""Coalescing across replicas: one upstream call for identical misses on every proxy sharing Redis.

Within one process, identical requests already share one flight (`flight.py`). Across processes,
the flight that would go upstream first takes a short-lived lock in Redis (`SET NX PX`). A flight
that finds the lock taken waits for the leader's entry instead: it is woken by a pub/sub message
when the leader finishes and also looks again every `POLL_INTERVAL` seconds, so a lost message
costs at most that. It gives up and goes upstream itself when the lock disappears without an
entry (the leader's answer was not storable, or the leader died) or after `PROXY_COALESCE_WAIT`
seconds; a flight that gave up stores its answer only if no entry exists by then (`SET NX`), so
it never overwrites the leader's.

Every Redis failure here fails open: the flight behaves as a leader and goes upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from proxy.constants import INTERNAL_NAMESPACE
from proxy.entry import Entry
from proxy.pubsub import Subscription
from proxy.store.autopipeline import AutoPipeline
from proxy.store.redis import REDIS_FAILURES
from proxy.store.redis_clients import RedisClient

POLL_INTERVAL = 0.1
T = TypeVar("T")
log = structlog.get_logger("proxy.coordination")

# Delete the lock only if it still holds our token, so a leader whose lock expired and was taken
# by another never releases the other's lock.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
return redis.call('publish', ARGV[2], ARGV[3])
"""


class _NoAnswer(ConnectionError):
    """Redis did not answer a coalescing command within the command timeout."""


class Lease:
    """A lock held by this process's leader flight; release it once the entry is stored or refused."""

    async def release(self, *, stored: bool) -> None:
        """Free the lock and tell the waiting replicas."""


class Coordinator:
    """Coordination for a store other replicas cannot see (the embedded store): every flight leads."""

    async def acquire(self, key: str) -> Lease | None:
        return Lease()

    async def wait_for(self, key: str, lookup: Callable[[], Awaitable[Entry | None]]) -> Entry | None:
        return await lookup()

    async def close(self) -> None:
        """Stop listening."""


class _RedisLease(Lease):
    def __init__(self, coordinator: RedisCoordinator, key: str, token: str) -> None:
        self.coordinator = coordinator
        self.key = key
        self.token = token

    async def release(self, *, stored: bool) -> None:
        message = f"{1 if stored else 0}|{self.key}"
        coordinator = self.coordinator
        script = (_RELEASE, 1, coordinator.lock_key(self.key), self.token, coordinator.channel, message)
        try:
            if coordinator.lane is not None:
                await coordinator.lane.execute(b"EVAL", *script)
            else:
                await coordinator.client.eval(*script)
        except REDIS_FAILURES as exc:
            log.warning("could not release a coalescing lock; it will expire", error=str(exc))


class RedisCoordinator(Coordinator):
    """`lane`, when the store has one, carries the lock and unlock commands (a miss's hot path);
    `client` the rest."""

    def __init__(
        self,
        client: RedisClient,
        *,
        key_prefix: str,
        lock_ttl: float,
        wait: float,
        command_timeout: float = 1.0,
        lane: AutoPipeline | None = None,
    ) -> None:
        self.client = client
        self.lane = lane
        self.command_timeout = command_timeout
        self.lock_ttl = lock_ttl
        self.wait = wait
        self.channel = f"{key_prefix}{INTERNAL_NAMESPACE}:filled"
        self._lock_prefix = f"{key_prefix}{INTERNAL_NAMESPACE}:lock:"
        self._waiters: dict[str, set[asyncio.Future[bool]]] = {}
        self._subscription = Subscription(client, self.channel, self._announce)

    async def _bounded(self, command: Awaitable[T]) -> T:
        """A command that may not keep a flight waiting longer than the Redis timeout, whatever the
        client does (a cluster client can hang while it rediscovers the slots). Shielded, so the
        command itself is never cancelled halfway: it ends on its own, its answer unused."""
        try:
            return await asyncio.wait_for(asyncio.shield(command), self.command_timeout)
        except TimeoutError:
            raise _NoAnswer("Redis did not answer a coalescing command in time") from None

    def lock_key(self, key: str) -> str:
        return self._lock_prefix + key

    async def acquire(self, key: str) -> Lease | None:
        """A lease when this process leads; None when another replica holds the lock."""
        token = os.urandom(16).hex()
        lock_ttl_ms = int(self.lock_ttl * 1000)
        if self.lane is not None:  # bounded by the lane's own deadline; it never retries a command
            try:
                taken = await self.lane.execute(b"SET", self.lock_key(key), token, b"NX", b"PX", lock_ttl_ms)
            except (ConnectionError, OSError):
                return Lease()  # fail open: lead without a lock
            return _RedisLease(self, key, token) if taken is not None else None
        for attempt in range(2):
            try:
                taken = await self._bounded(self.client.set(self.lock_key(key), token, nx=True, px=lock_ttl_ms))
                if not taken:
                    # A retried SET NX (a reply lost to a reconnect, a cluster redirect, the second
                    # attempt here) answers "not set" when an earlier one did set it: the token
                    # says whose lock it is.
                    holder = await self._bounded(self.client.get(self.lock_key(key)))
                    taken = holder is not None and (holder if isinstance(holder, str) else holder.decode()) == token
                break
            except REDIS_FAILURES as exc:
                # A fresh cluster client can fail its first commands under concurrency (its slot
                # map loading, a connection still opening: seen as AttributeError on `writelines`):
                # one more try. Twice, or no answer in time: Redis is in trouble, lead without a lock.
                if attempt or isinstance(exc, _NoAnswer):
                    return Lease()
        return _RedisLease(self, key, token) if taken else None

    async def wait_for(self, key: str, lookup: Callable[[], Awaitable[Entry | None]]) -> Entry | None:
        """The leader's entry once it is stored, or None when this flight should go upstream itself."""
        self._subscription.ensure_running()
        deadline = time.monotonic() + self.wait
        waiter: asyncio.Future[bool] | None = None
        failed = False
        try:
            while True:
                entry = await lookup()
                if entry is not None:
                    return entry
                if waiter is not None and waiter.done() and not waiter.result():
                    return None  # the leader announced an answer it could not store
                try:
                    if not await self._bounded(self.client.exists(self.lock_key(key))):
                        return await lookup()  # the leader finished (or died) just now
                    failed = False
                except REDIS_FAILURES:
                    # One failed check is given another poll (a cluster client can fail once while
                    # it refreshes its slot map); two in a row: Redis is in trouble, go upstream.
                    if failed:
                        return None
                    failed = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.info("gave up waiting for another replica's answer", waited_seconds=self.wait)
                    return None
                if waiter is None or waiter.done():
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.setdefault(key, set()).add(waiter)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), min(POLL_INTERVAL, remaining))
        finally:
            if waiter is not None:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[key]

    def _announce(self, text: str) -> None:
        stored, _, key = text.partition("|")
        for waiter in self._waiters.get(key, ()):
            if not waiter.done():
                waiter.set_result(stored == "1")

    async def close(self) -> None:
        await self._subscription.close()
