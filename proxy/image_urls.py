"""Expiring links in answers: a cached image generation must never hand out a dead URL.

Image URLs returned by OpenAI are signed and expire (after about an hour). The expiry is read
from the signature's own parameters: Azure SAS `se=` (what OpenAI's image URLs carry), S3
`X-Amz-Date` + `X-Amz-Expires`, Google Cloud Storage `X-Goog-Date` + `X-Goog-Expires`, and
CloudFront's `Expires=` (unix seconds). An entry lives no longer than the earliest expiry minus
`SAFETY_MARGIN` (time for the client to fetch the image), and not at all when that is already past.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from proxy.bodies import json_or_none
from proxy.routes import Route

SAFETY_MARGIN = 60


def url_expiry(url: str) -> float | None:
    """Unix time at which a signed URL stops working, or None when it carries no expiry."""
    params = {name.lower(): value for name, value in parse_qsl(urlsplit(url).query)}
    if "se" in params:
        return _iso_time(params["se"])
    for signer in ("amz", "goog"):
        signed_at, lifetime = params.get(f"x-{signer}-date"), params.get(f"x-{signer}-expires")
        if signed_at and lifetime and lifetime.isdigit():
            start = _compact_time(signed_at)
            return None if start is None else start + int(lifetime)
    expires = params.get("expires")
    if expires and expires.isdigit():
        return float(expires)
    return None


def answer_ttl(route: Route, headers: Mapping[str, str], body: bytes, ttl: int, now: float) -> int:
    """The route's TTL, capped by the expiry of any signed URL in an AI route's JSON answer."""
    if not route.openai_checks or not headers.get("content-type", "").startswith("application/json"):
        return ttl
    if b'"url"' not in body:
        return ttl
    document = json_or_none(body)
    expiries = [expiry for url in _urls(document) if (expiry := url_expiry(url)) is not None]
    if not expiries:
        return ttl
    return min(ttl, int(min(expiries) - now - SAFETY_MARGIN))


def _urls(document: Any) -> Iterator[str]:
    data = document.get("data") if isinstance(document, dict) else None
    for item in data if isinstance(data, list) else ():
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            yield item["url"]


def _iso_time(value: str) -> float | None:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _compact_time(value: str) -> float | None:
    try:
        return dt.datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None
