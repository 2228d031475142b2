"""Splitting embedding batches into per-input answers and putting them back together."""

import orjson

from proxy.embeddings import _shares, assemble, item_of, parse_batch, split_answer


def test_only_lists_of_two_or_more_inputs_are_batches() -> None:
    assert parse_batch(b'{"model": "m", "input": "one"}') is None
    assert parse_batch(b'{"model": "m", "input": ["one"]}') is None
    assert parse_batch(b'{"model": "m", "input": [1, 2, 3]}') is None  # one input, as tokens
    assert parse_batch(b'{"model": "m", "input": ["a", {"x": 1}]}') is None
    assert parse_batch(b"not json") is None
    batch = parse_batch(b'{"model": "m", "dimensions": 8, "input": ["a", [1, 2]]}')
    assert batch is not None
    assert batch.payload == {"model": "m", "dimensions": 8}
    assert orjson.loads(batch.single_body("a")) == {"model": "m", "dimensions": 8, "input": "a"}
    assert orjson.loads(batch.subset_body([1])) == {"model": "m", "dimensions": 8, "input": [[1, 2]]}


def test_token_shares_add_up_and_token_arrays_count_exactly() -> None:
    assert _shares(10, ["aaaa", "a"]) == [8, 2]
    assert sum(_shares(7, ["ab", "cd", "ef"])) == 7
    assert _shares(12, [[1, 2, 3], "abc", "abc"]) == [3, 5, 4] or _shares(12, [[1, 2, 3], "abc", "abc"]) == [3, 4, 5]


def test_split_then_assemble_round_trip() -> None:
    batch = parse_batch(b'{"model": "m", "input": ["x", "yy", "zzz"]}')
    assert batch is not None
    answer = {
        "object": "list",
        "model": "m",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [0.3]},
            {"object": "embedding", "index": 0, "embedding": [0.1]},
        ],
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }
    parts = split_answer(answer, batch, [0, 2])
    assert parts is not None
    first = item_of(parts[0][0])
    third = item_of(parts[2][0])
    assert first is not None
    assert third is not None
    assert first[0]["embedding"] == [0.1]  # upstream index 0 is the request's input 0
    assert third[0]["embedding"] == [0.3]
    assert parts[0][1] + parts[2][1] == 5
    whole = orjson.loads(
        assemble([first[0], {"object": "embedding", "index": 0, "embedding": [0.2]}, third[0]], "m", 7)
    )
    assert [item["index"] for item in whole["data"]] == [0, 1, 2]
    assert [item["embedding"] for item in whole["data"]] == [[0.1], [0.2], [0.3]]
    assert whole["usage"] == {"prompt_tokens": 7, "total_tokens": 7}


def test_a_malformed_answer_is_not_split() -> None:
    batch = parse_batch(b'{"model": "m", "input": ["x", "y"]}')
    assert batch is not None
    assert split_answer({"data": [{"embedding": [1]}]}, batch, [0, 1]) is None
    assert split_answer({"error": "x"}, batch, [0, 1]) is None
