"""The orchestrator: the one module that knows routing, policy, keys, the store and the upstream.

A request flows one way: route -> policy -> key -> store lookup -> (hit) stored answer, or
(miss) a flight to the upstream that streams to the client while it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
import structlog
from aiohttp import web
from multidict import CIMultiDict

from proxy.access import ACCESS_KEY_HEADER, AccessPolicy, Client
from proxy.admin_auth import is_loopback
from proxy.bodies import read_up_to
from proxy.cache_key import (
    KeyInput,
    build_key,
    content_type_of,
    credential_fingerprint,
    key_credential,
    key_digest,
    key_fields,
    key_input,
)
from proxy.constants import (
    BYPASS,
    CACHE_STATUS,
    COALESCED,
    HIT,
    MISS,
    REFRESH,
    STALE,
    X_CACHE,
    X_CACHE_DEBUG,
    X_CACHE_INPUTS,
    X_CACHE_KEY,
    X_CACHE_KEY_FIELDS,
    X_CACHE_TTL,
)
from proxy.coordination import Coordinator
from proxy.embeddings import EMBEDDINGS, Batch, assemble, item_of, parse_batch, split_answer
from proxy.entry import Entry, accepts_gzip, decode_entry, encode_entry, kept_headers
from proxy.errors import ClientRequestError, EntryDecodeError, StoreError, UpstreamError
from proxy.flight import Flight, FlightReader, Head
from proxy.middleware import RequestLog, request_log
from proxy.policy import (
    STORED_RESPONSE_HEADERS,
    RequestDirectives,
    complete_body_refusal,
    request_directives,
    request_uses_cache,
)
from proxy.prices import PriceTable
from proxy.ratelimit import Decision, Limiter
from proxy.refusals import ACCESS_DENIED, BUDGET_SPENT, RATE_LIMITED, Refusals
from proxy.responses import cache_status, entry_response, hit_headers, stream_response
from proxy.routes import Route, RouteMatch, RouteTable
from proxy.settings import Settings
from proxy.store.base import Store
from proxy.upstream import (
    UpstreamClient,
    UpstreamRequest,
    downstream_headers,
    read_limited,
    upstream_headers,
)
from proxy.usage import Usage

log = structlog.get_logger("proxy.cache")
HOT_KEYS_LIMIT = 100_000
DECODED_MEMO_BYTES = 1024 * 1024  # stored bytes + decoded bodies kept for the entries hit most recently
PLAIN_HIT_METHODS = frozenset({"GET", "POST"})
# A lookup the fast lane just made for a request it then handed to `handle` is reused there
# instead of asking the store again, if it is at most this old (the hand-over takes microseconds).
HANDED_OVER_LOOKUP_SECONDS = 0.05
HANDED_OVER_LOOKUPS_LIMIT = 256


@dataclasses.dataclass(frozen=True, slots=True)
class PlainMiss:
    """The flight a plain request with no entry passes on, as what (MISS, COALESCED)."""

    flight: Flight
    outcome: str
    upstream_request: UpstreamRequest


@dataclasses.dataclass(slots=True)
class PlainRequest:
    """A request the fast lane may serve itself (from a fresh entry, or passing its miss on):
    its route, its key, what it is."""

    match: RouteMatch
    upstream_path: str
    key: str
    accept_gzip: bool
    method: str
    query_string: str
    headers: Mapping[str, str]
    body: bytes


class CacheProxy:
    """Serves routed requests from the store, or from the upstream through shared flights."""

    def __init__(
        self,
        *,
        settings: Settings,
        routes: RouteTable,
        store: Store,
        client: UpstreamClient,
        coordinator: Coordinator | None = None,
        access: AccessPolicy | None = None,
        limiter: Limiter | None = None,
        prices: PriceTable | None = None,
        refusals: Refusals | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.coordinator = coordinator
        self.access = access or AccessPolicy({}, open_access=True)
        self.limiter = limiter or Limiter(None, key_prefix="", upstream=None, hits=None, daily_budget=None)
        self.prices = prices or PriceTable({})
        self.refusals = refusals or Refusals()
        self.routes = routes
        self.store = store
        self.client = client
        self.clock = clock
        self.flights: dict[str, Flight] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._hot: dict[str, int] = {}
        self._decoded: dict[tuple[str, bool], tuple[bytes, Entry]] = {}
        self._decoded_bytes = 0
        self._starting: dict[str, asyncio.Future[None]] = {}
        self._handed_over: dict[tuple[str, bool], tuple[float, Entry | None]] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        record = request_log(request)
        # rel_url: for an absolute-URI target (`GET http://host/path`) only the path counts;
        # the route, never the request, names the upstream.
        raw_path = request.rel_url.raw_path
        match = self.routes.match(request.method, raw_path)
        if match is None:
            raise ClientRequestError(
                f"no route for {request.method} {request.path}: the proxy forwards only the paths of its route table",
                status=404,
            )
        route = match.route
        record.route = route.name
        client_headers, credential = self._admit(request, route)
        body = await read_body(request, self.settings.max_request_bytes)
        upstream_path = route.upstream_path_for(raw_path, match.params)
        # Built only when the request goes upstream: a fresh hit never needs it.
        upstream_request = functools.partial(
            self._upstream_request,
            request.method,
            request.rel_url.raw_query_string,
            match,
            upstream_path,
            body,
            client_headers,
        )

        if not request_uses_cache(route, request.method):
            return await self._forward(request, match, upstream_request(), key=None, outcome=BYPASS)
        directives = request_directives(request.headers)
        if directives.no_store:
            return await self._forward(request, match, upstream_request(), key=None, outcome=BYPASS)

        ttl = requested_ttl(request.headers.get(X_CACHE_TTL), route)
        if route.openai_checks and not directives.no_cache and content_type_of(route, match.template) == EMBEDDINGS:
            batch = parse_batch(body)
            if batch is not None:
                return await self._embeddings_batch(
                    request, match, upstream_request(), batch, ttl or route.ttl, directives, client_headers, credential
                )
        request_key, key = self._key_of(
            match, request.method, upstream_path, request.rel_url.raw_query_string, body, client_headers, credential
        )
        record.key_digest = key_digest(key)
        record.key = key
        if X_CACHE_DEBUG in request.headers:
            self._check_debug_allowed(request)
            record.debug = {X_CACHE_KEY: key, X_CACHE_KEY_FIELDS: ", ".join(key_fields(route, request_key))}

        stale: Entry | None = None
        if not directives.no_cache:
            accept_gzip = accepts_gzip(request.headers.get("Accept-Encoding"))
            handed_over = self._take_handed_over(key, accept_gzip)
            entry = handed_over[0] if handed_over is not None else await self.lookup(key, accept_gzip=accept_gzip)
            now = self.clock()
            acceptable_age = directives.max_age is None or (entry is not None and entry.age(now) <= directives.max_age)
            if entry is not None and entry.is_fresh(now) and acceptable_age:
                await self._check_hit_limit(record)
                if self.settings.refresh_ahead and request.method != "HEAD":
                    self._refresh_ahead(match, upstream_request, key, ttl, entry, now)
                return self._from_entry(request, entry, HIT, now)
            if entry is not None and directives.max_age is None:
                if entry.stale_within(route.stale_while_revalidate, now) and request.method != "HEAD":
                    await self._check_hit_limit(record)
                    self._revalidate(match, upstream_request(), key, ttl)
                    return self._from_entry(request, entry, STALE, now)
                if entry.stale_within(route.stale_if_error, now):
                    stale = entry  # kept in case the upstream fails
        if directives.only_if_cached:
            raise ClientRequestError("not in the cache, and the request asked for only-if-cached", status=504)
        if request.method == "HEAD":  # a HEAD answer has no body to store
            return await self._forward(request, match, upstream_request(), key=None, outcome=MISS)
        return await self._forward(
            request,
            match,
            upstream_request(),
            key=key,
            outcome=REFRESH if directives.no_cache else MISS,
            ttl=ttl,
            stale=stale,
        )

    def _admit(self, request: web.Request, route: Route) -> tuple[Mapping[str, str], str | None]:
        """Who the client is, and the headers the key and the upstream see.

        When the route's upstream key is the proxy's own, the client must authenticate (401
        otherwise) and its credential is consumed here, so entries are shared between clients
        (unless the route says `share_entries = false`: then the identity is part of the key).
        Otherwise the client's own credential, if any, goes upstream and into the key as it is.
        Returns the headers and what stands for the client in the key (`key_credential`)."""
        record = request_log(request)
        if self._needs_access_key(route):
            try:
                client, headers, credential = self._authenticated(request.headers, route)
            except ClientRequestError:
                self.refusals.count(ACCESS_DENIED)
                raise
            record.client = client.label
            return headers, credential
        fingerprint = credential_fingerprint(request.headers)
        record.client = f"credential:{fingerprint[:16]}" if fingerprint else f"ip:{request.remote}"
        return request.headers, fingerprint

    def _needs_access_key(self, route: Route) -> bool:
        """Whether the route's upstream key is the proxy's own, so clients must authenticate."""
        return bool(self.settings.upstreams[route.upstream].api_key) and not self.access.open_access

    def _authenticated(self, incoming: Mapping[str, str], route: Route) -> tuple[Client, CIMultiDict[str], str | None]:
        """The client behind an access key or JWT, the headers without it, and what stands for
        the client in the key; `ClientRequestError` (401) when it does not authenticate."""
        headers = CIMultiDict(incoming)  # the lane's names are lower-case; credentials are looked up as sent
        client = self.access.authenticate(headers)
        headers.popall("Authorization", None)
        headers.popall(ACCESS_KEY_HEADER, None)
        return client, headers, key_credential(headers, None if route.share_entries else client.label)

    def plain_request(
        self, method: str, raw_path: str, query_string: str, headers: Mapping[str, str], body: bytes
    ) -> PlainRequest | None:
        """The key of a request with nothing to check but its key: what the fast lane may serve.

        The caller (proxy/fastlane.py) has already left out requests whose headers ask for more
        (CORS, Cache-Control, Pragma, X-Cache-TTL, X-Cache-Debug, ...). None - go the full way
        through `handle` - when the route does not cache, when rate limits apply, for an
        embeddings route (batches), and when a route needing an access key has none that
        authenticates (`handle` gives the 401). `headers` has lower-case names. Raises
        `ClientRequestError` where `handle` would answer with an error."""
        match = self.routes.match(method, raw_path)
        if match is None or method not in PLAIN_HIT_METHODS:
            return None
        route = match.route
        if (
            not request_uses_cache(route, method)
            or self.limiter.enabled
            or (route.openai_checks and content_type_of(route, match.template) == EMBEDDINGS)
        ):
            return None
        if self._needs_access_key(route):
            try:
                _, headers, credential = self._authenticated(headers, route)
            except ClientRequestError:
                return None  # `handle` refuses it (401) and counts the refusal
        else:
            credential = credential_fingerprint(headers)
        upstream_path = route.upstream_path_for(raw_path, match.params)
        _, key = self._key_of(match, method, upstream_path, query_string, body, headers, credential)
        accept_gzip = accepts_gzip(headers.get("accept-encoding"))
        return PlainRequest(match, upstream_path, key, accept_gzip, method, query_string, headers, body)

    def _key_of(
        self,
        match: RouteMatch,
        method: str,
        upstream_path: str,
        query_string: str,
        body: bytes,
        headers: Mapping[str, str],
        credential: str | None,
    ) -> tuple[KeyInput, str]:
        """What the key is computed from, and the key (`credential` from `key_credential`)."""
        request_key = key_input(
            route=match.route,
            method=method,
            upstream_path=upstream_path,
            query_string=query_string,
            body=body,
            headers=headers,
            credential=credential,
        )
        return request_key, build_key(
            match.route, match.template, match.params, request_key, prefix=self.settings.key_prefix
        )

    def fresh_now(self, plain: PlainRequest) -> Entry | None:
        """A fresh entry this process holds (first tier, embedded store), found without waiting;
        None: ask `lookup_plain`."""
        entry = self._decode(plain.key, self.store.get_local(plain.key), accept_gzip=plain.accept_gzip)
        return self._fresh_plain(plain, entry) if entry is not None else None

    def lookup_soon(self, plain: PlainRequest) -> asyncio.Future[bytes | None] | None:
        """The store's lookup as a future, when it can start one without a coroutine (then
        `fresh_from` judges what it found); None: use `lookup_plain`."""
        return self.store.get_soon(plain.key)

    async def lookup_plain(self, plain: PlainRequest) -> bytes | None:
        """The store's lookup of a plain request (for stores without `get_soon`)."""
        return await self.store.get(plain.key)

    def fresh_from(self, plain: PlainRequest, raw: bytes | None) -> Entry | None:
        """The fresh entry in what the store returned for a plain request, or None when `handle`
        must answer it (which then reuses this lookup instead of repeating it)."""
        entry = self._decode(plain.key, raw, accept_gzip=plain.accept_gzip)
        fresh = self._fresh_plain(plain, entry) if entry is not None else None
        if fresh is None:
            self._hand_over(plain.key, plain.accept_gzip, entry)
        return fresh

    def _hand_over(self, key: str, accept_gzip: bool, entry: Entry | None) -> None:
        """Keep the lane's lookup of a request it lends to `handle`, which takes it from here."""
        if len(self._handed_over) >= HANDED_OVER_LOOKUPS_LIMIT:
            self._handed_over.clear()
        self._handed_over[(key, accept_gzip)] = (time.monotonic(), entry)

    def _take_handed_over(self, key: str, accept_gzip: bool) -> tuple[Entry | None] | None:
        """The lane's lookup of this request, if it has just made one; None: look it up."""
        handed_over = self._handed_over.pop((key, accept_gzip), None)
        if handed_over is None or handed_over[0] < time.monotonic() - HANDED_OVER_LOOKUP_SECONDS:
            return None
        return (handed_over[1],)

    def _fresh_plain(self, plain: PlainRequest, entry: Entry) -> Entry | None:
        now = self.clock()
        if not entry.is_fresh(now):
            return None
        if self.settings.refresh_ahead:
            upstream_request = functools.partial(
                self._upstream_request,
                plain.method,
                plain.query_string,
                plain.match,
                plain.upstream_path,
                plain.body,
                plain.headers,
            )
            self._refresh_ahead(plain.match, upstream_request, plain.key, None, entry, now)
        return entry

    async def _check_hit_limit(self, record: RequestLog) -> None:
        if not self.limiter.enabled or record.client is None:
            return
        decision = await self.limiter.check_hit(record.client)
        if decision.allowed and not self.settings.rate_limit_serve_hits:
            decision = await self.limiter.check_upstream(record.client)
        self._raise_if_refused(decision, record)

    async def _check_upstream_limit(self, record: RequestLog) -> None:
        if not self.limiter.enabled or record.client is None:
            return
        self._raise_if_refused(await self.limiter.check_upstream(record.client), record)

    def _raise_if_refused(self, decision: Decision, record: RequestLog) -> None:
        if decision.allowed:
            return
        self.refusals.count(BUDGET_SPENT if decision.reason == "daily budget spent" else RATE_LIMITED)
        record.error = decision.reason
        raise ClientRequestError(
            f"{decision.reason} for this client: try again in {decision.retry_after} s",
            status=429,
            headers={"Retry-After": str(decision.retry_after)},
        )

    def _spend(self, record: RequestLog, usage: Usage | None) -> None:
        """Count an upstream answer's cost against its client's daily budget (in the background)."""
        if usage is not None and record.client is not None and self.limiter.daily_budget:
            self._background(self.limiter.spend(record.client, self.prices.cost(usage)))

    def _from_entry(
        self, request: web.Request, entry: Entry, outcome: str, now: float, upstream_status: int | None = None
    ) -> web.Response:
        record = request_log(request)
        record.cache = outcome
        record.usage = entry.usage
        assert record.route is not None
        headers = hit_headers(
            entry,
            namespace=record.route,
            now=now,
            request_id=record.request_id,
            outcome=outcome,
            upstream_status=upstream_status,
            extra_headers=record.debug,
        )
        return entry_response(entry, headers)

    def _revalidate(
        self,
        match: RouteMatch,
        upstream_request: UpstreamRequest,
        key: str,
        ttl: int | None,
        *,
        coordinate: bool = True,
    ) -> None:
        """Refresh an entry in the background, once however many requests ask meanwhile."""
        running = self.flights.get(key)
        if running is None or running.finished:
            self._start_flight(match.route, upstream_request, key, ttl=ttl, coordinate=coordinate)

    def _refresh_ahead(
        self,
        match: RouteMatch,
        upstream_request: Callable[[], UpstreamRequest],
        key: str,
        ttl: int | None,
        entry: Entry,
        now: float,
    ) -> None:
        """A hot entry close to its expiry is refreshed before it goes cold (PROXY_REFRESH_AHEAD).

        Popularity is a hit count per key since its last refresh, in a dict bounded by
        `HOT_KEYS_LIMIT` (emptied when full: the popular keys count up again at once)."""
        hits = self._hot.get(key, 0) + 1
        if len(self._hot) >= HOT_KEYS_LIMIT and key not in self._hot:
            self._hot.clear()
        self._hot[key] = hits
        if (
            hits >= self.settings.refresh_ahead_min_hits
            and entry.ttl_left(now) <= entry.fresh_for * self.settings.refresh_ahead
        ):
            del self._hot[key]
            # Not coordinated: the entry is still fresh, so waiting for another replica would just
            # find it again. Each replica refreshes a hot key at most once per life of the entry.
            self._revalidate(match, upstream_request(), key, ttl, coordinate=False)

    async def _embeddings_batch(
        self,
        request: web.Request,
        match: RouteMatch,
        upstream_request: UpstreamRequest,
        batch: Batch,
        ttl: int,
        directives: RequestDirectives,
        client_headers: Mapping[str, str],
        credential: str | None,
    ) -> web.StreamResponse:
        """Known inputs from their entries, the others in one upstream call (see embeddings.py)."""
        record = request_log(request)
        route = match.route
        keys = [
            self._key_of(
                match,
                request.method,
                upstream_request.path,
                upstream_request.query_string,
                batch.single_body(item),
                client_headers,
                credential,
            )[1]
            for item in batch.inputs
        ]
        now = self.clock()
        items: list[dict[str, Any] | None] = [None] * len(keys)
        tokens = [0] * len(keys)
        model: str | None = None
        for index, raw in enumerate(await self.store.get_many(keys)):
            entry = self._decode(keys[index], raw)
            known = item_of(entry.body) if entry is not None and entry.is_fresh(now) and entry.status == 200 else None
            if known is not None:
                items[index], model, tokens[index] = known[0], model or known[1], known[2]
        missing = [index for index, item in enumerate(items) if item is None]
        saved_tokens = sum(tokens)
        if not missing:
            await self._check_hit_limit(record)
        if missing:
            if directives.only_if_cached:
                raise ClientRequestError("not in the cache, and the request asked for only-if-cached", status=504)
            await self._check_upstream_limit(record)
            answered = await self._embed_missing(upstream_request, route, batch, missing, keys, ttl, record)
            if isinstance(answered, web.StreamResponse):
                return answered  # the upstream's own answer, passed on as it came
            for index, (item, item_tokens) in answered.items():
                items[index], tokens[index] = item, item_tokens
        model = model or str(batch.payload.get("model", "unknown"))
        outcome = MISS if missing else HIT
        record.cache = outcome
        record.usage = Usage(model, saved_tokens, 0) if saved_tokens else None
        headers = {
            X_CACHE: outcome,
            CACHE_STATUS: cache_status(outcome, route.name),
            X_CACHE_INPUTS: f"hits={len(keys) - len(missing)}, misses={len(missing)}",
            **record.debug,
        }
        body = assemble([item for item in items if item is not None], model, sum(tokens))
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def _embed_missing(
        self,
        upstream_request: UpstreamRequest,
        route: Route,
        batch: Batch,
        missing: list[int],
        keys: list[str],
        ttl: int,
        record: RequestLog,
    ) -> dict[int, tuple[dict[str, Any], int]] | web.StreamResponse:
        started = time.perf_counter()
        sub_request = dataclasses.replace(upstream_request, body=batch.subset_body(missing))
        async with await self.client.send(sub_request) as response:
            record.upstream_ms = (time.perf_counter() - started) * 1000
            body = await read_limited(response, route.max_body_bytes)
            if body is None:
                raise UpstreamError(
                    f"upstream {sub_request.upstream.name} answered more than {route.max_body_bytes} bytes"
                )
            status, upstream_headers_ = response.status, response.headers
        parts = None
        if status == 200 and complete_body_refusal(route, upstream_headers_, body) is None:
            parts = split_answer(orjson.loads(body), batch, missing)
        if parts is None:
            headers = downstream_headers(upstream_headers_)
            headers[X_CACHE] = MISS
            headers[CACHE_STATUS] = cache_status(MISS, route.name, upstream_status=status)
            return web.Response(status=status, body=body, headers=headers)
        now = self.clock()
        kept = kept_headers(upstream_headers_.items(), STORED_RESPONSE_HEADERS)
        answered: dict[int, tuple[dict[str, Any], int]] = {}
        writes = []
        for index, (single_body, item_tokens) in parts.items():
            parsed = item_of(single_body)
            assert parsed is not None
            answered[index] = (parsed[0], item_tokens)
            usage = Usage(str(parsed[1] or "unknown"), item_tokens, 0)
            entry = Entry(200, kept, single_body, now, ttl, usage=usage)
            writes.append(self.store.put(keys[index], encode_entry(entry), entry.store_ttl(now)))
        # Shielded: the writes finish even if this request is cancelled; awaited so that a client
        # asking again at once finds the entries.
        await asyncio.shield(self._background(asyncio.gather(*writes)))
        spent = sum(item_tokens for _, item_tokens in parts.values())
        self._spend(record, Usage(str(orjson.loads(body).get("model") or "unknown"), spent, 0))
        return answered

    def _background(self, work: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run store writes in a task of their own: a client hanging up never cuts one short."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _check_debug_allowed(self, request: web.Request) -> None:
        token = self.settings.admin_token
        supplied = request.headers.get(X_CACHE_DEBUG, "")
        if token:
            if not hmac.compare_digest(supplied.encode(), token.encode()):
                raise ClientRequestError(f"{X_CACHE_DEBUG} must carry the admin token", status=401)
        elif not is_loopback(request.remote):
            raise ClientRequestError(
                f"{X_CACHE_DEBUG} is for loopback clients while PROXY_ADMIN_TOKEN is unset", status=403
            )

    async def lookup(self, key: str, *, accept_gzip: bool = False) -> Entry | None:
        return self._decode(key, await self.store.get(key), accept_gzip=accept_gzip)

    async def _lookup_fresh(self, key: str) -> Entry | None:
        """An entry another replica stored that is fresh now (a stale one is what we are replacing)."""
        entry = await self.lookup(key)
        return entry if entry is not None and entry.is_fresh(self.clock()) else None

    def _decode(self, key: str, raw: bytes | None, *, accept_gzip: bool = False) -> Entry | None:
        """The entry, or None; an entry that does not decode is deleted (in the background)."""
        if raw is None:
            return None
        # Decoding is a pure function of the stored bytes: the same bytes as last time (compared
        # whole, a memcmp, or the very object the first tier keeps) are the same entry, without
        # the checksum, header parse and gunzip again.
        remembered = self._decoded.get((key, accept_gzip))
        if remembered is not None and remembered[0] == raw:
            return remembered[1]
        try:
            entry = decode_entry(raw, accept_gzip=accept_gzip)
        except EntryDecodeError as exc:
            log.warning("dropping an entry that does not decode", error=str(exc))
            self._background(self._delete_quietly(key))
            return None
        size = len(raw) + len(entry.body)
        if size <= DECODED_MEMO_BYTES // 8:
            if self._decoded_bytes + size > DECODED_MEMO_BYTES:
                self._decoded.clear()
                self._decoded_bytes = 0
            replaced = self._decoded.get((key, accept_gzip))
            if replaced is not None:
                self._decoded_bytes -= len(replaced[0]) + len(replaced[1].body)
            self._decoded[(key, accept_gzip)] = (raw, entry)
            self._decoded_bytes += size
        return entry

    async def _delete_quietly(self, key: str) -> None:
        with contextlib.suppress(StoreError):  # the store logs its own outage
            await self.store.delete(key)

    async def _forward(
        self,
        request: web.Request,
        match: RouteMatch,
        upstream_request: UpstreamRequest,
        *,
        key: str | None,
        outcome: str,
        ttl: int | None = None,
        stale: Entry | None = None,
    ) -> web.StreamResponse:
        """Join the flight already fetching this key, or start one; stream its answer.

        With a `stale` entry in hand (within the route's stale-if-error window), an upstream that
        fails (unreachable, timed out, 5xx or 429) is answered with that entry instead."""
        record = request_log(request)
        flight = await self._flight_to_join(key)
        if flight is not None:
            outcome = COALESCED
        else:
            # Identical requests arriving while this one passes its rate-limit check wait for the
            # flight it starts instead of each taking a token of its own.
            gate = asyncio.get_running_loop().create_future()
            if key is not None:
                self._starting[key] = gate
            try:
                await self._check_upstream_limit(record)
                # A refresh goes upstream whatever other replicas hold: it does not wait for their entries.
                flight = self._start_flight(match.route, upstream_request, key, ttl=ttl, coordinate=outcome != REFRESH)
            finally:
                if key is not None and self._starting.get(key) is gate:
                    del self._starting[key]
                gate.set_result(None)
        reader = flight.join()
        try:
            try:
                head = await flight.wait_head()
            except UpstreamError:
                if stale is None:
                    raise
                reader.close()
                return self._from_entry(request, stale, STALE, self.clock())
            if stale is not None and (head.status >= 500 or head.status == 429):
                reader.close()
                return self._from_entry(request, stale, STALE, self.clock(), upstream_status=head.status)
            flight, reader, head, outcome = await self.own_answer(flight, reader, head, outcome, upstream_request, ttl)
        except BaseException:
            reader.close()
            raise
        record.cache = outcome
        record.upstream_ms = flight.upstream_ms
        response = await stream_response(
            request,
            reader,
            head,
            outcome=outcome,
            namespace=match.route.name,
            request_id=record.request_id,
            extra_headers=record.debug,
        )
        self.account(record, flight, outcome)
        return response

    def plain_miss(self, plain: PlainRequest) -> PlainMiss | None:
        """For a plain request with no entry (the fast lane's miss): the flight already fetching
        its key (COALESCED) or a new one (MISS). None when `handle` must answer it: an identical
        request is passing its rate-limit check and will start the flight."""
        key = plain.key
        if key in self._starting:
            return None
        upstream_request = self._upstream_request(
            plain.method, plain.query_string, plain.match, plain.upstream_path, plain.body, plain.headers
        )
        flight = self._joinable(key)
        if flight is not None:
            return PlainMiss(flight, COALESCED, upstream_request)
        return PlainMiss(self._start_flight(plain.match.route, upstream_request, key), MISS, upstream_request)

    async def own_answer(
        self,
        flight: Flight,
        reader: FlightReader,
        head: Head,
        outcome: str,
        upstream_request: UpstreamRequest,
        ttl: int | None = None,
    ) -> tuple[Flight, FlightReader, Head, str]:
        """The answer a request passes on once its flight has a head: a replica's entry counts
        as COALESCED; a joined flight whose answer may not be stored is not ours to reuse, so the
        request fetches its own."""
        if flight.from_peer:
            return flight, reader, head, COALESCED  # another replica went upstream for it
        if outcome == COALESCED and flight.refusal is not None:
            reader.close()
            flight = self._start_flight(flight.route, upstream_request, flight.key, ttl=ttl, shared=False)
            reader = flight.join()
            return flight, reader, await flight.wait_head(), MISS
        return flight, reader, head, outcome

    def account(self, record: RequestLog, flight: Flight, outcome: str) -> None:
        """After the answer is passed on: a coalesced request reports the leader's usage; the
        leader's own usage counts against its client's daily budget."""
        if outcome == COALESCED:
            record.usage = flight.usage
        elif not flight.from_peer:
            self._spend(record, flight.usage)

    async def _flight_to_join(self, key: str | None) -> Flight | None:
        """The flight fetching this key, waiting for one that is about to start; None to lead."""
        while True:
            flight = self._joinable(key)
            gate = self._starting.get(key) if key is not None else None
            if flight is not None or gate is None:
                return flight
            await asyncio.wait([gate])

    def _joinable(self, key: str | None) -> Flight | None:
        """The flight already fetching this key, when its answer may be shared."""
        flight = self.flights.get(key) if key is not None else None
        if flight is not None and flight.refusal is None and not flight.finished:
            return flight
        return None

    def _start_flight(
        self,
        route: Route,
        upstream_request: UpstreamRequest,
        key: str | None,
        *,
        ttl: int | None = None,
        shared: bool = True,
        coordinate: bool = True,
    ) -> Flight:
        flight = Flight(
            route=route,
            request=upstream_request,
            client=self.client,
            store=self.store,
            key=key,
            ttl=ttl or route.ttl,
            clock=self.clock,
            on_finish=self._flight_finished if key is not None and shared else None,
            coordinator=self.coordinator if shared and coordinate else None,
            lookup=(lambda: self._lookup_fresh(key)) if key is not None else None,
        )
        if key is not None and shared:
            self.flights[key] = flight
        flight.start()
        return flight

    async def drain(self, grace: float) -> None:
        """Let running flights finish (and store) for up to `grace` seconds, then cancel them."""
        tasks: list[asyncio.Future[Any]] = [flight.task for flight in list(self.flights.values()) if flight.task]
        tasks.extend(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("cancelled upstream fetches still running at shutdown", count=len(pending))

    def _flight_finished(self, flight: Flight) -> None:
        if flight.key is not None and self.flights.get(flight.key) is flight:
            del self.flights[flight.key]

    def _upstream_request(
        self,
        method: str,
        query_string: str,
        match: RouteMatch,
        upstream_path: str,
        body: bytes,
        client_headers: Mapping[str, str],
    ) -> UpstreamRequest:
        upstream = self.settings.upstreams[match.route.upstream]
        return UpstreamRequest(
            upstream=upstream,
            method=method,
            path=upstream_path,
            query_string=query_string,
            headers=upstream_headers(client_headers, upstream),
            body=body,
        )


def requested_ttl(raw: str | None, route: Route) -> int | None:
    """`X-Cache-TTL: N`, checked against the route's ceiling; None when absent."""
    if raw is None:
        return None
    ceiling = route.ttl_ceiling
    if not raw.strip().isdigit() or not 1 <= int(raw) <= ceiling:
        raise ClientRequestError(f"{X_CACHE_TTL} must be a whole number of seconds from 1 to {ceiling} on {route.name}")
    return int(raw)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 before it is read whole when it exceeds `limit`."""
    if request.content_length is not None and request.content_length > limit:
        raise ClientRequestError(
            f"request body of {request.content_length} bytes is over the {limit}-byte limit", status=413
        )
    if not request.body_exists:
        return b""
    body = await read_up_to(request.content, limit)
    if body is None:
        raise ClientRequestError(f"request body is over the {limit}-byte limit", status=413)
    return body
