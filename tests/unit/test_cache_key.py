"""Keys: the seed's readable namespaces, canonical digests, credentials kept apart."""

import json
from typing import Any

import pytest

from proxy import cache_key
from proxy.cache_key import build_key, canonical_body, key_credential, key_input, normalize_name
from proxy.routes import RouteTable, load_route_table
from tests.conftest import REPO

TABLE: RouteTable = load_route_table(
    REPO / "config" / "routes.toml", upstreams=("openai", "artwork", "image"), default_ttl=3600
)


def key_for(
    method: str,
    raw_path: str,
    *,
    query: str = "",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    prefix: str = "",
) -> str:
    match = TABLE.match(method, raw_path)
    assert match is not None
    upstream_path = match.route.upstream_path_for(raw_path, match.params)
    request = key_input(
        route=match.route,
        method=method,
        upstream_path=upstream_path,
        query_string=query,
        body=body,
        headers=headers or {},
        credential=key_credential(headers or {}),
    )
    return build_key(match.route, match.template, match.params, request, prefix=prefix)


def chat(payload: dict[str, Any], **kwargs: Any) -> str:
    return key_for(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(payload).encode(),
        headers={"content-type": "application/json", **kwargs.pop("headers", {})},
        **kwargs,
    )


def test_readable_keys_look_like_the_seed() -> None:
    assert key_for("GET", "/artworks/Mona%20Lisa") == "artwork_info:mona-lisa"
    assert key_for("GET", "/artworks/Mona%20Lisa/image") == "artwork_image:mona-lisa"
    assert key_for("GET", "/artworks/Mona%20Lisa/similar") == "similar_artworks:mona-lisa"


@pytest.mark.parametrize(
    "spelling", ["Mona Lisa", "mona_lisa", "  MONA-LISA ", "Mona   Lisa.", "mona-lisa", "ＭＯＮＡ ＬＩＳＡ"]
)
def test_spelling_variants_share_an_entry(spelling: str) -> None:
    assert normalize_name(spelling) == "mona-lisa"


def test_accents_and_apostrophes() -> None:
    assert normalize_name("Van Gogh's Café Terrace") == "van-goghs-café-terrace"
    assert normalize_name("Café") != normalize_name("Cafe")


def test_glob_characters_never_reach_a_readable_key() -> None:
    assert normalize_name("a*b?[c]\\d:e") == "a-b-c-d-e"
    assert normalize_name("***").startswith("~")


def test_query_strings_are_part_of_readable_keys_in_sorted_order() -> None:
    assert key_for("GET", "/artworks/Mona%20Lisa", query="lang=tr&size=2") == "artwork_info:mona-lisa?lang=tr&size=2"
    assert key_for("GET", "/artworks/Mona%20Lisa", query="size=2&lang=tr") == "artwork_info:mona-lisa?lang=tr&size=2"


def test_a_client_credential_separates_readable_keys() -> None:
    plain = key_for("GET", "/artworks/x")
    alice = key_for("GET", "/artworks/x", headers={"authorization": "Bearer alice"})
    bob = key_for("GET", "/artworks/x", headers={"authorization": "Bearer bob"})
    assert len({plain, alice, bob}) == 3
    assert alice.startswith("artwork_info:x#")
    assert "alice" not in alice


def test_ai_keys_name_the_endpoint() -> None:
    key = chat({"model": "m", "messages": []})
    namespace, content_type, digest = key.split(":")
    assert (namespace, content_type) == ("ai_content", "chat.completions")
    assert len(digest) == 64
    embeddings = key_for("POST", "/v1/embeddings", body=b'{"input": "x"}')
    assert embeddings.startswith("ai_content:embeddings:")
    images = key_for("POST", "/v1/images/generations", body=b'{"prompt": "x"}')
    assert images.startswith("ai_content:images.generations:")


