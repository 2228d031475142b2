"""Token usage of AI answers, read once when an answer is stored and replayed on every hit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.bodies import json_or_none, sse_data

MAX_SSE_SCAN_EVENTS = 8


@dataclass(frozen=True, slots=True)
class Usage:
    """What one upstream answer cost: its model and tokens in and out."""

    model: str
    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_list(self) -> list[Any]:
        return [self.model, self.input_tokens, self.output_tokens]

    @classmethod
    def from_list(cls, raw: object) -> Usage | None:
        if isinstance(raw, list) and len(raw) == 3:
            model, tokens_in, tokens_out = raw
            if isinstance(model, str) and isinstance(tokens_in, int) and isinstance(tokens_out, int):
                return cls(model, tokens_in, tokens_out)
        return None


def usage_of(content_type: str | None, body: bytes) -> Usage | None:
    """The `usage` of an OpenAI-style JSON answer or event stream; None when there is none."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        return _from_document(json_or_none(body))
    if media_type == "text/event-stream":
        # The usage chunk is one of the last events, just before `data: [DONE]`.
        for data in reversed(sse_data(body, last=MAX_SSE_SCAN_EVENTS)):
            if b'"usage"' in data:
                usage = _from_document(json_or_none(data))
                if usage is not None:
                    return usage
    return None


def _from_document(document: Any) -> Usage | None:
    if not isinstance(document, Mapping):
        return None
    usage = document.get("usage")
    if not isinstance(usage, Mapping):
        response = document.get("response")  # Responses API stream events nest it
        usage = response.get("usage") if isinstance(response, Mapping) else None
        if not isinstance(usage, Mapping):
            return None
        document = response
    tokens_in = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    tokens_out = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(tokens_in, int) or not isinstance(tokens_out, int):
        return None
    model = document.get("model")
    return Usage(model if isinstance(model, str) else "unknown", tokens_in, tokens_out)
