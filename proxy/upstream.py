"""The upstream client: one pooled aiohttp session, header hygiene, timeouts, error mapping."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.bodies import read_up_to
from proxy.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from proxy.policy import NOT_FORWARDED_DOWNSTREAM, NOT_FORWARDED_UPSTREAM
from proxy.settings import Settings, Upstream

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CONNECT_RETRIES = 1


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """A request as it will be sent upstream (path already percent-encoded)."""

    upstream: Upstream
    method: str
    path: str
    query_string: str
    headers: CIMultiDict[str]
    body: bytes

    @property
    def url(self) -> URL:
        target = self.upstream.base_url + self.path
        if self.query_string:
            target += "?" + self.query_string
        return URL(target, encoded=True)


def create_session(settings: Settings) -> aiohttp.ClientSession:
    """The single pooled client session, made at start-up inside the running loop."""
    connector = aiohttp.TCPConnector(limit=settings.upstream_max_connections, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.upstream_connect_timeout, sock_read=settings.upstream_read_timeout
    )
    # No cookie jar: a cookie one client's answer sets must never ride on another client's request.
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar()
    )


def upstream_headers(incoming: Mapping[str, str], upstream: Upstream) -> CIMultiDict[str]:
    """Client headers minus hop-by-hop ones; the proxy's key when the client brings no credential."""
    named_in_connection = {
        token.strip().lower() for token in incoming.get("connection", "").split(",") if token.strip()
    }
    headers: CIMultiDict[str] = CIMultiDict()
    items = incoming.items()
    for name, value in items:
        lowered = name.lower()
        if lowered in NOT_FORWARDED_UPSTREAM or lowered in named_in_connection:
            continue
        headers.add(name, value)
    if upstream.api_key and "authorization" not in headers:
        headers["Authorization"] = f"Bearer {upstream.api_key}"
    return headers


def downstream_headers(upstream_response_headers: Mapping[str, str]) -> CIMultiDict[str]:
    """Upstream response headers fit to pass to the client (the body reaches it decoded)."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream_response_headers.items():
        if name.lower() not in NOT_FORWARDED_DOWNSTREAM:
            headers.add(name, value)
    return headers


class UpstreamClient:
    """Sends `UpstreamRequest`s; raises `UpstreamConnectError` (502) or `UpstreamTimeout` (504)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def send(self, request: UpstreamRequest) -> aiohttp.ClientResponse:
        retries = CONNECT_RETRIES if request.method in IDEMPOTENT_METHODS else 0
        attempt = 0
        while True:
            try:
                return await self.session.request(
                    request.method,
                    request.url,
                    headers=request.headers,
                    data=request.body or None,
                    allow_redirects=False,
                )
            except (aiohttp.ClientConnectionError, OSError) as exc:
                if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
                    raise timeout_error(request.upstream, exc) from exc
                if attempt >= retries:
                    raise connect_error(request.upstream, exc) from exc
                attempt += 1
            except TimeoutError as exc:
                raise timeout_error(request.upstream, exc) from exc
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"upstream {request.upstream.name} failed: {describe(exc)}") from exc


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None once it grows past `limit` bytes."""
    try:
        return await read_up_to(response.content, limit)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError(f"upstream broke off: {describe(exc)}") from exc


def connect_error(upstream: Upstream, exc: BaseException) -> UpstreamConnectError:
    return UpstreamConnectError(f"upstream {upstream.name} could not be reached: {describe(exc)}")


def timeout_error(upstream: Upstream, exc: BaseException) -> UpstreamTimeout:
    return UpstreamTimeout(f"upstream {upstream.name} did not answer in time")


def describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or str(exc.os_error) or "connection failed"
    return str(exc) or type(exc).__name__
