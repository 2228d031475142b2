"""Pure cache rules: what the client asked, what may be stored."""

import pytest
from multidict import CIMultiDict

from proxy.policy import (
    complete_body_refusal,
    head_refusal,
    parse_cache_control,
    request_directives,
    request_uses_cache,
)
from proxy.routes import Route

ROUTE = Route(
    name="ai_content", methods=frozenset({"POST"}), paths=("/x",), upstream="openai", ttl=60, max_body_bytes=1000
)


def test_request_directives() -> None:
    directives = request_directives(CIMultiDict({"Cache-Control": "no-cache, max-age=30, only-if-cached"}))
    assert directives.no_cache
    assert directives.max_age == 30
    assert directives.only_if_cached
    assert not directives.no_store
    assert request_directives(CIMultiDict({"Pragma": "no-cache"})).no_cache
    assert request_directives(CIMultiDict({"Cache-Control": "max-age=abc"})).max_age is None


def test_parse_cache_control() -> None:
    assert parse_cache_control('private, max-age="60", No-Store') == {
        "private": None,
        "max-age": "60",
        "no-store": None,
    }


def test_only_safe_methods_and_cache_enabled_routes_use_the_cache() -> None:
    assert request_uses_cache(ROUTE, "POST")
    assert not request_uses_cache(ROUTE, "DELETE")
    assert not request_uses_cache(
        Route(name="r", methods=frozenset({"GET"}), paths=("/",), upstream="o", ttl=1, cache=False), "GET"
    )


@pytest.mark.parametrize(
    ("status", "headers", "refused"),
    [
        (200, {}, None),
        (500, {}, "status 500"),
        (429, {}, "status 429"),
        (206, {}, "status 206"),
        (200, {"Set-Cookie": "a=b"}, "set-cookie"),
        (200, {"Cache-Control": "no-store"}, "no-store"),
        (200, {"Cache-Control": "private, max-age=60"}, "private"),
        (200, {"Cache-Control": "public, max-age=60"}, None),
    ],
)
def test_head_refusal(status: int, headers: dict[str, str], refused: str | None) -> None:
    assert head_refusal(ROUTE, status, CIMultiDict(headers)) == refused


def test_bodies_over_the_route_limit_and_incomplete_streams_are_refused() -> None:
    assert complete_body_refusal(ROUTE, CIMultiDict(), b"x" * 1001) is not None
    assert complete_body_refusal(ROUTE, CIMultiDict(), b"x" * 1000) is None
    sse = CIMultiDict({"Content-Type": "text/event-stream"})
    assert complete_body_refusal(ROUTE, sse, b'data: {"a": 1}\n\n') == "stream did not end with data: [DONE]"
    assert complete_body_refusal(ROUTE, sse, b'data: {"a": 1}\n\ndata: [DONE]\n\n') is None
