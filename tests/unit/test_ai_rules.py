"""What an AI route may store, and signed image URLs that cap an entry's life."""

import json
from datetime import UTC, datetime

import pytest
from multidict import CIMultiDict

from proxy.bodies import sse_data
from proxy.image_urls import SAFETY_MARGIN, answer_ttl, url_expiry
from proxy.policy import complete_body_refusal
from proxy.routes import Route

AI = Route(
    name="ai_content", methods=frozenset({"POST"}), paths=("/x",), upstream="openai", ttl=7200, openai_checks=True
)
JSON = CIMultiDict({"Content-Type": "application/json"})
SSE = CIMultiDict({"Content-Type": "text/event-stream"})


def completion(**choice: object) -> bytes:
    return json.dumps(
        {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": "x"}, **choice}]}
    ).encode()


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        (completion(finish_reason="stop"), None),
        (completion(finish_reason="tool_calls"), None),
        (completion(finish_reason="length"), "finish_reason length"),
        (completion(finish_reason="content_filter"), "finish_reason content_filter"),
        (b'{"object": "chat.completion", "choices": []}', "empty choices"),
        (b'{"error": {"message": "overloaded"}}', "error body"),
        (b'{"object": "list", "data": []}', "empty data"),
        (b'{"object": "response", "status": "incomplete"}', "response status incomplete"),
        (b'{"object": "response", "status": "completed"}', None),
        (b"[1, 2]", "answer is not a JSON object"),
    ],
)
def test_json_answers(body: bytes, refusal: str | None) -> None:
    assert complete_body_refusal(AI, JSON, body) == refusal


def stream(*events: dict[str, object]) -> bytes:
    return b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events) + b"data: [DONE]\n\n"


def test_stream_answers() -> None:
    delta = {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}
    assert complete_body_refusal(AI, SSE, stream(delta, {"choices": [{"delta": {}, "finish_reason": "stop"}]})) is None
    assert (
        complete_body_refusal(AI, SSE, stream(delta, {"choices": [{"finish_reason": "length"}]}))
        == "finish_reason length"
    )
    assert complete_body_refusal(AI, SSE, stream({"choices": []})) == "empty choices"
    assert complete_body_refusal(AI, SSE, stream(delta, {"error": {"message": "x"}})) == "error in stream"
    assert complete_body_refusal(AI, SSE, stream({"type": "response.completed", "response": {}})) is None
    assert complete_body_refusal(AI, SSE, stream({"type": "response.incomplete"})) == "error in stream"


def test_the_refused_finish_reasons_are_configurable() -> None:
    lenient = Route(
        name="a",
        methods=frozenset({"POST"}),
        paths=("/x",),
        upstream="openai",
        ttl=60,
        openai_checks=True,
        refuse_finish_reasons=frozenset({"content_filter"}),
    )
    assert complete_body_refusal(lenient, JSON, completion(finish_reason="length")) is None


def test_routes_without_openai_checks_store_any_200() -> None:
    plain = Route(name="a", methods=frozenset({"GET"}), paths=("/x",), upstream="artwork", ttl=60)
    assert complete_body_refusal(plain, JSON, b'{"error": "not mine to judge"}') is None


def test_sse_data_joins_multi_line_events() -> None:
    assert sse_data(b"data: a\ndata: b\n\nevent: x\ndata: c\r\n\r\n") == [b"a\nb", b"c"]


def test_signed_url_expiries() -> None:
    azure = "https://oaidalleapiprodscus.blob.core.windows.net/x/img.png?st=2026-11-26T02%3A00%3A00Z&se=2026-11-26T04%3A00%3A00Z&sp=r&sig=x"
    assert url_expiry(azure) == datetime(2026, 11, 26, 4, 0, tzinfo=UTC).timestamp()
    s3 = "https://b.s3.amazonaws.com/i.png?X-Amz-Date=20261126T030000Z&X-Amz-Expires=3600&X-Amz-Signature=x"
    assert url_expiry(s3) == datetime(2026, 11, 26, 4, 0, tzinfo=UTC).timestamp()
    gcs = "https://storage.googleapis.com/b/i.png?X-Goog-Date=20261126T030000Z&X-Goog-Expires=600"
    assert url_expiry(gcs) == datetime(2026, 11, 26, 3, 10, tzinfo=UTC).timestamp()
    assert url_expiry("https://cdn.example/i.png?Expires=1795665600&Signature=x") == 1795665600
    assert url_expiry("https://cdn.example/i.png") is None


def test_an_image_generation_lives_no_longer_than_its_links() -> None:
    now = datetime(2026, 11, 26, 3, 0, tzinfo=UTC).timestamp()
    body = json.dumps(
        {
            "data": [
                {"url": "https://x/a.png?se=2026-11-26T04%3A00%3A00Z"},
                {"url": "https://x/b.png?se=2026-11-26T03%3A30%3A00Z"},
            ]
        }
    ).encode()
    assert answer_ttl(AI, JSON, body, 7200, now) == 1800 - SAFETY_MARGIN
    assert answer_ttl(AI, JSON, body, 600, now) == 600
    assert answer_ttl(AI, JSON, b'{"data": [{"b64_json": "AAAA"}]}', 7200, now) == 7200
    expired = json.dumps({"data": [{"url": "https://x/a.png?se=2026-11-26T03%3A00%3A30Z"}]}).encode()
    assert answer_ttl(AI, JSON, expired, 7200, now) <= 0