def test_key_order_and_whitespace_do_not_matter() -> None:
    a = key_for("POST", "/v1/chat/completions", body=b'{"model":"m","messages":[{"role":"user","content":"hi"}]}')
    b = key_for(
        "POST", "/v1/chat/completions", body=b'{ "messages" : [ {"content":"hi", "role":"user"} ],\n "model":"m" }'
    )
    assert a == b


def test_remembered_digests_are_the_canonical_ones_and_stay_bounded() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"remembered"}]}'
    cache_key._digest_memo.clear()
    first = key_for("POST", "/v1/chat/completions", body=body)
    again = key_for("POST", "/v1/chat/completions", body=body)  # from the memo
    cache_key._digest_memo.clear()
    reordered = key_for(
        "POST", "/v1/chat/completions", body=b'{"messages":[{"content":"remembered","role":"user"}],"model":"m"}'
    )
    assert first == again == reordered
    for index in range(cache_key.DIGEST_MEMO_LIMIT + 10):
        key_for("POST", "/v1/chat/completions", body=b'{"model":"m","n":%d}' % index)
    assert len(cache_key._digest_memo) <= cache_key.DIGEST_MEMO_LIMIT


@pytest.mark.parametrize("field", ["temperature", "seed", "tools", "user", "n", "stream", "response_format"])
def test_every_field_counts(field: str) -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat(base) != chat({**base, field: 1})


def test_two_api_keys_never_share_entries_and_the_key_is_not_in_the_digest_input() -> None:
    body = {"model": "m", "messages": []}
    alice = chat(body, headers={"authorization": "Bearer sk-alice"})
    bob = chat(body, headers={"authorization": "Bearer sk-bob"})
    anonymous = chat(body)
    assert len({alice, bob, anonymous}) == 3
    assert chat(body, headers={"authorization": "Bearer sk-alice"}) == alice


def test_varying_headers_count_and_others_do_not() -> None:
    body = {"model": "m", "messages": []}
    assert chat(body, headers={"openai-project": "p1"}) != chat(body, headers={"openai-project": "p2"})
    assert chat(body, headers={"user-agent": "a", "x-stainless-os": "Linux"}) == chat(body, headers={"user-agent": "b"})


def test_query_counts_for_ai_routes() -> None:
    assert key_for("GET", "/v1/models") != key_for("GET", "/v1/models", query="a=1")


def test_malformed_json_hashes_as_raw_bytes() -> None:
    a = key_for("POST", "/v1/chat/completions", body=b'{"model": ', headers={"content-type": "application/json"})
    b = key_for("POST", "/v1/chat/completions", body=b'{"model":', headers={"content-type": "application/json"})
    assert a != b
    assert canonical_body(b'{"model": ', "application/json") == b'R{"model": '


def test_big_integers_and_non_json_bodies() -> None:
    # Two integers that a float cannot tell apart must not share an entry.
    big = b'{"seed": 123456789012345678901234567890}'
    bigger = b'{"seed": 123456789012345678901234567891}'
    assert canonical_body(big, "application/json") != canonical_body(bigger, "application/json")
    assert canonical_body(b'{"t": NaN}', "application/json") == b'j{"t":NaN}'
    assert canonical_body(b"\x00\xff", "application/octet-stream") == b"R\x00\xff"
    # JSON bytes sent as text/plain still canonicalise, raw bytes stay apart from JSON.
    assert canonical_body(b"[1, 2]", "text/plain") == b"J[1,2]"


def test_head_shares_the_get_entry() -> None:
    assert key_for("HEAD", "/artworks/x") == key_for("GET", "/artworks/x")


def test_prefix() -> None:
    assert key_for("GET", "/artworks/x", prefix="staging:") == "staging:artwork_info:x"


def test_the_remembered_digest_never_mixes_a_varying_header_with_the_body() -> None:
    with_header = cache_key.KeyInput("POST", "/p", "", b"B", "application/json", (("x", "y"),), None)
    in_the_body = cache_key.KeyInput("POST", "/p", "", b"1:x1:yB", "application/json", (), None)
    assert cache_key.request_digest(with_header) != cache_key.request_digest(in_the_body)
