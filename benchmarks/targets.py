"""The performance targets of issue 7, judged from a results dictionary."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import Any

MIB = 2**20
HIT_VS_REDIS_LIMIT = 0.8
FIRST_TIER_VS_CEILING = 0.9
HIT_P99_MS = 5.0
MISS_OVERHEAD_MS = 1.0
COALESCE_CALLS = 1
COALESCE_SPREAD_MS = 20.0
RSS_LIMIT_BYTES = 60 * MIB
KEY_SCALING_FLATNESS = 0.10


@dataclass(frozen=True)
class Verdict:
    """One target: what it asks, what was measured and whether it holds."""

    target: str
    threshold: str
    measured: str
    result: str  # PASS, FAIL, n/a, not run, info


def _rps(hits: dict[str, Any], payload: str, server: str, connections: int) -> float | None:
    point = hits.get("data", {}).get(payload, {}).get(server, {}).get(str(connections))
    return None if point is None else float(point["rps"])


def paired_ratio(runs: dict[str, list[float]], server: str, reference: str) -> float | None:
    """The median over rounds of a server's throughput over the reference's, each pair loaded
    one right after the other (the host's drift between rounds cancels out)."""
    pairs = list(zip(runs.get(server, []), runs.get(reference, []), strict=False))
    return median(value / base for value, base in pairs) if pairs and all(base for _, base in pairs) else None


def _hit_ratio(hits: dict[str, Any], server: str, reference: str, connections: int) -> tuple[float, str] | None:
    """A ratio target's figure and how it was measured: from the interleaved rounds when the run
    has them (results of older runs do not), else from the table's two points."""
    interleaved = hits.get("interleaved") or {}
    if interleaved.get("connections") == connections:
        ratio = paired_ratio(interleaved["runs"], server, reference)
        if ratio is not None:
            found, base = interleaved["median"][server], interleaved["median"][reference]
            return ratio, (
                f"medians {found:,.0f} vs {base:,.0f} req/s; 1 KB chat, {connections} connections; "
                f"loaded in turn, median of {interleaved['rounds']} rounds' ratios"
            )
    value, base = _rps(hits, "chat", server, connections), _rps(hits, "chat", reference, connections)
    if not value or not base:
        return None
    return value / base, f"{value:,.0f} vs {base:,.0f} req/s; 1 KB chat, {connections} connections"


def short_count(value: int) -> str:
    """1000 -> 1e3, 1000000 -> 1e6; other numbers with thousands separators."""
    text = str(value)
    if value >= 1000 and text.strip("0") == "1":
        return f"1e{len(text) - 1}"
    return f"{value:,}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _chat_peak_text(results: dict[str, Any]) -> str:
    """The RSS peak without the 60 KB image runs, for comparison (1000 answers of 60 KB in flight)."""
    peaks = [
        point["extra"]["peak_rss"]
        for name, series in (results.get("hits") or {}).get("data", {}).get("chat", {}).items()
        if name.startswith("proxy") and name != "proxy-workers"
        for point in series.values()
    ]
    peaks += [step["proxy"]["extra"]["peak_rss"] for step in (results.get("keys") or {}).get("data", {}).values()]
    if results.get("memory"):
        peaks.append(results["memory"]["peak_rss"])
    return f"; {max(peaks) / MIB:.1f} MiB without the 60 KB image runs" if peaks else ""


def evaluate(results: dict[str, Any]) -> list[Verdict]:
    """Every target, in the issue's order."""
    conns = int(results.get("config", {}).get("target_connections", 50))
    hits = results.get("hits")
    verdicts: list[Verdict] = []

    if hits:
        found = _hit_ratio(hits, "proxy", "redis-pipelined", conns)
        if found is not None:
            ratio, how = found
            verdicts.append(
                Verdict(
                    "Hits served from Redis vs the pipelined Redis limit",
                    f">= {HIT_VS_REDIS_LIMIT:.1f}x",
                    f"{ratio:.2f}x ({how})",
                    _verdict(ratio >= HIT_VS_REDIS_LIMIT),
                )
            )
    else:
        verdicts.append(Verdict("Hits served from Redis vs the pipelined Redis limit", ">= 0.8x", "", "not run"))
    tier = _hit_ratio(hits, "proxy-tier1", "ceiling", conns) if hits else None
    if tier is not None:
        verdicts.append(
            Verdict(
                "Hits served from the in-process first tier vs the aiohttp ceiling",
                f">= {FIRST_TIER_VS_CEILING:.1f}x",
                f"{tier[0]:.2f}x ({tier[1]})",
                _verdict(tier[0] >= FIRST_TIER_VS_CEILING),
            )
        )
    else:
        reason = (hits or {}).get("skipped", {}).get("proxy-tier1", "not run")
        verdicts.append(
            Verdict(
                "Hits served from the in-process first tier vs the aiohttp ceiling",
                f">= {FIRST_TIER_VS_CEILING:.1f}x",
                reason,
                "n/a" if reason.startswith("n/a") else "not run",
            )
        )
    if hits:
        for server, kind in (("proxy", "Redis hits"), ("proxy-tier1", "first-tier hits, defaults")):
            point = hits.get("data", {}).get("chat", {}).get(server, {}).get(str(conns))
            if point is not None:
                p99 = point["latency_us"]["p99"] / 1000
                verdicts.append(
                    Verdict(
                        f"Hit p99 at {conns} connections ({kind})",
                        f"<= {HIT_P99_MS:g} ms",
                        f"{p99:.2f} ms",
                        _verdict(p99 <= HIT_P99_MS),
                    )
                )
    else:
        verdicts.append(Verdict(f"Hit p99 at {conns} connections", f"<= {HIT_P99_MS:g} ms", "", "not run"))

    miss = results.get("miss") or {}
    judged = miss.get("latencies", [""])[0]
    overheads = miss.get("overhead_ms", {}).get(judged, {}).get("proxy", {})
    if overheads:
        worst_conns, worst = max(overheads.items(), key=lambda item: item[1]["p50"])
        verdicts.append(
            Verdict(
                "Miss overhead, median",
                f"<= {MISS_OVERHEAD_MS:g} ms",
                f"{worst['p50']:.2f} ms (upstream {judged}; worst of {', '.join(overheads)} connections, "
                f"at {worst_conns}); "
                f"p99 {worst['p99']:.2f} ms",
                _verdict(worst["p50"] <= MISS_OVERHEAD_MS),
            )
        )
    else:
        verdicts.append(Verdict("Miss overhead, median", f"<= {MISS_OVERHEAD_MS:g} ms", "", "not run"))

    rounds = (results.get("coalesce") or {}).get("data", {}).get("proxy")
    requests = (results.get("coalesce") or {}).get("requests", 100)
    if rounds:
        calls = max(r["upstream_calls"] for r in rounds)
        spread = max(r["spread_ms"] for r in rounds)
        verdicts.append(
            Verdict(
                f"Coalescing: upstream calls for {requests} identical concurrent misses",
                f"exactly {COALESCE_CALLS}",
                f"{', '.join(str(r['upstream_calls']) for r in rounds)} (per round)",
                _verdict(all(r["upstream_calls"] == COALESCE_CALLS for r in rounds)),
            )
        )
        verdicts.append(
            Verdict(
                "Coalescing: last follower answered after the leader",
                f"<= {COALESCE_SPREAD_MS:g} ms",
                f"{spread:.1f} ms (worst round)",
                _verdict(spread <= COALESCE_SPREAD_MS and calls == COALESCE_CALLS),
            )
        )
    else:
        verdicts.append(Verdict("Coalescing", "1 call, followers within 20 ms", "", "not run"))

    peak = results.get("proxy_rss_peak")
    if peak:
        verdicts.append(
            Verdict(
                "Proxy RSS under load (one worker; any scenario, any key count)",
                f"<= {RSS_LIMIT_BYTES / MIB:g} MiB",
                f"{peak / MIB:.1f} MiB peak" + _chat_peak_text(results),
                _verdict(peak <= RSS_LIMIT_BYTES),
            )
        )
    else:
        verdicts.append(Verdict("Proxy RSS under load", f"<= {RSS_LIMIT_BYTES / MIB:g} MiB", "", "not run"))

    keys = results.get("keys")
    if keys and keys.get("data"):
        counts = [str(count) for count in keys["counts"] if str(count) in keys["data"]]
        steps = [keys["data"][count] for count in counts]
        judged = [step["proxy"]["rps"] for step in steps]
        shown = " / ".join(f"{value:,.0f}" for value in judged) + " req/s"
        ratios = [paired_ratio(step.get("side_by_side", {}).get("runs", {}), "proxy", "ceiling") for step in steps]
        if all(ratio is not None for ratio in ratios):  # older results have no ceiling beside the proxy
            judged = [ratio for ratio in ratios if ratio is not None]
            shown = (
                " / ".join(f"{value:.2f}" for value in judged)
                + "x the aiohttp ceiling loaded in turn beside it (median of the rounds' ratios)"
            )
        first = judged[0]
        worst_change = max(abs(value - first) / first for value in judged)
        verdicts.append(
            Verdict(
                f"Hit throughput flat from {short_count(int(counts[0]))} to {short_count(int(counts[-1]))} entries",
                f"within {KEY_SCALING_FLATNESS:.0%}",
                f"{shown} (worst change {worst_change:.1%})",
                _verdict(worst_change <= KEY_SCALING_FLATNESS),
            )
        )
    else:
        verdicts.append(Verdict("Hit throughput flat across key counts", "within 10%", "", "not run"))

    if hits:
        with_log = _rps(hits, "chat", "proxy", conns)
        without = _rps(hits, "chat", "proxy-nolog", conns)
        if with_log and without:
            verdicts.append(
                Verdict(
                    "Access logging off (report only)",
                    "-",
                    f"{without:,.0f} vs {with_log:,.0f} req/s with it ({without / with_log:.2f}x)",
                    "info",
                )
            )
    return verdicts
