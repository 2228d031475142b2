"""The fast lane: plain requests served beneath aiohttp, everything else handed to it.

aiohttp's request machinery (parser, request and response objects, the handler task) costs
about 60 us per request on the machines we measure on, more than the whole cache hit (a
pipelined Redis GET). So each accepted connection is owned by a `FastLane` protocol. It frames
requests itself with a strict reader (proxy/http1.py) and answers a request with a fresh entry
when there is nothing else to do for it (`CacheProxy.plain_request`, then the entry from this
process's memory, `fresh_now`, or from the store's lookup): the same bytes, headers, log line and
counters as aiohttp's path. A plain request with no entry joins or starts its flight and the lane
passes the answer on itself (`_pass_on`, proxy/lane_misses.py). Every other request - a stale
entry, an error, an operations endpoint, a preflight or a disallowed origin, cache directives,
a credential that does not authenticate, rate limits - is *lent* to an aiohttp
`RequestHandler` attached to the same connection: it gets the request's
exact bytes, answers as it always does, and when its response is written (its access logger,
`LaneReturn`, is told so) the connection comes back to the lane for the next request. Requests
the strict reader does not frame (chunked bodies, `Expect`, `Upgrade`, HTTP/1.0, malformed
heads) give the connection to aiohttp for good.

Responses stay in request order: the lane takes the next request only once the previous one is
answered, by itself or by aiohttp. The lane closes connections idle for `KEEPALIVE_TIMEOUT`
seconds (aiohttp's own default), and on shutdown closes idle connections and lets answers in
progress finish, as aiohttp does (`FastLaneSite.stop`). `PROXY_FAST_LANE=off` serves everything
through aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import logging
import socket
import time
from collections import deque
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.tcp_helpers import tcp_keepalive
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict
from yarl import URL

from proxy.cache_key import key_digest
from proxy.constants import HIT, X_CACHE_DEBUG, X_CACHE_TTL
from proxy.cors import CorsPolicy
from proxy.entry import Entry
from proxy.errors import ClientRequestError, UpstreamError
from proxy.http1 import INCOMPLETE, MAX_HEAD_BYTES, UNFRAMED, RequestHead, read_head, response_head
from proxy.lane_misses import MissFraming, PassedOn, error_response, has_body
from proxy.middleware import RequestLog, close_request, request_id_for
from proxy.proxy import CacheProxy, PlainMiss, PlainRequest
from proxy.responses import forward_plan, hit_headers
from proxy.state import PROXY, SETTINGS, STATS
from proxy.stats import Stats

log = structlog.get_logger("proxy.fastlane")
KEEPALIVE_TIMEOUT: Final = 75.0  # seconds an idle keep-alive connection is kept (aiohttp's default)
SWEEP_EVERY: Final = 5.0
# Lookups in flight at once; more plain requests wait their turn in a queue. Each holds its request
# and a future (or, for stores without `get_soon`, a task and its coroutine frames, a few KiB), so
# the cap bounds memory at 1000 connections; 128 GETs per pipelined Redis write keep Redis busy.
MAX_ANSWERS_IN_FLIGHT: Final = 128
# At shutdown, the lane waits this long for its lookups in progress (they take ms), and for misses
# it is passing on up to PROXY_SHUTDOWN_GRACE when that is longer.
STOP_WAIT: Final = 5.0
CLIENT_CLOSED_REQUEST: Final = 499  # the access line's status for a miss whose client hung up (nginx's)
WRITE_BATCH_BYTES: Final = 64 * 1024  # answers held for one write turn (`FastLaneSite.write_soon`)
# Headers that ask for more than a plain hit: the request goes aiohttp's way.
NOT_PLAIN_HEADERS: Final = frozenset(
    {"cache-control", "pragma", X_CACHE_TTL.lower(), X_CACHE_DEBUG.lower(), "access-control-request-method"}
)


class LaneReturn(AbstractAccessLogger):
    """Passed to aiohttp as its access logger class: it is told when a response is written,
    which is when a lent connection may go back to its lane. It logs nothing (the proxy's own
    edge writes the request's line)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        transport = request.transport
        lane = transport.get_protocol() if transport is not None else None
        if isinstance(lane, FastLane):
            lane.answered_by_aiohttp(request.protocol, response)

    @property
    def enabled(self) -> bool:
        return True


def runner_options() -> dict[str, Any]:
    """`web.AppRunner` keyword arguments for an app served through `FastLaneSite`."""
    return {
        "access_log_class": LaneReturn,
        "access_log": logging.getLogger("proxy.fastlane"),
        "keepalive_timeout": KEEPALIVE_TIMEOUT,
    }


class HitWriter:
    """Answers plain hits for the lanes of one app: the proxy's lookup, then the response bytes."""

    def __init__(self, proxy: CacheProxy, stats: Stats, cors: CorsPolicy, *, access_log: bool) -> None:
        self.proxy = proxy
        self.stats = stats
        self.cors = cors
        self.access_log = access_log
        self.max_request_bytes = proxy.settings.max_request_bytes
        self._date_second = -1
        self._date = ""

    @staticmethod
    def is_plain(head: RequestHead) -> bool:
        headers = head.headers
        return (
            not head.repeated
            and NOT_PLAIN_HEADERS.isdisjoint(headers)
            and headers.get("connection", "keep-alive").lower() == "keep-alive"
        )

    def prepare(self, head: RequestHead, body: bytes) -> PlainRequest | None:
        """The request's key when the lane may answer it; None when aiohttp's path must."""
        if not self.is_plain(head) or not self._origin(head.headers)[0]:
            return None
        try:
            return self.proxy.plain_request(head.method, head.raw_path, head.query_string, head.headers, body)
        except ClientRequestError:
            return None  # aiohttp's path gives the error its JSON body

    def answer_now(self, head: RequestHead, plain: PlainRequest, started: float) -> bytes | None:
        """The response from an entry this process holds, or None: `answer` looks further."""
        entry = self.proxy.fresh_now(plain)
        return None if entry is None else self._respond(head, plain, entry, started)

    def answer_from(
        self, head: RequestHead, plain: PlainRequest, found: bytes | None, started: float
    ) -> bytes | PlainMiss | None:
        """What the store's lookup means for a plain request: the response from a fresh entry,
        the flight to pass on when there is no entry, or None when aiohttp's path must answer
        (a stale or undecodable entry, an identical request passing its rate-limit check)."""
        if found is None:
            miss = self.proxy.plain_miss(plain)
            if miss is not None:
                return miss
        entry = self.proxy.fresh_from(plain, found)
        return None if entry is None else self._respond(head, plain, entry, started)

    def _respond(self, head: RequestHead, plain: PlainRequest, entry: Entry, started: float) -> bytes:
        """The whole response, counted and logged as aiohttp's path does it."""
        self.stats.fast_lane_hits += 1
        route = plain.match.route
        request_id = request_id_for(head.headers.get("x-request-id"))
        headers = hit_headers(entry, namespace=route.name, now=self.proxy.clock(), request_id=request_id)
        origin = self.cross_origin(head)
        if origin is not None:  # as the edge's `on_response_prepare` hook adds them
            with_cors = CIMultiDict(headers)
            self.cors.add_response_headers(with_cors, origin)
            headers = list(with_cors.items())
        response = self._render(entry, headers)
        record = RequestLog(
            request_id,
            route=route.name,
            cache=HIT,
            key_digest=key_digest(plain.key),
            key=plain.key,
            usage=entry.usage,
        )
        self.close(head, record, entry.status, started)
        return response

    def close(self, head: RequestHead, record: RequestLog, status: int, started: float) -> None:
        """Count the request and write its access line, as the edge does on aiohttp's path."""
        path = head.raw_path if "%" not in head.raw_path else URL.build(path=head.raw_path, encoded=True).path
        close_request(
            self.stats,
            record,
            access_log=self.access_log,
            method=head.method,
            path=path,
            status=status,
            elapsed=time.perf_counter() - started,
        )

    def cross_origin(self, head: RequestHead) -> str | None:
        """The allowed cross origin a request names (None: not a cross-origin request)."""
        return self._origin(head.headers)[1]

    def _origin(self, headers: dict[str, str]) -> tuple[bool, str | None]:
        """Whether the lane may answer a request with these headers as far as CORS goes, and
        the allowed cross origin its answer names (None: not a cross-origin request). A
        disallowed origin, or an `Origin` without a `Host` to compare it with, is aiohttp's to
        answer (the edge refuses it with a 403)."""
        origin = headers.get("origin")
        if origin is None:
            return True, None
        host = headers.get("host")
        if host is None:
            return False, None
        if origin == f"http://{host}":
            return True, None  # same origin: not a CORS request
        return (True, origin) if self.cors.allows(origin) else (False, None)

    def _render(self, entry: Entry, headers: list[tuple[str, str]]) -> bytes:
        """The response as aiohttp writes a `web.Response`: status line, headers, the length,
        a default type, `Date` and `Server`, then the body."""
        lines = [f"{name}: {value}" for name, value in headers]
        lines.append(f"Content-Length: {len(entry.body)}")
        if entry.content_type is None:
            lines.append("Content-Type: application/octet-stream")
        return response_head(entry.status, lines, self.http_date()) + entry.body

    def http_date(self) -> str:
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            self._date = email.utils.formatdate(second, usegmt=True)
        return self._date


_READ_BUFFER = bytearray(64 * 1024)  # every lane reads into this one, then keeps what it read
_READ_VIEW = memoryview(_READ_BUFFER)


class FastLane(asyncio.BufferedProtocol):
    """One client connection: plain hits answered here, other requests lent to aiohttp.

    A buffered protocol: the socket is read into one buffer shared by every lane (reads never
    interleave: each is copied out before the next), not into a fresh 256 KiB `recv` result."""

    def __init__(self, site: FastLaneSite) -> None:
        self.site = site
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False  # a request is being answered, here or by a lent handler
        self.handler: RequestHandler | None = None  # aiohttp's, while lent or for good
        self.given_up = False  # aiohttp reads this connection from now on
        self.stopping = False
        self.writing_paused = False
        self.reading_paused = False  # by the lane itself, for a backlog of pipelined requests
        self.answering: asyncio.Future[Any] | None = None  # the lookup, its task, or a miss passed on
        self.drained: asyncio.Future[None] | None = None  # while a miss waits for the client to read
        self.passing_on: asyncio.Task[None] | None = None  # the miss being passed on
        self.last_active = time.monotonic()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        tcp_keepalive(transport)
        self.site.lanes.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        if self.given_up:
            assert self.handler is not None
            self.handler.data_received(bytes(_READ_VIEW[:nbytes]))
            return
        self.buffer += _READ_VIEW[:nbytes]
        if not self.busy:
            self._next_request()
        elif len(self.buffer) > self.site.hits.max_request_bytes + MAX_HEAD_BYTES and not self.reading_paused:
            # Requests pipelined behind one still being answered: wait before reading more.
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # close, as aiohttp does

    def connection_lost(self, exc: Exception | None) -> None:
        self.site.lanes.discard(self)
        self.transport = None
        self._wake_writer()
        if self.passing_on is not None:
            self.passing_on.cancel()  # nobody to write to; the flight runs on and stores its answer
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()
        if self.handler is not None:
            self.handler.resume_writing()
        elif not self.busy:
            self._next_request()

    # the lane

    def _next_request(self) -> None:
        """Take whole requests from the buffer while nothing is being answered: those answered
        at once (from this process's memory) one after another, until one has to wait for a
        lookup or for aiohttp."""
        transport = self.transport
        writer = self.site.hits
        while transport is not None and not self.busy and not self.stopping and not self.writing_paused:
            if self.reading_paused:
                self.reading_paused = False
                transport.resume_reading()
            if not self.buffer:
                return
            head = read_head(self.buffer)
            if head is INCOMPLETE:
                return
            if head is UNFRAMED or not isinstance(head, RequestHead) or head.length > writer.max_request_bytes:
                self._give_up()  # aiohttp reads it (and refuses a body over the limit, 413)
                return
            end = head.size + head.length
            if len(self.buffer) < end:
                return
            started = time.perf_counter()
            raw = bytes(self.buffer[:end])
            del self.buffer[:end]
            self.busy = True
            try:
                plain = writer.prepare(head, raw[head.size :])
                response = None if plain is None else writer.answer_now(head, plain, started)
            except Exception:
                log.exception("the fast lane failed on a request; aiohttp's path answers it")
                plain = None
            if plain is None:
                self._lend(raw)
            elif response is None:
                self.site.admit(self, head, plain, raw, started)
            else:
                self.site.write_soon(transport, response)
                self._finish_answer()
        if self.stopping:
            self.close_if_idle(time.monotonic())

    async def answer(self, head: RequestHead, plain: PlainRequest, raw: bytes, started: float) -> None:
        """Look the request up in the store (a coroutine: stores without `get_soon`)."""
        answer: bytes | PlainMiss | None = None
        try:
            found = await self.site.hits.proxy.lookup_plain(plain)
            answer = self.site.hits.answer_from(head, plain, found, started)
        except Exception:
            log.exception("the fast lane failed on a request; aiohttp's path answers it")
        finally:
            self.site.answer_done()
        self._deliver(answer, head, plain, raw, started)

    def looked_up(
        self, head: RequestHead, plain: PlainRequest, raw: bytes, started: float, found: asyncio.Future[bytes | None]
    ) -> None:
        """The store's lookup (`lookup_soon`) is done: answer, or lend the request to aiohttp,
        whose own lookup reports a failed one."""
        self.site.answer_done()
        answer: bytes | PlainMiss | None = None
        if not found.cancelled() and found.exception() is None:
            try:
                answer = self.site.hits.answer_from(head, plain, found.result(), started)
            except Exception:
                log.exception("the fast lane failed on a request; aiohttp's path answers it")
        self._deliver(answer, head, plain, raw, started)

    def _deliver(
        self, answer: bytes | PlainMiss | None, head: RequestHead, plain: PlainRequest, raw: bytes, started: float
    ) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # a flight started for it runs on, and stores its answer
        if answer is None:
            self._lend(raw)
        elif isinstance(answer, bytes):
            self.site.write_soon(transport, answer)
            self._answered()
        else:
            self.answering = self.passing_on = asyncio.ensure_future(self._pass_on(head, plain, answer, started))

    async def _pass_on(self, head: RequestHead, plain: PlainRequest, miss: PlainMiss, started: float) -> None:
        """Write the answer of a plain request's flight as it arrives (see proxy/lane_misses.py)."""
        hits = self.site.hits
        request_id = request_id_for(head.headers.get("x-request-id"))
        record = RequestLog(request_id, route=plain.match.route.name, key_digest=key_digest(plain.key), key=plain.key)
        passed = PassedOn(miss.flight, miss.flight.join(), miss.outcome)
        try:
            try:
                upstream = await passed.flight.wait_head()
                passed.flight, passed.reader, upstream, passed.outcome = await hits.proxy.own_answer(
                    passed.flight, passed.reader, upstream, passed.outcome, miss.upstream_request
                )
            except UpstreamError as exc:
                record.error = str(exc)
                passed.status = exc.status
                passed.whole = await self._send(error_response(exc.status, str(exc), request_id, hits.http_date()))
                return
            record.cache = passed.outcome
            record.upstream_ms = passed.flight.upstream_ms
            passed.status = upstream.status
            plan = forward_plan(
                upstream,
                outcome=passed.outcome,
                namespace=plain.match.route.name,
                request_id=request_id,
                accept_gzip=plain.accept_gzip,
            )
            origin = hits.cross_origin(head)
            if origin is not None:
                hits.cors.add_response_headers(plan.headers, origin)
            await self._write_answer(passed, MissFraming(upstream.status, plan, hits.http_date()))
        except Exception:  # a bug: the client must not wait for an answer that will not come
            log.exception("the fast lane failed passing on an answer; closing the connection", request_id=request_id)
            if self.transport is not None:
                self.transport.close()
        finally:  # also when cancelled: the connection closed (`connection_lost`)
            passed.reader.close()
            self.passing_on = None
            if not passed.whole:
                passed.status = CLIENT_CLOSED_REQUEST if self.transport is None else passed.status
                record.error = record.error or "the answer was not written whole (the client or the upstream left)"
            if record.cache is not None:
                hits.proxy.account(record, passed.flight, passed.outcome)
            hits.stats.fast_lane_misses += 1
            hits.close(head, record, passed.status, started)
            if self.transport is not None and not self.transport.is_closing():
                self._answered()

    async def _write_answer(self, passed: PassedOn, framing: MissFraming) -> None:
        """The head, then the body as the flight reads it; an upstream that breaks off mid-body
        leaves the client a connection closed without a proper end, never a complete-looking answer."""
        pending = framing.head()
        if not framing.sized:  # a stream's head goes at once; a known length's with its first bytes
            if not await self._send(pending):
                return
            pending = b""
        if has_body(passed.status):
            try:
                async for chunk in passed.reader:
                    data = framing.body(chunk)
                    if pending:
                        data, pending = pending + data, b""
                    if data and not await self._send(data):
                        return  # the client went away; the flight goes on without it
                    passed.whole = framing.complete  # all of a known length: whole, whatever comes next
            except UpstreamError as exc:
                log.warning("upstream response broke off; closing the client connection", error=str(exc))
                if self.transport is not None:
                    self.transport.close()
                return
        passed.whole = await self._send(pending + framing.end()) or passed.whole

    async def _send(self, data: bytes) -> bool:
        """Write part of a passed-on answer, waiting while the client reads slower than the
        upstream answers; False once the client has gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if self.site.unwritten:
            self.site.write_answers()  # answers held for this turn go first
        if data:
            transport.write(data)
        while self.writing_paused and self.transport is not None:
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained
        return self.transport is not None and not self.transport.is_closing()

    def _wake_writer(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _finish_answer(self) -> None:
        self.busy = False
        self.answering = None
        self.last_active = time.monotonic()
        if self.handler is not None:
            self.handler.keep_alive(True)  # cancels its idle timer: the lane is serving the connection

    def _answered(self) -> None:
        """An answer that had to wait is written (by the lane or aiohttp): on to the next request."""
        self._finish_answer()
        self._next_request()

    def _handler(self) -> RequestHandler:
        """aiohttp's handler of this connection, attached at its first request that needs it."""
        handler = self.handler
        if handler is None:
            assert self.transport is not None
            handler = self.handler = self.site.aiohttp_server()
            handler.connection_made(self.transport)
            if self.writing_paused:
                handler.pause_writing()
        return handler

    def _lend(self, raw: bytes) -> None:
        """aiohttp answers this one request; `answered_by_aiohttp` is told when it has."""
        self._handler().data_received(raw)

    def answered_by_aiohttp(self, handler: RequestHandler, response: web.StreamResponse) -> None:
        if handler is not self.handler or self.given_up or not self.busy:
            return
        if not response.keep_alive or self.stopping:
            return  # aiohttp closes the connection itself after this response
        # aiohttp's handler stays attached, idle until the lane lends it another request. Its
        # keep-alive timer, armed after each response, is cancelled once the lane serves the
        # connection again (`_answered`): idleness is the lane's to judge while it reads.
        asyncio.get_running_loop().call_soon(self._answered)

    def _give_up(self) -> None:
        """aiohttp reads this connection from now on (requests the strict reader does not frame)."""
        self.given_up = True
        data = bytes(self.buffer)
        self.buffer.clear()
        self._handler().data_received(data)

    def close_if_idle(self, now: float) -> None:
        idle = self.transport is not None and not self.busy and not self.given_up
        # A connection aiohttp reads for good keeps aiohttp's own keep-alive timer.
        if idle and (self.stopping or now - self.last_active > KEEPALIVE_TIMEOUT):
            assert self.transport is not None
            self.site.write_answers()
            self.transport.close()

    def stop(self) -> None:
        """No new requests; closed now if idle, else once its answer is written."""
        self.stopping = True
        self.close_if_idle(time.monotonic())


class FastLaneSite(web.BaseSite):
    """A TCP site whose connections start on the fast lane (`host`/`port`, or a bound `sock`)."""

    __slots__ = (
        "_host", "_port", "_reuse_port", "_sock", "_sweeper", "aiohttp_server", "answers_in_flight", "hits", "lanes",
        "unwritten", "unwritten_bytes", "waiting",
    )  # fmt: skip

    def __init__(
        self,
        runner: web.AppRunner,
        hits: HitWriter,
        host: str | None = None,
        port: int = 0,
        *,
        sock: socket.socket | None = None,
        backlog: int = 128,
        reuse_port: bool | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        assert runner.server is not None
        self._host = host
        self._port = port
        self._sock = sock
        self._reuse_port = reuse_port
        self.aiohttp_server = runner.server
        self.lanes: set[FastLane] = set()
        self.answers_in_flight = 0
        self.unwritten: list[tuple[asyncio.Transport, bytes]] = []
        self.unwritten_bytes = 0
        self.waiting: deque[tuple[FastLane, RequestHead, PlainRequest, bytes, float]] = deque()
        self.hits = hits
        self._sweeper: asyncio.Task[None] | None = None

    def write_soon(self, transport: asyncio.Transport, response: bytes) -> None:
        """Write at the end of this turn of the loop, with the other answers it produced: the
        client (wrk, a pool of connections) is woken once for them all, not once per answer.
        Order holds: whatever else the connection answers is written in a later turn."""
        if not self.unwritten:
            asyncio.get_running_loop().call_soon(self.write_answers)
        self.unwritten.append((transport, response))
        self.unwritten_bytes += len(response)
        if self.unwritten_bytes > WRITE_BATCH_BYTES:  # large answers are not held: memory
            self.write_answers()

    def write_answers(self) -> None:
        """Write the answers `write_soon` holds (also before the lane closes a connection)."""
        unwritten, self.unwritten = self.unwritten, []
        self.unwritten_bytes = 0
        for transport, response in unwritten:
            if not transport.is_closing():
                transport.write(response)

    def admit(self, lane: FastLane, head: RequestHead, plain: PlainRequest, raw: bytes, started: float) -> None:
        """Start looking up a plain request now, or once fewer than `MAX_ANSWERS_IN_FLIGHT` are."""
        if self.answers_in_flight >= MAX_ANSWERS_IN_FLIGHT:
            self.waiting.append((lane, head, plain, raw, started))
            return
        self.answers_in_flight += 1
        found = self.hits.proxy.lookup_soon(plain)
        if found is None:
            lane.answering = asyncio.ensure_future(lane.answer(head, plain, raw, started))
        else:  # no task: the lookup's future calls the lane back
            lane.answering = found
            found.add_done_callback(functools.partial(lane.looked_up, head, plain, raw, started))

    def answer_done(self) -> None:
        self.answers_in_flight -= 1
        while self.waiting:
            lane, head, plain, raw, started = self.waiting.popleft()
            if lane.transport is not None:
                self.admit(lane, head, plain, raw, started)
                return

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}" if self._sock is None else f"fast lane on {self._sock}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(lambda: FastLane(self), sock=self._sock, backlog=self._backlog)
        else:
            self._server = await loop.create_server(
                lambda: FastLane(self), self._host, self._port, backlog=self._backlog, reuse_port=self._reuse_port
            )
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            now = time.monotonic()
            for lane in list(self.lanes):
                lane.close_if_idle(now)

    async def stop(self) -> None:
        """Stop listening, close idle connections, let the lane's answers in progress finish
        (aiohttp's runner then does the same for the requests lent to it)."""
        await super().stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for lane in list(self.lanes):
            lane.stop()
        # Lookups take milliseconds; misses passed on take what their upstream takes, up to the grace.
        deadline = time.monotonic() + max(STOP_WAIT, self.hits.proxy.settings.shutdown_grace)
        while time.monotonic() < deadline:
            answering = [lane.answering for lane in self.lanes if lane.answering is not None]
            answering = [future for future in answering if not future.done()]
            if not answering:
                break
            await asyncio.wait(answering, timeout=deadline - time.monotonic())
            await asyncio.sleep(0)  # the callbacks of lookups that just finished write their answers


def fast_lane_site(runner: web.AppRunner, **options: Any) -> FastLaneSite:
    """A `FastLaneSite` for a runner that is set up (its app's proxy exists once it has started)."""
    app = runner.app
    settings = app[SETTINGS]
    cors = CorsPolicy.from_origins(settings.cors_origins)
    return FastLaneSite(runner, HitWriter(app[PROXY], app[STATS], cors, access_log=settings.access_log), **options)
