"""Writing cache outcomes to aiohttp responses: a stored entry, or a flight streamed as it arrives."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from aiohttp import web
from multidict import CIMultiDict

from proxy.constants import CACHE_STATUS, HIT, PRODUCT, REQUEST_ID, STALE, X_CACHE
from proxy.entry import COMPRESS_MIN_BYTES, Entry, accepts_gzip, compressible
from proxy.errors import UpstreamError
from proxy.flight import FlightReader, Head
from proxy.upstream import downstream_headers

log = structlog.get_logger("proxy.responses")

# RFC 9211 forward reasons for each X-Cache outcome that went upstream.
_FORWARD_REASON = {"MISS": "uri-miss", "REFRESH": "request", "BYPASS": "bypass", "COALESCED": "uri-miss"}


def cache_status(outcome: str, namespace: str, *, ttl: int | None = None, upstream_status: int | None = None) -> str:
    """The RFC 9211 `Cache-Status` value, with the namespace as its `detail`."""
    parts = [PRODUCT]
    if outcome in (HIT, STALE):
        parts.append("hit")
        if ttl is not None:
            parts.append(f"ttl={ttl}")
        if outcome == STALE:
            parts.append("fwd=stale")
            if upstream_status is not None:
                parts.append(f"fwd-status={upstream_status}")
    else:
        parts.append(f"fwd={_FORWARD_REASON.get(outcome, 'miss')}")
        if upstream_status is not None:
            parts.append(f"fwd-status={upstream_status}")
        if outcome == "COALESCED":
            parts.append("collapsed")
    parts.append(f"detail={namespace}")
    return "; ".join(parts)


def hit_headers(
    entry: Entry,
    *,
    namespace: str,
    now: float,
    request_id: str,
    outcome: str = HIT,
    upstream_status: int | None = None,
    extra_headers: dict[str, str] | None = None,
) -> list[tuple[str, str]]:
    """The headers of a hit (or a stale answer): the stored ones, then the cache headers.

    None of the stored headers (policy.STORED_RESPONSE_HEADERS) is one of those added here, so
    the list has each name once. Shared by aiohttp's path and the fast lane (proxy/fastlane.py)."""
    headers = list(entry.headers)
    if compressible(entry.content_type):
        headers.append(("Vary", "Accept-Encoding"))
    if entry.encoding == "gzip":
        headers.append(("Content-Encoding", "gzip"))
    ttl = int(entry.stored_at + entry.fresh_for - now)  # negative once stale, as RFC 9211 has it
    headers += (
        (X_CACHE, outcome),
        ("Age", str(entry.age(now))),
        (CACHE_STATUS, cache_status(outcome, namespace, ttl=ttl, upstream_status=upstream_status)),
        (REQUEST_ID, request_id),
    )
    if extra_headers:
        headers.extend(extra_headers.items())
    return headers


class _SizedResponse(web.StreamResponse):
    """A streamed response of known length: its headers leave with the first body bytes, in one
    segment, instead of alone (as `web.Response` does; an event stream's headers go at once)."""

    _send_headers_immediately = False


def entry_response(entry: Entry, headers: list[tuple[str, str]]) -> web.Response:
    """A hit (or a stale answer): the stored status and body byte for byte, with `hit_headers`."""
    return web.Response(status=entry.status, body=entry.body, headers=CIMultiDict(headers))


@dataclass(frozen=True, slots=True)
class ForwardPlan:
    """How an upstream answer is passed on: its headers, and its framing."""

    headers: CIMultiDict[str]
    length: int | None  # the Content-Length to send; None: chunked
    gzip: bool  # compressed on the way (then chunked)


def forward_plan(
    head: Head,
    *,
    outcome: str,
    namespace: str,
    request_id: str,
    accept_gzip: bool,
    extra_headers: dict[str, str] | None = None,
) -> ForwardPlan:
    """The headers and framing of an upstream answer passed to a client: aiohttp's path
    (`stream_response`) and the fast lane's (proxy/lane_misses.py) alike."""
    headers = downstream_headers(head.headers)
    headers[X_CACHE] = outcome
    headers[CACHE_STATUS] = cache_status(outcome, namespace, upstream_status=head.status)
    headers[REQUEST_ID] = request_id
    if extra_headers:
        headers.update(extra_headers)
    length = head.headers.get("Content-Length")
    identity = "Content-Encoding" not in head.headers
    known_length = int(length) if length is not None and length.isdigit() and identity else None
    gzip = False
    content_type = head.headers.get("Content-Type")
    if compressible(content_type):
        headers["Vary"] = "Accept-Encoding"
        streaming = (content_type or "").startswith("text/event-stream")
        # Event streams are never compressed: a compressor holds bytes back, and streams must not wait.
        if not streaming and accept_gzip and (known_length is None or known_length >= COMPRESS_MIN_BYTES):
            gzip = True
            known_length = None
    return ForwardPlan(headers, known_length, gzip)


async def stream_response(
    request: web.Request,
    reader: FlightReader,
    head: Head,
    *,
    outcome: str,
    namespace: str,
    request_id: str,
    extra_headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Send the upstream response to the client chunk by chunk, as the flight receives it.

    If the upstream breaks off mid-body, the connection is closed without a proper end, so the
    client sees a truncated response as an error rather than as a complete answer.
    """
    plan = forward_plan(
        head,
        outcome=outcome,
        namespace=namespace,
        request_id=request_id,
        accept_gzip=accepts_gzip(request.headers.get("Accept-Encoding")),
        extra_headers=extra_headers,
    )
    sized = plan.length is not None and plan.length > 0
    response = (_SizedResponse if sized else web.StreamResponse)(status=head.status, headers=plan.headers)
    if plan.gzip:
        response.enable_compression(web.ContentCoding.gzip)
    if plan.length is not None:
        response.content_length = plan.length
    await response.prepare(request)
    try:
        async for chunk in reader:
            await response.write(chunk)
    except UpstreamError as exc:
        log.warning("upstream response broke off; closing the client connection", error=str(exc))
        if request.transport is not None:
            request.transport.close()
        return response
    except ConnectionError:
        return response  # the client went away; the flight goes on without it
    finally:
        reader.close()
    await response.write_eof()
    return response
