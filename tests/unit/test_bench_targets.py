"""How the benchmark judges its ratio targets (benchmarks/targets.py): from servers loaded in turn,
so that the host's drift between minutes does not decide a verdict."""

from __future__ import annotations

from typing import Any

from benchmarks.targets import evaluate, paired_ratio


def point(rps: float) -> dict[str, Any]:
    return {"rps": rps, "latency_us": {"p50": 1000, "p99": 3000}, "errors": {}, "extra": {}}


def hits(table: dict[str, float], interleaved: dict[str, list[float]] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "data": {"chat": {name: {"50": point(rps)} for name, rps in table.items()}},
        "skipped": {},
    }
    if interleaved is not None:
        found["interleaved"] = {
            "connections": 50,
            "rounds": len(next(iter(interleaved.values()))),
            "runs": interleaved,
            "median": {name: sorted(values)[len(values) // 2] for name, values in interleaved.items()},
        }
    return found


def verdict(results: dict[str, Any], starting: str) -> tuple[str, str]:
    found = next(v for v in evaluate(results) if v.target.startswith(starting))
    return found.result, found.measured


def test_pairs_are_compared_round_by_round() -> None:
    # The host slowed down in round two: both servers did, and each round's ratio is the same.
    runs = {"proxy": [20_000.0, 10_000.0, 19_000.0], "redis-pipelined": [20_000.0, 10_000.0, 19_000.0]}
    assert paired_ratio(runs, "proxy", "redis-pipelined") == 1.0
    assert paired_ratio(runs, "proxy", "ceiling") is None


def test_the_redis_hit_target_is_judged_on_the_rounds_loaded_in_turn() -> None:
    # Measured minutes apart, the table's points say 0.5x; side by side the proxy keeps pace.
    results = {
        "hits": hits(
            {"proxy": 10_000, "redis-pipelined": 20_000},
            {"proxy": [18_000.0, 9_000.0, 17_000.0], "redis-pipelined": [20_000.0, 10_000.0, 19_000.0]},
        )
    }
    result, measured = verdict(results, "Hits served from Redis")
    assert result == "PASS"
    assert measured.startswith("0.90x")
    assert "loaded in turn, median of 3 rounds' ratios" in measured


def test_results_without_rounds_are_judged_on_the_table() -> None:
    results = {"hits": hits({"proxy": 10_000, "redis-pipelined": 20_000, "proxy-tier1": 19_000, "ceiling": 20_000})}
    assert verdict(results, "Hits served from Redis") == (
        "FAIL",
        "0.50x (10,000 vs 20,000 req/s; 1 KB chat, 50 connections)",
    )
    assert verdict(results, "Hits served from the in-process first tier")[0] == "PASS"


def test_key_scaling_is_judged_against_the_ceiling_beside_the_proxy() -> None:
    def step(proxy: float, side_by_side: dict[str, list[float]] | None) -> dict[str, Any]:
        found: dict[str, Any] = {"proxy": point(proxy), "entries": 1}
        if side_by_side is not None:
            found["side_by_side"] = {"runs": side_by_side}
        return found

    drifting = {
        "counts": [1000, 1_000_000],
        "data": {
            # The host was 30 % faster during the second step: the proxy and the ceiling alike.
            "1000": step(10_000, {"proxy": [10_000.0] * 3, "ceiling": [12_000.0] * 3}),
            "1000000": step(13_000, {"proxy": [13_000.0] * 3, "ceiling": [15_600.0] * 3}),
        },
    }
    result, measured = verdict({"keys": drifting}, "Hit throughput flat")
    assert result == "PASS"
    assert "0.83 / 0.83x the aiohttp ceiling" in measured

    for value in drifting["data"].values():
        del value["side_by_side"]
    assert verdict({"keys": drifting}, "Hit throughput flat")[0] == "FAIL"  # 30 % apart on raw figures
