"""The Grafana dashboard (`config/grafana-dashboard.json`) queries only series the proxy exports.

Every PromQL expression is taken apart: its metric names must be sample names of a running
app's `/metrics` (parsed with prometheus_client's own parser), the labels it selects or groups
by must be labels of those series, and literal label values (`cache=~"HIT|STALE"`) must be
values the proxy really exports.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, ProxyClientFactory, chat_body

DASHBOARD = REPO / "config" / "grafana-dashboard.json"
# Functions and aggregations of PromQL the dashboard may use; anything else that looks like a
# name is taken for a metric and must be exported.
PROMQL_FUNCTIONS = frozenset(
    {
        "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "group",
        "rate", "irate", "increase", "delta", "histogram_quantile", "clamp_min", "clamp_max",
        "abs", "round", "vector", "scalar", "time", "label_replace", "max_over_time", "min_over_time",
        "avg_over_time", "sum_over_time", "absent", "changes", "resets",
    }
)  # fmt: skip
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
    r"""|(?P<range>\[[^\]]*\])"""
    r"""|(?P<selector>\{[^}]*\})"""
    r"""|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)"""
    r"""|(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"""
    r"""|(?P<other>\S)"""
)
MATCHER = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?""")


@dataclass
class Query:
    metrics: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # name -> matchers
    grouping: set[str] = field(default_factory=set)


def parse_promql(expr: str) -> Query:
    """Metric names with their label matchers, and the labels of by/without/on clauses."""
    query = Query()
    # Grafana's variables stand in range brackets (`[$__rate_interval]`, skipped whole) and in
    # label values (`"$route"`, not checked); anywhere else they would fail as unknown names.
    tokens = [(match.lastgroup, match.group()) for match in TOKEN.finditer(expr)]
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else (None, "")
        if kind == "name" and text in GROUPING:
            if following[1] != "(":  # group_left without a label list
                index += 1
                continue
            end = next(position for position in range(index + 1, len(tokens)) if tokens[position][1] == ")")
            query.grouping |= {label for label_kind, label in tokens[index + 2 : end] if label_kind == "name"}
            index = end + 1
            continue
        if kind == "name" and text not in PROMQL_FUNCTIONS and text not in KEYWORDS:
            assert following[1] != "(", f"unknown function {text}() in {expr!r}"
            matchers: list[tuple[str, str, str]] = []
            if following[0] == "selector":
                body = following[1][1:-1]
                matchers = MATCHER.findall(body)
                assert "".join(m.group() for m in MATCHER.finditer(body)).strip() == body.strip(), body
                index += 1
            query.metrics.setdefault(text, []).extend(matchers)
        index += 1
    return query


def test_the_parser_takes_promql_apart() -> None:
    query = parse_promql(
        'sum by (route) (rate(artstory_proxy_requests_total{route=~"$route", cache=~"HIT|STALE"}[$__rate_interval]))'
        " / on(route) group_left count(up == 1)"
    )
    assert query.metrics == {
        "artstory_proxy_requests_total": [("route", "=~", "$route"), ("cache", "=~", "HIT|STALE")],
        "up": [],
    }
    assert query.grouping == {"route"}


def dashboard_expressions(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found: list[tuple[str, str]] = []
    for panel in document["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            raw = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)", raw.strip())
            assert match, f"variable {variable['name']}: only label_values(metric, label) queries are checked"
            found.append((f"variable {variable['name']}", f"sum by ({match.group(2)}) ({match.group(1)})"))
    return found


@pytest.fixture
async def exported(make_proxy: ProxyClientFactory) -> dict[str, dict[str, set[str]]]:
    """Sample name -> label name -> values, from the `/metrics` of an app that served traffic."""
    proxy = await make_proxy()
    for _ in range(2):
        await (await proxy.post("/v1/chat/completions", json=chat_body())).read()
        await (await proxy.get("/artworks/Mona%20Lisa")).read()
    response = await proxy.get("/metrics")
    assert response.status == 200
    samples: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            labels = samples[sample.name]
            for name, value in sample.labels.items():
                labels[name].add(value)
    return samples


def test_the_dashboard_is_importable_json() -> None:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert document["uid"] == "artstory-proxy-cache"
    assert document["title"]
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"]: variable for variable in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in document["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for key in ("x", "y", "w", "h"):
            assert key in panel["gridPos"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


async def test_every_series_the_dashboard_queries_is_exported(exported: dict[str, dict[str, set[str]]]) -> None:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    expressions = dashboard_expressions(document)
    assert len(expressions) >= 10
    used: set[str] = set()
    for where, expr in expressions:
        query = parse_promql(expr)
        assert query.metrics, f"{where}: no metric in {expr!r}"
        available_labels = set(TARGET_LABELS)
        for metric, matchers in query.metrics.items():
            assert metric in exported, f"{where}: {metric} is not a series of /metrics"
            used.add(metric)
            labels = exported[metric]
            available_labels |= set(labels)
            for label, operator, value in matchers:
                assert label in labels or label in TARGET_LABELS, f"{where}: {metric} has no label {label}"
                if "$" in value or label in TARGET_LABELS or operator.startswith("!"):
                    continue
                alternatives = value.split("|") if operator == "=~" else [value]
                for alternative in alternatives:
                    assert re.fullmatch(r"[A-Za-z0-9_.+-]+", alternative), f"{where}: check {value!r} by hand"
                    assert alternative in labels[label], f"{where}: {metric}{{{label}}} is never {alternative!r}"
        missing = query.grouping - available_labels
        assert not missing, f"{where}: grouped by labels the series do not have: {missing}"
    # Every family of the README's table appears somewhere.
    for family in (
        "artstory_proxy_requests_total",
        "artstory_proxy_request_duration_seconds_bucket",
        "artstory_proxy_upstream_duration_seconds_bucket",
        "artstory_proxy_tokens_saved_total",
        "artstory_proxy_money_saved_dollars_total",
        "artstory_proxy_store_errors_total",
        "artstory_proxy_store_available",
        "artstory_proxy_store_entries",
        "artstory_proxy_store_bytes",
    ):
        assert family in used, f"the dashboard never shows {family}"
