"""Cache analytics over HTTP: the statistics history (`GET /redis/stats/history`) and the
dashboard page (`GET /redis/dashboard`).

The page is one HTML file (`dashboard/index.html`) into which the vendored chart library
(`dashboard/vendor/`, uPlot, MIT) is inlined when it is first served, so it needs no network
beyond the proxy itself. Its Content-Security-Policy allows exactly its own inline scripts and
styles (by SHA-256) and requests to the proxy. It fetches `/redis/stats`, `/redis/stats/history`
and `/redis/health` with the same bearer token it was opened with.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import orjson
from aiohttp import web

from proxy.admin_auth import require_admin
from proxy.errors import ClientRequestError, StoreError
from proxy.history import parse_step, parse_window
from proxy.middleware import request_log
from proxy.state import STATS_KEEPER

UPLOT_VERSION = "1.6.32"
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@dataclass(frozen=True)
class Page:
    body: bytes
    headers: dict[str, str]


async def stats_history(request: web.Request) -> web.Response:
    """Per-minute history of the `/redis/stats` figures, every replica's, over `?window=`."""
    require_admin(request, loopback_without_token=False)
    keeper = request.app[STATS_KEEPER]
    window = parse_window(request.query.get("window"), retention=keeper.history.retention)
    step = parse_step(request.query.get("step"), window=window)
    try:
        body = await keeper.history_report(window, step)
    except StoreError as exc:
        raise ClientRequestError(f"Redis connection failed: {exc}", status=503) from None
    response = web.Response(body=orjson.dumps(body), content_type="application/json")
    response.enable_compression()
    return response


async def dashboard(request: web.Request) -> web.Response:
    """The dashboard page; with PROXY_ADMIN_TOKEN set, opened as `/redis/dashboard?token=<token>`
    (or with the bearer header), and otherwise answered with a page asking for the token."""
    try:
        require_admin(request, loopback_without_token=False, query_token=True)
    except ClientRequestError as exc:
        if exc.status != 401:
            raise
        request_log(request).error = str(exc)
        page = login_page()
        return web.Response(body=page.body, status=401, headers={**page.headers, **exc.headers})
    page = dashboard_page()
    response = web.Response(body=page.body, headers=page.headers)
    response.enable_compression()
    return response


@functools.cache
def dashboard_page() -> Page:
    folder = resources.files("proxy") / "dashboard"
    vendor = folder / "vendor"
    html = (folder / "index.html").read_text(encoding="utf-8")
    html = html.replace("/*UPLOT_CSS*/", (vendor / "uPlot.min.css").read_text(encoding="utf-8"), 1)
    html = html.replace("/*UPLOT_JS*/", (vendor / "uPlot.iife.min.js").read_text(encoding="utf-8"), 1)
    return _page(html)


@functools.cache
def login_page() -> Page:
    return _page((resources.files("proxy") / "dashboard" / "login.html").read_text(encoding="utf-8"))


def _page(html: str) -> Page:
    """The page and its headers: a CSP naming each inline script and style by its hash, no
    caching (the address may hold the token), no referrer."""
    sources: dict[str, list[str]] = {"script": [], "style": []}
    for kind, content in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(content.encode()).digest()).decode()
        sources[kind].append(f"'sha256-{digest}'")
    policy = "; ".join(
        (
            "default-src 'none'",
            f"script-src {' '.join(sources['script']) or 'none'}",
            f"style-src {' '.join(sources['style']) or 'none'}",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )
    return Page(
        body=html.encode(),
        headers={
            "Content-Type": "text/html; charset=utf-8",
            "Content-Security-Policy": policy,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )
