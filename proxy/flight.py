"""A flight: one upstream fetch, running in its own task, shared by every request that joins it.

The flight reads the upstream response into a buffer of chunks and wakes its readers as chunks
arrive, so each reader (the request that started it, and any identical request that arrived
while it ran) streams the response from its first byte at the upstream's pace. When the body is
complete and storable, the flight writes the entry to the store itself: a client that hangs up
never interrupts the fetch or the write (the upstream's money is already spent), and no Redis
command is ever cancelled halfway.

A response that may not be stored is not kept whole: chunks every reader has passed are dropped,
the flight stops reading ahead of its slowest reader by more than `READ_AHEAD_BYTES`, and it
stops altogether once no reader is left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import structlog
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.coordination import Coordinator, Lease
from proxy.entry import Entry, encode_entry, kept_headers
from proxy.errors import UpstreamError
from proxy.image_urls import answer_ttl
from proxy.policy import (
    STORED_RESPONSE_HEADERS,
    body_refusal,
    complete_body_refusal,
    freshness,
    head_refusal,
)
from proxy.routes import Route
from proxy.store.base import Store
from proxy.upstream import UpstreamClient, UpstreamRequest, describe
from proxy.usage import Usage, usage_of

READ_AHEAD_BYTES = 1024 * 1024
log = structlog.get_logger("proxy.flight")


@dataclass(frozen=True, slots=True)
class Head:
    """Status line and headers of the upstream response."""

    status: int
    headers: CIMultiDictProxy[str]


class Flight:
    def __init__(
        self,
        *,
        route: Route,
        request: UpstreamRequest,
        client: UpstreamClient,
        store: Store,
        key: str | None,
        ttl: int,
        clock: Callable[[], float] = time.time,
        on_finish: Callable[[Flight], None] | None = None,
        coordinator: Coordinator | None = None,
        lookup: Callable[[], Awaitable[Entry | None]] | None = None,
    ) -> None:
        self.route = route
        self.request = request
        self.key = key
        self.ttl = ttl
        self.head: Head | None = None
        self.error: UpstreamError | None = None
        # Why the response will not be stored; None while it still may be.
        self.refusal: str | None = None if key is not None else "not cacheable"
        self.stored = False
        self.upstream_ms: float | None = None
        self.usage: Usage | None = None
        # True when another replica fetched the answer and this flight replays its entry.
        self.from_peer = False
        self._coordinator = coordinator
        self._lookup = lookup
        self._store_if_absent = False
        self._client = client
        self._store = store
        self._clock = clock
        self._on_finish = on_finish
        self._chunks: list[bytes] = []
        self._base = 0  # global index of self._chunks[0]
        self._buffered = 0
        self._total = 0
        self._readers: set[FlightReader] = set()
        self._complete = False
        self._finished = False
        self._head_ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"flight {self.route.name}")

    def join(self) -> FlightReader:
        """A reader positioned at the first byte; close it when done."""
        reader = FlightReader(self)
        self._readers.add(reader)
        return reader

    async def _run(self) -> None:
        body: bytes | None = None
        lease: Lease | None = None
        try:
            lease = await self._lead_or_follow()
            if not self.from_peer:
                body = await self._fetch()
            if body is not None and self.refusal is None:
                # The readers write the last chunk first (they were woken by it): encoding and
                # storing the entry take longer than writing, and no answer should wait for them.
                await asyncio.sleep(0)
                # Stored before the readers see the end: a client that asks again at once hits.
                await self._store_entry(body)
        except Exception as exc:  # a bug must not leave readers waiting forever
            log.exception("flight failed", route=self.route.name)
            self.error = UpstreamError(f"upstream {self.request.upstream.name} failed: {describe(exc)}")
        finally:
            self._finished = True
            self._head_ready.set()
            self._notify()
            if self._on_finish is not None:
                self._on_finish(self)
        if lease is not None:
            await lease.release(stored=self.stored)

    async def _lead_or_follow(self) -> Lease | None:
        """Across replicas: take the lock and lead, or wait for the leading replica's entry."""
        if self.key is None or self._coordinator is None or self._lookup is None:
            return None
        lease = await self._coordinator.acquire(self.key)
        if lease is not None:
            return lease
        entry = await self._coordinator.wait_for(self.key, self._lookup)
        if entry is None:
            self._store_if_absent = True  # never overwrite the leader's entry if it comes after all
            return None
        self.from_peer = True
        self.usage = entry.usage
        self.head = Head(entry.status, CIMultiDictProxy(CIMultiDict(entry.headers)))
        self._head_ready.set()
        self._append(entry.body)
        self._complete = True
        return None

    async def _fetch(self) -> bytes | None:
        started = time.perf_counter()
        try:
            response = await self._client.send(self.request)
        except UpstreamError as exc:
            self.error = exc
            self.refusal = self.refusal or "upstream error"
            return None
        async with response:
            self.upstream_ms = (time.perf_counter() - started) * 1000
            head = self.head = Head(response.status, response.headers)
            if self.refusal is None:
                self.refusal = head_refusal(self.route, response.status, response.headers)
            self._head_ready.set()
            try:
                async for chunk in response.content.iter_any():
                    self._append(chunk)
                    if self.refusal is None:
                        self.refusal = body_refusal(self.route, self._total)
                    if self.refusal is not None:
                        if not self._readers:
                            response.close()
                            self.error = UpstreamError("nobody is reading the response any more")
                            return None
                        await self._wait_for_readers()
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.error = UpstreamError(f"upstream {self.request.upstream.name} broke off: {describe(exc)}")
                self.refusal = "incomplete body"
                return None
        self._complete = True
        if self.refusal is not None:
            return None
        body = b"".join(self._chunks)
        # Before readers are told the body is complete, so a coalesced follower can count it.
        self.usage = usage_of(head.headers.get("Content-Type"), body)
        return body

    async def _store_entry(self, body: bytes) -> None:
        assert self.head is not None
        assert self.key is not None
        self.refusal = complete_body_refusal(self.route, self.head.headers, body)
        if self.refusal is not None:
            return
        now = self._clock()
        timing = freshness(self.route, self.head.headers, self.ttl)
        if timing.fresh_left <= 0:
            self.refusal = "already stale on arrival"
            return
        lifetime, stale_for = timing.lifetime, timing.stale_for
        link_lifetime = answer_ttl(self.route, self.head.headers, body, lifetime, now) + timing.age
        if link_lifetime < lifetime:  # signed links expire first: never fresh or stale past them
            lifetime, stale_for = link_lifetime, 0
            if lifetime - timing.age <= 0:
                self.refusal = "links in the answer expire too soon"
                return
        entry = Entry(
            status=self.head.status,
            headers=kept_headers(self.head.headers.items(), STORED_RESPONSE_HEADERS),
            body=body,
            stored_at=now - timing.age,
            fresh_for=lifetime,
            stale_for=stale_for,
            usage=self.usage,
        )
        await self._store.put(self.key, encode_entry(entry), entry.store_ttl(now), if_absent=self._store_if_absent)
        self.stored = True

    async def wait_head(self) -> Head:
        await self._head_ready.wait()
        if self.head is None:
            assert self.error is not None
            raise self.error
        return self.head

    def _append(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._total += len(chunk)
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _wait_for_readers(self) -> None:
        self._trim()
        while self._buffered > READ_AHEAD_BYTES and self._readers:
            self._drained.clear()
            await self._drained.wait()

    def _trim(self) -> None:
        """Drop chunks every reader has passed (only once the response is known not to be stored)."""
        if self.refusal is None:
            return
        low = min((reader.position for reader in self._readers), default=self._base + len(self._chunks))
        drop = low - self._base
        if drop > 0:
            self._buffered -= sum(len(chunk) for chunk in self._chunks[:drop])
            del self._chunks[:drop]
            self._base = low

    def _reader_moved(self) -> None:
        self._trim()
        self._drained.set()


class FlightReader:
    """One consumer's position in a flight's chunks."""

    def __init__(self, flight: Flight) -> None:
        self.flight = flight
        self.position = 0

    def __aiter__(self) -> FlightReader:
        return self

    async def __anext__(self) -> bytes:
        flight = self.flight
        while True:
            index = self.position - flight._base
            if index < 0:  # joined after chunks were dropped: cannot replay from the start
                raise UpstreamError("the shared response is no longer replayable")
            if index < len(flight._chunks):
                chunk = flight._chunks[index]
                self.position += 1
                if flight.refusal is not None:
                    flight._reader_moved()
                return chunk
            if flight._finished:
                if not flight._complete:
                    # Cancelled (at shutdown) leaves no error: still no proper end for the client.
                    raise flight.error or UpstreamError("the upstream fetch was cancelled")
                raise StopAsyncIteration
            await flight._changed.wait()

    def close(self) -> None:
        self.flight._readers.discard(self)
        self.flight._reader_moved()
