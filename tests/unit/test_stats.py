"""Statistics: counting, percentiles from merged buckets, money from the price table."""

import pytest

from proxy.errors import ConfigError
from proxy.prices import Price, PriceTable, parse_price_table
from proxy.stats import Stats, report
from proxy.usage import Usage, usage_of

PRICES = PriceTable({"gpt-4o-mini": Price(0.15, 0.60), "gpt-4o": Price(2.50, 10.00)})


def test_counts_hit_rate_and_calls_saved() -> None:
    stats = Stats(PRICES)
    for outcome in ("HIT", "HIT", "HIT", "MISS", "COALESCED", "STALE", "BYPASS", "REFRESH"):
        stats.record("ai_content", outcome, 0.001)
    totals = report(stats.fields, ["ai_content"])["totals"]
    assert totals["requests"] == 8
    assert totals["hits"] == 3
    assert totals["upstream_calls_saved"] == 5  # hits, stale and coalesced followers
    assert totals["hit_rate"] == round(4 / 7, 4)  # bypass is not a lookup


def test_percentiles_are_read_off_the_buckets() -> None:
    stats = Stats(PRICES)
    for _ in range(98):
        stats.record("artwork_info", "HIT", 0.001)
    stats.record("artwork_info", "HIT", 0.2)
    stats.record("artwork_info", "HIT", 0.2)
    latency = report(stats.fields, ["artwork_info"])["namespaces"]["artwork_info"]["latency_ms"]["hit"]
    assert 1.0 <= latency["p50"] <= 1.25  # within one 25 % bucket
    assert 1.0 <= latency["p95"] <= 1.25
    assert 200 <= latency["p99"] <= 250
    assert latency["count"] == 100


def test_merging_two_replicas_adds_their_fields() -> None:
    first, second = Stats(PRICES), Stats(PRICES)
    first.record("ai_content", "HIT", 0.001)
    second.record("ai_content", "HIT", 0.1)
    merged = dict(first.fields)
    for name, value in second.fields.items():
        merged[name] = merged.get(name, 0) + value
    totals = report(merged, ["ai_content"])["totals"]
    assert totals["hits"] == 2
    assert totals["latency_ms"]["hit"]["p99"] >= 100


def test_tokens_and_money_saved_by_hits() -> None:
    stats = Stats(PRICES)
    usage = Usage("gpt-4o-mini-2024-07-18", 1_000_000, 1_000_000)
    stats.record("ai_content", "HIT", 0.001, usage=usage)
    stats.record("ai_content", "MISS", 0.5)  # a miss saves nothing, so it brings no usage
    totals = report(stats.fields, ["ai_content"])["totals"]
    assert totals["tokens_saved"] == {"input": 1_000_000, "output": 1_000_000, "total": 2_000_000}
    assert totals["money_saved_usd"] == pytest.approx(0.75)
    assert totals["saved_by_model"]["gpt-4o-mini-2024-07-18"]["money_usd"] == pytest.approx(0.75)


def test_flush_bookkeeping_never_loses_or_repeats_a_count() -> None:
    stats = Stats(PRICES)
    stats.record("ai_content", "HIT", 0.001)
    first = stats.pending()
    stats.record("ai_content", "HIT", 0.001)  # arrives while the flush is on its way
    stats.acknowledge(first)
    second = stats.pending()
    assert second["ai_content|n|hit"] == 1
    stats.acknowledge(second)
    assert stats.pending() == {}


def test_price_lookup_by_longest_prefix() -> None:
    assert PRICES.price_of("gpt-4o-mini-2024-07-18") == Price(0.15, 0.60)
    assert PRICES.price_of("gpt-4o-2024-08-06") == Price(2.50, 10.00)
    assert PRICES.price_of("claude-3") is None
    assert PRICES.cost(Usage("unknown-model", 100, 100)) == 0.0


def test_bad_price_tables_are_refused() -> None:
    with pytest.raises(ConfigError, match="non-negative"):
        parse_price_table({"models": {"m": {"input": -1}}}, source="prices.toml")
    with pytest.raises(ConfigError, match="must be a table"):
        parse_price_table({"models": {"m": 3}}, source="prices.toml")


def test_usage_of_json_and_streams() -> None:
    body = b'{"model": "gpt-4o", "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}'
    assert usage_of("application/json", body) == Usage("gpt-4o", 5, 7)
    stream = (
        b'data: {"model": "gpt-4o", "choices": [{"delta": {"content": "a"}}]}\n\n'
        b'data: {"model": "gpt-4o", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert usage_of("text/event-stream", stream) == Usage("gpt-4o", 3, 1)
    responses_api = b'{"model": "gpt-4.1", "usage": {"input_tokens": 2, "output_tokens": 4}}'
    assert usage_of("application/json; charset=utf-8", responses_api) == Usage("gpt-4.1", 2, 4)
    assert usage_of("application/json", b"not json") is None
    assert usage_of("image/png", b"\x89PNG") is None
