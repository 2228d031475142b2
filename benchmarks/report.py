"""Markdown from a results dictionary: `results.md` (everything) and `summary.md` (for the README)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks.targets import MIB, evaluate, paired_ratio, short_count

SERVER_ORDER = (
    "proxy",
    "proxy-nolog",
    "proxy-tier1",
    "proxy-workers",
    "ceiling",
    "redis-pipelined",
    "redis-naive",
    "nginx",
)
BASE_LABELS = {"ceiling": "ceiling", "redis-pipelined": "Redis limit", "redis-naive": "naive", "nginx": "nginx"}
# The ratio columns: each proxy variant against the baselines that say most about it.
RATIOS = (
    ("proxy", "proxy", ("ceiling", "redis-pipelined", "redis-naive", "nginx")),
    ("proxy-nolog", "no log", ("ceiling", "redis-pipelined")),
    ("proxy-tier1", "first tier", ("ceiling", "nginx")),
    ("proxy-workers", "N workers", ("redis-pipelined",)),
)
CHARTS = (
    ("hits_throughput.png", "Hit throughput"),
    ("hits_latency.png", "Hit p99 latency"),
    ("miss_latency.png", "Miss latency, direct and through the proxy"),
    ("streaming.png", "Streaming"),
    ("coalescing.png", "Coalescing"),
    ("key_scaling.png", "Key-count scaling"),
)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


FOREIGN_CPU_FLAG = 0.1  # CPUs used by other programs during a run that make its figures suspect


def _flags(point: dict[str, Any]) -> str:
    flags = " (!)" if sum(point["errors"].values()) else ""
    if point.get("extra", {}).get("foreign_cpu", 0.0) > FOREIGN_CPU_FLAG:
        flags += " †"
    return flags


def _rps(point: dict[str, Any] | None) -> str:
    if point is None:
        return "-"
    return f"{point['rps']:,.0f}{_flags(point)}"


def _lat(point: dict[str, Any] | None) -> str:
    if point is None:
        return "-"
    lat = point["latency_us"]
    return f"{lat['p50'] / 1000:.2f} / {lat['p99'] / 1000:.2f}{_flags(point)}"


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if a is None or b is None or not b["rps"]:
        return "-"
    return f"{a['rps'] / b['rps']:.2f}"


def header_section(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    config = results.get("config", {})
    lines = [
        f"- Date: {meta.get('date', '?')}; mode: {'quick' if config.get('quick_mode') else 'default'}"
        f" ({config.get('duration', '?')} s per wrk run, median of {config.get('repeat', 1)})",
        f"- Machine: {meta.get('cpus', '?')} CPUs ({meta.get('cpu_model', '?')}), {meta.get('kernel', '?')}; "
        f"servers pinned to CPU {config.get('server_cpus')}, wrk, the fake upstream and the probes to CPU "
        f"{config.get('load_cpus')}; Redis {meta.get('redis_version', '?')}, unpinned",
        f"- Software: Python {meta.get('python', '?')}, {meta.get('packages', '')}; {meta.get('wrk', 'wrk')}; "
        f"{meta.get('nginx') or 'nginx not run'}",
        f"- Proxy under test: {meta.get('proxy_source', '?')} ({meta.get('proxy_features', 'features not read')}); "
        "default settings but `PROXY_LOG_FORMAT=json` with stdout to /dev/null, one worker unless stated, "
        "the first tier off (`PROXY_TIER1_MAX_BYTES=0`) where hits are to come from Redis; Redis database "
        f"{config.get('redis_db')} under the prefix `{config.get('key_prefix')}`",
        f"- Machine busy before the run: {meta.get('busy_before', 0):.0%} of all CPU time "
        f"(load average {meta.get('loadavg', '?')}); before each scenario: "
        + (", ".join(f"{name} {share:.0%}" for name, share in meta.get("busy_by_scenario", {}).items()) or "-"),
    ]
    origins = results.get("origins", {})
    if len(set(origins.values())) > 1:
        lines.append(
            "- Scenarios merged from runs of the same proxy (`--merge`), measured at: "
            + ", ".join(f"{name} {when}" for name, when in origins.items())
        )
    lines += [f"- Note: {note}" for note in results.get("notes", [])]
    return "\n".join(lines)


def targets_section(results: dict[str, Any]) -> str:
    return table(
        ("target", "threshold", "measured", "result"),
        ((v.target, v.threshold, v.measured, f"**{v.result}**") for v in evaluate(results)),
    )


def hits_section(hits: dict[str, Any], *, compact: bool = False) -> str:
    servers = [name for name in SERVER_ORDER if name in hits["servers"]]
    labels = hits["servers"]
    parts: list[str] = []
    for payload, label in hits["payloads"].items():
        data = hits["data"].get(payload, {})
        if compact and payload != "chat":
            continue
        parts.append(f"**{label}**: throughput (req/s)\n")
        header = ["connections", *(labels[name] for name in servers)]
        rows = []
        for connections in hits["connections"]:
            row = [str(connections)]
            for name in servers:
                if name in hits["skipped"]:
                    row.append(hits["skipped"][name])
                else:
                    row.append(_rps(data.get(name, {}).get(str(connections))))
            rows.append(row)
        parts.append(table(header, rows))
        parts.append(f"\n**{label}**: latency p50 / p99 (ms)\n")
        rows = []
        for connections in hits["connections"]:
            row = [str(connections)]
            for name in servers:
                row.append("-" if name in hits["skipped"] else _lat(data.get(name, {}).get(str(connections))))
            rows.append(row)
        parts.append(table(header, rows))
        parts.append(f"\n**{label}**: the proxy as a ratio of each baseline (throughput)\n")
        ratio_header = ["connections"]
        columns: list[tuple[str, str]] = []
        for proxy_name, proxy_label, bases in RATIOS:
            for base in bases:
                if proxy_name in data and base in data:
                    ratio_header.append(f"{proxy_label} ÷ {BASE_LABELS[base]}")
                    columns.append((proxy_name, base))
        rows = []
        for connections in hits["connections"]:
            key = str(connections)
            rows.append([key, *(_ratio(data[p].get(key), data[b].get(key)) for p, b in columns)])
        parts.append(table(ratio_header, rows))
        parts.append("")
    interleaved = hits.get("interleaved")
    if interleaved and interleaved.get("runs"):
        parts.append(
            f"**Loaded in turn** (what the throughput targets are judged on): 1 KB chat at "
            f"{interleaved['connections']} connections, {interleaved['rounds']} rounds, req/s per round\n"
        )
        parts.append(
            table(
                ("server", "runs", "median"),
                [
                    [
                        labels.get(name, name),
                        " / ".join(f"{value:,.0f}" for value in values),
                        f"{interleaved['median'][name]:,.0f}",
                    ]
                    for name, values in interleaved["runs"].items()
                ],
            )
        )
        parts.append("")
    if not compact:
        parts.append(
            "(!) marks a run with errors; † a run during which other programs on the machine used more than "
            f"{FOREIGN_CPU_FLAG:g} CPU (its figure is suspect). Server CPU share, peak RSS, foreign CPU and "
            "error counts of every run are in `results.json`."
        )
    return "\n".join(parts)


def _proxy_used(part: dict[str, Any]) -> str:
    return f" Proxy: {part['proxy_settings']}." if part.get("proxy_settings") else ""


def miss_section(miss: dict[str, Any]) -> str:
    parts = [
        "Distinct chat completions (every one a miss); overhead = the server's latency percentile minus "
        f"the direct one (ms), at each upstream latency.{_proxy_used(miss)}\n"
    ]
    names = [name for name in ("proxy", "nginx") if name in next(iter(miss["data"].values()), {})]
    header = ["upstream latency", "connections", "direct p50 / p99"]
    for name in names:
        header += [f"{name} p50 / p99", f"{name} overhead p50 / p99"]
    rows = []
    for label, data in miss["data"].items():
        for connections in miss["connections"]:
            key = str(connections)
            row = [label, key, _lat(data["direct"].get(key))]
            for name in names:
                overhead = miss["overhead_ms"][label].get(name, {}).get(key)
                row += [
                    _lat(data[name].get(key)),
                    "-" if overhead is None else f"{overhead['p50']:+.2f} / {overhead['p99']:+.2f}",
                ]
            rows.append(row)
    parts.append(table(header, rows))
    return "\n".join(parts)


def stream_section(stream: dict[str, Any]) -> str:
    labels = {"direct": "direct to the upstream", "proxy_miss": "proxy, miss", "proxy_hit": "proxy, hit (replay)"}
    rows = []
    for name, summary in stream["data"].items():
        rows.append(
            [
                labels.get(name, name),
                f"{summary['ttfb_ms']['p50']:.2f} / {summary['ttfb_ms']['p99']:.2f}",
                f"{summary['ttlb_ms']['p50']:.2f} / {summary['ttlb_ms']['p99']:.2f}",
                f"{summary['complete']}/{summary['requests']}",
                ", ".join(f"{k} {v}" for k, v in summary["x_cache"].items()),
            ]
        )
    intro = (
        f'`"stream": true` chat completions of {stream["events"]} events, one at a time, upstream latency '
        f"{stream['upstream_latency_ms']:g} ms.{_proxy_used(stream)}\n\n"
    )
    return intro + table(
        (
            "path",
            "time to first byte p50 / p99 (ms)",
            "time to last byte p50 / p99 (ms)",
            "ended with [DONE]",
            "X-Cache",
        ),
        rows,
    )


def coalesce_section(coalesce: dict[str, Any]) -> str:
    rows = []
    for name, rounds in coalesce["data"].items():
        for number, one in enumerate(rounds):
            rows.append(
                [
                    name,
                    str(number + 1),
                    str(one["upstream_calls"]),
                    f"{one['leader_ms']:.1f}",
                    f"{one['last_ms']:.1f}",
                    f"{one['spread_ms']:.1f}",
                    ", ".join(f"{k} {v}" for k, v in one["x_cache"].items()),
                ]
            )
    intro = (
        f"{coalesce['requests']} identical requests written at once on open connections, upstream latency "
        f"{coalesce['upstream_latency_ms']:g} ms.{_proxy_used(coalesce)}\n\n"
    )
    return intro + table(
        ("server", "round", "upstream calls", "first answer (ms)", "last answer (ms)", "spread (ms)", "X-Cache"), rows
    )


def _paired(runs: dict[str, list[float]], server: str, reference: str) -> str:
    ratio = paired_ratio(runs, server, reference)
    return "-" if ratio is None else f"{ratio:.2f}x"


def keys_section(keys: dict[str, Any]) -> str:
    rows = []
    first: float | None = None
    for count in keys["counts"]:
        step = keys["data"].get(str(count))
        if step is None:
            continue
        proxy = step["proxy"]
        first = first or proxy["rps"]
        rows.append(
            [
                f"{short_count(count)} ({step['entries']:,})",
                _rps(proxy),
                _lat(proxy),
                _rps(step.get("redis-pipelined")),
                _ratio(proxy, step.get("redis-pipelined")),
                f"{(proxy['rps'] - first) / first:+.1%}",
                _paired(step.get("side_by_side", {}).get("runs", {}), "proxy", "ceiling"),
                f"{step['bytes_per_entry']:,.0f}" if "bytes_per_entry" in step else "-",
            ]
        )
    intro = f"Chat hits on one fixed request at {keys['connections']} connections; proxy: Redis hits.\n\n"
    return intro + table(
        (
            "entries stored",
            "proxy req/s",
            "proxy p50 / p99 (ms)",
            "Redis limit req/s",
            "proxy ÷ limit",
            "change vs first",
            "proxy ÷ ceiling, loaded in turn (judged)",
            "Redis bytes per entry (fill)",
        ),
        rows,
    )


def memory_section(results: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    hits = results.get("hits")
    if hits:
        big = max(hits["connections"])
        for name in ("proxy", "proxy-tier1", "proxy-workers"):
            idle = hits.get("idle_rss", {}).get(name)
            if idle:
                rows.append([f"RSS idle (fresh start): {hits['servers'][name]}", f"{idle / MIB:.1f} MiB"])
            for payload in hits["payloads"]:
                point = hits["data"].get(payload, {}).get(name, {}).get(str(big))
                if point:
                    rows.append(
                        [
                            f"RSS peak, {payload} hits at {big} connections: {hits['servers'][name]}",
                            f"{point['extra']['peak_rss'] / MIB:.1f} MiB",
                        ]
                    )
    memory = results.get("memory")
    if memory:
        rows.append(
            [
                f"proxy RSS after {memory['misses']:,} distinct misses ({memory['connections']} connections; "
                f"{memory.get('proxy_settings', 'proxy')})",
                f"{memory['rss_after'] / MIB:.1f} MiB (peak {memory['peak_rss'] / MIB:.1f} MiB; "
                f"{memory['miss_rps']:,.0f} misses/s)",
            ]
        )
    peak = results.get("proxy_rss_peak")
    if peak:
        rows.append(["proxy RSS peak, any scenario (one worker)", f"{peak / MIB:.1f} MiB"])
    keys = results.get("keys")
    if keys and "entry" in keys:
        entry = keys["entry"]
        largest = max(
            (step for step in keys["data"].values() if "bytes_per_entry" in step),
            key=lambda s: s["filled"],
            default=None,
        )
        if largest:
            rows.append(
                [
                    "Redis bytes per stored 1 KB chat entry (used_memory delta)",
                    f"{largest['bytes_per_entry']:,.0f} B (over {largest['filled']:,} entries)",
                ]
            )
        rows.append(
            [
                "Redis MEMORY USAGE of one entry / its encoded value / the answer's body",
                f"{entry['memory_usage']:,} B / {entry['value_bytes']:,} B / {entry.get('answer_bytes', '?')} B",
            ]
        )
    if not rows:
        return "not run"
    text = table(("measure", "value"), rows)
    if memory and memory["miss_target"] < 1_000_000:
        text += (
            f"\n\nThe issue asks for the RSS after 1e6 distinct misses; this run drove {memory['misses']:,} "
            "(`--misses 1e6` for the full count)."
        )
    return text


def full_report(results: dict[str, Any]) -> str:
    """The whole `results.md`."""
    parts = ["# Benchmark results", "", header_section(results), "", "## Targets", "", targets_section(results), ""]
    sections = (
        ("hits", "1. Hit throughput and latency", hits_section),
        ("miss", "2. Miss overhead", miss_section),
        ("stream", "3. Streaming", stream_section),
        ("coalesce", "4. Coalescing", coalesce_section),
        ("keys", "5. Key-count scaling", keys_section),
    )
    for name, title, render in sections:
        parts += [f"## {title}", ""]
        if name in results.get("errors", {}):
            parts.append(f"Failed: `{results['errors'][name]}`")
        elif results.get(name):
            parts.append(render(results[name]))  # type: ignore[operator]
        else:
            parts.append("not run")
        parts.append("")
    parts += ["## 6. Memory", "", memory_section(results), ""]
    if results.get("profile"):
        parts += ["## Profile (py-spy, chat hits)", "", profile_section(results["profile"]), ""]
    charts = [f"![{title}]({name})" for name, title in CHARTS if name in results.get("charts", [])]
    if charts:
        parts += ["## Charts", "", *charts, ""]
    return "\n".join(parts)


def profile_section(profile: dict[str, Any], top: int = 12) -> str:
    if "skipped" in profile:
        return str(profile["skipped"])
    parts = []
    for name, summary in profile.items():
        parts.append(
            f"**{name}** ({summary['samples']} samples, {summary['rps_while_profiled']:,.0f} req/s while sampled)\n"
        )
        rows = []
        for index in range(top):
            own = summary["own"][index] if index < len(summary["own"]) else ("", 0)
            total = summary["total"][index] if index < len(summary["total"]) else ("", 0)
            rows.append([f"{own[1]:.1%} `{own[0]}`", f"{total[1]:.1%} `{total[0]}`"])
        parts.append(table(("own time", "total time (with callees)"), rows))
        packages = ", ".join(f"{name} {share:.0%}" for name, share in summary.get("packages", [])[:10])
        parts.append(f"\nOwn time by package: {packages}\n")
    return "\n".join(parts)


def summary_report(results: dict[str, Any]) -> str:
    """The short version for the README: setting, targets, and the chat hit table."""
    parts = [header_section(results), "", targets_section(results), ""]
    if results.get("hits"):
        parts += [hits_section(results["hits"], compact=True), ""]
    return "\n".join(parts)
