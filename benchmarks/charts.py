"""PNG charts of a results dictionary (matplotlib, the `bench` extra); skipped without matplotlib."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.report import SERVER_ORDER
from benchmarks.targets import HIT_P99_MS


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_all(results: dict[str, Any], directory: Path) -> list[str]:
    """Draw every chart the results allow; return the file names written."""
    try:
        plt = _pyplot()
    except ImportError:
        return []
    written: list[str] = []
    for name, draw, part in (
        ("hits_throughput.png", _hits, "hits"),
        ("hits_latency.png", _hits_latency, "hits"),
        ("miss_latency.png", _miss, "miss"),
        ("streaming.png", _stream, "stream"),
        ("coalescing.png", _coalesce, "coalesce"),
        ("key_scaling.png", _keys, "keys"),
    ):
        if not results.get(part):
            continue
        figure = draw(plt, results[part])
        figure.savefig(directory / name, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(name)
    return written


def _series(hits: dict[str, Any], payload: str, stat: str) -> list[tuple[str, list[int], list[float]]]:
    found = []
    for server in SERVER_ORDER:
        points = hits["data"].get(payload, {}).get(server)
        if not points:
            continue
        xs = [c for c in hits["connections"] if str(c) in points]
        if stat == "rps":
            ys = [points[str(c)]["rps"] for c in xs]
        else:
            ys = [points[str(c)]["latency_us"][stat] / 1000 for c in xs]
        found.append((hits["servers"][server], xs, ys))
    return found


def _hits(plt: Any, hits: dict[str, Any]) -> Any:
    return _hit_panels(plt, hits, "rps", ylabel="requests/s", title="Hits: {}")


def _hits_latency(plt: Any, hits: dict[str, Any]) -> Any:
    title = f"Hit p99: {{}} (dashed: {HIT_P99_MS:g} ms target)"
    return _hit_panels(plt, hits, "p99", ylabel="p99 latency (ms)", title=title, target_ms=HIT_P99_MS)


def _hit_panels(
    plt: Any, hits: dict[str, Any], stat: str, *, ylabel: str, title: str, target_ms: float | None = None
) -> Any:
    """One panel per payload, one line per server, against connections (log scale); latency
    panels get a log y axis and the target as a dashed line."""
    figure, axes = plt.subplots(1, len(hits["payloads"]), figsize=(12, 4.5), squeeze=False)
    for axis, (payload, label) in zip(axes[0], hits["payloads"].items(), strict=True):
        for name, xs, ys in _series(hits, payload, stat):
            axis.plot(xs, ys, marker="o", label=name)
        axis.set_xscale("log")
        if target_ms is not None:
            axis.set_yscale("log")
            axis.axhline(target_ms, color="grey", linestyle="--", linewidth=1)
        axis.set_xlabel("connections")
        axis.set_ylabel(ylabel)
        axis.set_title(title.format(label))
        axis.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return figure


def _grouped_bars(plt: Any, groups: list[str], series: dict[str, list[float]], ylabel: str, title: str) -> Any:
    figure, axis = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(series))
    for index, (name, values) in enumerate(series.items()):
        axis.bar([g + index * width for g in range(len(groups))], values, width, label=name)
    axis.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(fontsize=8)
    axis.grid(True, axis="y", alpha=0.3)
    return figure


def _miss(plt: Any, miss: dict[str, Any]) -> Any:
    groups = [
        f"{label}, {c} conn. {stat}" for label in miss["data"] for c in miss["connections"] for stat in ("p50", "p99")
    ]
    names = list(next(iter(miss["data"].values())))
    series = {
        name: [
            miss["data"][label].get(name, {}).get(str(c), {}).get("latency_us", {}).get(stat, 0) / 1000
            for label in miss["data"]
            for c in miss["connections"]
            for stat in ("p50", "p99")
        ]
        for name in names
    }
    figure = _grouped_bars(plt, groups, series, "latency (ms)", "Misses: upstream latency, connections, percentile")
    plt.setp(figure.axes[0].get_xticklabels(), rotation=30, ha="right")
    return figure


def _stream(plt: Any, stream: dict[str, Any]) -> Any:
    groups = ["TTFB p50", "TTFB p99", "TTLB p50", "TTLB p99"]
    series = {
        name: [s["ttfb_ms"]["p50"], s["ttfb_ms"]["p99"], s["ttlb_ms"]["p50"], s["ttlb_ms"]["p99"]]
        for name, s in stream["data"].items()
    }
    return _grouped_bars(plt, groups, series, "ms", "Streamed chat completions")


def _coalesce(plt: Any, coalesce: dict[str, Any]) -> Any:
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for name, rounds in coalesce["data"].items():
        worst = max(rounds, key=lambda r: r["spread_ms"])
        axis.plot(range(1, len(worst["done_ms"]) + 1), worst["done_ms"], marker=".", label=f"{name} (worst round)")
    axis.set_xlabel("answer (in order of completion)")
    axis.set_ylabel("answered after the burst (ms)")
    axis.set_title(
        f"{coalesce['requests']} identical concurrent misses, upstream {coalesce['upstream_latency_ms']:g} ms"
    )
    axis.legend(fontsize=8)
    axis.grid(True, alpha=0.3)
    return figure


def _keys(plt: Any, keys: dict[str, Any]) -> Any:
    figure, axis = plt.subplots(figsize=(8, 4.5))
    counts = [c for c in keys["counts"] if str(c) in keys["data"]]
    for server, label in (("proxy", "proxy"), ("redis-pipelined", "Redis limit (pipelined)")):
        axis.plot(counts, [keys["data"][str(c)][server]["rps"] for c in counts], marker="o", label=label)
    axis.set_xscale("log")
    axis.set_ylim(bottom=0)
    axis.set_xlabel("entries stored")
    axis.set_ylabel("requests/s")
    axis.set_title(f"Hit throughput vs keys stored ({keys['connections']} connections)")
    axis.legend(fontsize=8)
    axis.grid(True, alpha=0.3)
    return figure
