"""The route table: the shipped default, matching, and errors that name the bad field."""

from pathlib import Path
from typing import Any

import pytest

from proxy.errors import ClientRequestError, RouteFileError
from proxy.routes import RouteTable, load_route_table, parse_duration, parse_route_table
from tests.conftest import REPO

UPSTREAMS = ("openai", "artwork", "image")


def shipped() -> RouteTable:
    return load_route_table(REPO / "config" / "routes.toml", upstreams=UPSTREAMS, default_ttl=3600)


def parse(routes: list[dict[str, Any]], **top: Any) -> RouteTable:
    return parse_route_table({"route": routes, **top}, source="test.toml", upstreams=UPSTREAMS, default_ttl=3600)


def test_shipped_table_mirrors_the_seed() -> None:
    table = shipped()
    ttl = {route.name: route.ttl for route in table.routes}
    assert ttl["artwork_info"] == 7200
    assert ttl["artwork_image"] == 3600
    assert ttl["similar_artworks"] == 3600
    assert ttl["ai_content"] == 7200
    ai = next(route for route in table.routes if route.name == "ai_content")
    for path in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/images/generations",
        "/v1/responses",
        "/v1/moderations",
    ):
        assert path in ai.paths
    assert table.match("GET", "/v1/models") is not None


def test_matching_named_parameters_and_upstream_path() -> None:
    match = shipped().match("GET", "/artworks/Mona%20Lisa/similar")
    assert match is not None
    assert match.route.name == "similar_artworks"
    assert match.params == {"artwork_name": "Mona Lisa"}
    assert (
        match.route.upstream_path_for("/artworks/Mona%20Lisa/similar", match.params) == "/artworks/Mona%20Lisa/similar"
    )


def test_parameters_are_encoded_again_so_they_cannot_escape_the_upstream_path() -> None:
    match = shipped().match("GET", "/artworks/..%2F..%2Fadmin")
    assert match is not None
    assert match.params["artwork_name"] == "../../admin"
    assert match.route.upstream_path_for("", match.params) == "/artworks/..%2F..%2Fadmin"


def test_dot_segment_parameters_are_refused() -> None:
    with pytest.raises(ClientRequestError):
        shipped().match("GET", "/artworks/%2E%2E")


def test_invalid_percent_encoding_is_a_400() -> None:
    with pytest.raises(ClientRequestError) as caught:
        shipped().match("GET", "/artworks/%FF%FE")
    assert caught.value.status == 400


def test_unknown_path_matches_nothing() -> None:
    assert shipped().match("GET", "/v1/files") is None
    assert shipped().match("GET", "/artworks/a/b/c") is None


def test_wrong_method_is_a_405_with_allow() -> None:
    with pytest.raises(ClientRequestError) as caught:
        shipped().match("DELETE", "/v1/chat/completions")
    assert caught.value.status == 405
    assert caught.value.headers["Allow"] == "POST"


def test_strip_prefix() -> None:
    match = shipped().match("POST", "/v1/chat/completions")
    assert match is not None
    assert match.route.upstream_path_for("/v1/chat/completions", {}) == "/chat/completions"


@pytest.mark.parametrize(
    ("route", "field", "fragment"),
    [
        ({"path": "/a", "upstream": "openai"}, "name", "lower-case"),
        ({"name": "Bad-Name", "path": "/a", "upstream": "openai"}, "name", "lower-case"),
        ({"name": "a", "path": "/a", "upstream": "nowhere"}, "upstream", "not a configured upstream"),
        ({"name": "a", "path": "/a", "upstream": "openai", "ttl": -5}, "ttl", "positive"),
        ({"name": "a", "path": "/a", "upstream": "openai", "ttl": "soon"}, "ttl", "duration"),
        ({"name": "a", "path": "/a", "upstream": "openai", "statuses": [206]}, "statuses", "partial"),
        ({"name": "a", "path": "/a", "upstream": "openai", "methods": ["FETCH"]}, "methods", "unknown method"),
        ({"name": "a", "path": "/a/{x}", "upstream": "openai", "key": "{y}"}, "key", "does not capture"),
        ({"name": "a", "path": "/redis/x", "upstream": "openai"}, "path", "reserved"),
        ({"name": "a", "path": "/a/x{y}", "upstream": "openai"}, "path", "whole path segment"),
        ({"name": "a", "path": "/a", "upstream": "openai", "colour": "red"}, "colour", "unknown option"),
        (
            {"name": "a", "path": "/a", "upstream": "openai", "vary_headers": ["Authorization"]},
            "vary_headers",
            "credentials",
        ),
    ],
)
def test_bad_routes_name_the_field(route: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(RouteFileError) as caught:
        parse([route])
    assert caught.value.where.endswith(f".{field}")
    assert fragment in caught.value.reason


def test_duplicate_names_and_paths_are_refused() -> None:
    with pytest.raises(RouteFileError, match="used by another route"):
        parse([{"name": "a", "path": "/a", "upstream": "openai"}, {"name": "a", "path": "/b", "upstream": "openai"}])
    with pytest.raises(RouteFileError, match="already routed"):
        parse(
            [
                {"name": "a", "path": "/x/{p}", "upstream": "openai"},
                {"name": "b", "path": "/x/{q}", "upstream": "openai"},
            ]
        )


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(RouteFileError, match="does not exist"):
        load_route_table(tmp_path / "nope.toml", upstreams=UPSTREAMS, default_ttl=60)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[route]\nname=")
    with pytest.raises(RouteFileError, match="not valid TOML"):
        load_route_table(broken, upstreams=UPSTREAMS, default_ttl=60)


def test_defaults_table_applies_to_every_route() -> None:
    table = parse([{"name": "a", "path": "/a", "upstream": "openai"}], defaults={"ttl": "30m"})
    assert table.routes[0].ttl == 1800


def test_get_routes_answer_head_too() -> None:
    assert shipped().match("HEAD", "/artworks/x") is not None


@pytest.mark.parametrize(("raw", "seconds"), [(7200, 7200), ("2h", 7200), ("30m", 1800), ("500ms", 0.5), ("1d", 86400)])
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds
