"""Pure cache decisions: may this request use the cache, may this response be stored, for how long.

No I/O here: every function takes plain values and returns plain values, so the rules can be
tested exhaustively without a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.bodies import json_or_none, sse_data
from proxy.routes import Route

CACHEABLE_METHODS = frozenset({"GET", "HEAD", "POST"})

# Response headers stored with an entry and replayed on hits; everything else is per-response.
STORED_RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "content-language",
        "content-disposition",
        "etag",
        "last-modified",
        "openai-model",
        "openai-version",
        "openai-processing-ms",
    }
)

# Hop-by-hop headers (RFC 9110 section 7.6.1) and those the proxy recomputes itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
NOT_FORWARDED_UPSTREAM = HOP_BY_HOP | {
    "host",
    "content-length",
    "accept-encoding",
    "cookie",
    "x-cache-ttl",
    "x-cache-debug",
    "x-proxy-key",
}
NOT_FORWARDED_DOWNSTREAM = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}


@dataclass(frozen=True, slots=True)
class RequestDirectives:
    """What the client asked of the cache (`Cache-Control` request directives, `X-Cache-TTL`)."""

    no_cache: bool = False
    no_store: bool = False
    max_age: int | None = None
    only_if_cached: bool = False


NO_DIRECTIVES = RequestDirectives()


def parse_cache_control(value: str) -> dict[str, str | None]:
    """`no-cache, max-age=60` -> {"no-cache": None, "max-age": "60"} (names lower-cased)."""
    directives: dict[str, str | None] = {}
    for part in value.split(","):
        name, sep, argument = part.strip().partition("=")
        name = name.strip().lower()
        if name:
            directives[name] = argument.strip().strip('"') if sep else None
    return directives


def request_directives(headers: Mapping[str, str]) -> RequestDirectives:
    cache_control = headers.get("cache-control")
    pragma = headers.get("pragma", "")
    if cache_control is None and "no-cache" not in pragma.lower():
        return NO_DIRECTIVES
    parsed = parse_cache_control(cache_control or "")
    max_age = _non_negative_int(parsed.get("max-age"))
    return RequestDirectives(
        no_cache="no-cache" in parsed or (cache_control is None and "no-cache" in pragma.lower()),
        no_store="no-store" in parsed,
        max_age=max_age,
        only_if_cached="only-if-cached" in parsed,
    )


@dataclass(frozen=True, slots=True)
class Freshness:
    """How long an answer stays fresh, how old it already was on arrival, how long it may be stale."""

    lifetime: int
    age: int
    stale_for: int

    @property
    def fresh_left(self) -> int:
        return self.lifetime - self.age


def freshness(route: Route, headers: Mapping[str, str], ttl: int) -> Freshness:
    """The route's TTL (or the client's `X-Cache-TTL`) and stale windows; with
    `respect_cache_control`, also the upstream's `s-maxage`/`max-age` (never beyond the TTL),
    `must-revalidate` (never stale) and `Age` (already that old)."""
    lifetime, age, stale_for = ttl, 0, route.grace
    if route.respect_cache_control:
        directives = parse_cache_control(headers.get("cache-control", ""))
        for name in ("s-maxage", "max-age"):
            seconds = _non_negative_int(directives.get(name))
            if seconds is not None:
                lifetime = min(lifetime, seconds)
                break
        if "must-revalidate" in directives or "proxy-revalidate" in directives:
            stale_for = 0
        age = _non_negative_int(headers.get("age", "").strip()) or 0
    return Freshness(lifetime, age, stale_for)


def request_uses_cache(route: Route, method: str) -> bool:
    """Whether the cache takes part at all (a route may be forward-only; PUT/PATCH/DELETE never cache)."""
    return route.cache and method in CACHEABLE_METHODS


def head_refusal(route: Route, status: int, headers: Mapping[str, str]) -> str | None:
    """Why a response may not be stored, judged from its status and headers; None if it may."""
    if status not in route.statuses:
        return f"status {status}"
    if "set-cookie" in headers:
        return "set-cookie"
    cache_control = headers.get("cache-control")
    if cache_control:
        directives = parse_cache_control(cache_control)
        for directive in ("no-store", "private", "no-cache"):
            if directive in directives:
                return directive
    return None


def body_refusal(route: Route, size: int) -> str | None:
    if size > route.max_body_bytes:
        return f"body over {route.max_body_bytes} bytes"
    return None


def complete_body_refusal(route: Route, headers: Mapping[str, str], body: bytes) -> str | None:
    """Why a complete body may not be stored; None if it may."""
    refusal = body_refusal(route, len(body))
    if refusal is not None:
        return refusal
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "text/event-stream" and not sse_complete(body):
        return "stream did not end with data: [DONE]"
    if route.openai_checks:
        return openai_answer_refusal(route, media_type, body)
    return None


def openai_answer_refusal(route: Route, media_type: str, body: bytes) -> str | None:
    """Answers an AI route must not store though they came with a 200: an error body, no
    choices or no data, an unfinished Responses API answer, or a refused finish reason."""
    if media_type == "text/event-stream":
        documents = [json_or_none(data) for data in sse_data(body) if data != b"[DONE]"]
        if any(document is None for document in documents):
            return "stream event is not JSON"
        return _stream_refusal(route, documents)
    if media_type == "application/json" or media_type.endswith("+json"):
        document = json_or_none(body)
        if not isinstance(document, dict):
            return "answer is not a JSON object"
        return _document_refusal(route, document)
    return None


def _document_refusal(route: Route, document: dict[str, Any]) -> str | None:
    if document.get("error"):
        return "error body"
    if "choices" in document:
        choices = document["choices"]
        if not isinstance(choices, list) or not choices:
            return "empty choices"
        for choice in choices:
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if reason in route.refuse_finish_reasons:
                return f"finish_reason {reason}"
    if "data" in document and document.get("object") in ("list", None) and not document["data"]:
        return "empty data"
    status = document.get("status")
    if document.get("object") == "response" and status not in (None, "completed"):
        return f"response status {status}"
    return None


def _stream_refusal(route: Route, events: list[Any]) -> str | None:
    saw_choice = False
    for event in events:
        if not isinstance(event, dict):
            return "stream event is not a JSON object"
        if event.get("error") or event.get("type") in ("error", "response.failed", "response.incomplete"):
            return "error in stream"
        choices = event.get("choices")
        if isinstance(choices, list) and choices:
            saw_choice = True
            for choice in choices:
                reason = choice.get("finish_reason") if isinstance(choice, dict) else None
                if reason in route.refuse_finish_reasons:
                    return f"finish_reason {reason}"
        if str(event.get("type", "")).startswith("response."):
            saw_choice = True  # Responses API events carry no choices
    return None if saw_choice else "empty choices"


def sse_complete(body: bytes) -> bool:
    """An OpenAI-style event stream is whole only when its last event is `data: [DONE]`."""
    return body.rstrip().endswith(b"data: [DONE]")


def _non_negative_int(raw: str | None) -> int | None:
    if raw is None or not raw.isdigit():
        return None
    return int(raw)
