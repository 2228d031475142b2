"""Embedding batches answered input by input: known inputs from the cache, the rest in one call.

A batch request (`"input": [a, b, c]`) is split into one cache key per input: the key of the
same request with that single input, so a batch and a one-input request share entries. Each
entry is a complete one-input answer. The inputs not in the cache go upstream in one request
with the same model and options; its answer is split into per-input entries and the whole
answer is reassembled in input order, with each item's `index` its place in the request.

Usage: the upstream reports tokens for its whole call, not per input. Token-array inputs count
exactly (one token per element); text inputs share the call's tokens in proportion to their
length, rounded so the shares add up to the reported total. A reassembled answer reports the
sum of its inputs' shares, so it says what the whole batch costs, wherever each part came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from proxy.bodies import json_or_none

EMBEDDINGS = "embeddings"


@dataclass(frozen=True, slots=True)
class Batch:
    """A parsed batch request: the payload without `input`, and the inputs in order."""

    payload: dict[str, Any]
    inputs: list[Any]

    def single_body(self, item: Any) -> bytes:
        """The body of the one-input request whose key and entry this input shares."""
        return orjson.dumps({**self.payload, "input": item})

    def subset_body(self, indices: list[int]) -> bytes:
        return orjson.dumps({**self.payload, "input": [self.inputs[index] for index in indices]})


def parse_batch(body: bytes) -> Batch | None:
    """A batch when the body is a JSON object whose `input` lists two or more inputs."""
    payload = json_or_none(body)
    if not isinstance(payload, dict):
        return None
    inputs = payload.get("input")
    if not isinstance(inputs, list) or len(inputs) < 2:
        return None
    if all(isinstance(item, int) for item in inputs):
        return None  # one input given as an array of tokens, not a batch
    if not all(isinstance(item, str) or _is_token_list(item) for item in inputs):
        return None
    return Batch({name: value for name, value in payload.items() if name != "input"}, inputs)


def split_answer(answer: Any, batch: Batch, indices: list[int]) -> dict[int, tuple[bytes, int]] | None:
    """Per-input one-input answers (body, tokens) from the upstream's answer for `indices`.

    None when the answer is not the list of embeddings it should be (then nothing is split or stored).
    """
    if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
        return None
    data = answer["data"]
    if len(data) != len(indices) or not all(isinstance(item, dict) and "embedding" in item for item in data):
        return None
    by_position = sorted(data, key=lambda item: item.get("index", 0))
    usage = answer.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    tokens = _shares(int(usage.get("prompt_tokens", 0) or 0), [batch.inputs[index] for index in indices])
    model = answer.get("model")
    parts: dict[int, tuple[bytes, int]] = {}
    for position, index in enumerate(indices):
        item = {**by_position[position], "index": 0}
        single = {
            "object": "list",
            "data": [item],
            "model": model,
            "usage": {"prompt_tokens": tokens[position], "total_tokens": tokens[position]},
        }
        parts[index] = (orjson.dumps(single), tokens[position])
    return parts


def item_of(single_answer: bytes) -> tuple[dict[str, Any], str | None, int] | None:
    """(embedding item, model, tokens) of a stored one-input answer."""
    document = json_or_none(single_answer)
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
        return None
    usage = document.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return data[0], document.get("model"), int(usage.get("prompt_tokens", 0) or 0)


def assemble(items: list[dict[str, Any]], model: str | None, tokens: int) -> bytes:
    data = [{**item, "index": index} for index, item in enumerate(items)]
    return orjson.dumps(
        {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    )


def _is_token_list(item: Any) -> bool:
    return isinstance(item, list) and bool(item) and all(isinstance(token, int) for token in item)


def _shares(total: int, inputs: list[Any]) -> list[int]:
    """Split `total` tokens over inputs: exact for token arrays, by length for text."""
    exact = [len(item) if isinstance(item, list) else None for item in inputs]
    remaining = max(0, total - sum(count for count in exact if count is not None))
    weights = [len(item) if isinstance(item, str) else 0 for item in inputs]
    weight_sum = sum(weights)
    if not weight_sum:
        return [count or 0 for count in exact]
    raw = [remaining * weight / weight_sum for weight in weights]
    shares = [int(value) for value in raw]
    # Largest remainders get the tokens lost to rounding, so the shares add up to the total.
    for index in sorted(range(len(raw)), key=lambda i: raw[i] - shares[i], reverse=True)[: remaining - sum(shares)]:
        shares[index] += 1
    return [count if count is not None else share for count, share in zip(exact, shares, strict=True)]
