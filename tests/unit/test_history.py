"""Statistics history: per-minute bucketing, windows and steps, retention, most-hit keys."""

from __future__ import annotations

import fakeredis
import pytest

from proxy import history as history_module
from proxy.errors import ClientRequestError, SettingsError
from proxy.history import (
    DAY_KEPT,
    KEY_HITS_PER_FLUSH,
    TOP_KEYS_KEPT,
    default_step,
    floor_to,
    parse_step,
    parse_window,
    window_buckets,
)
from proxy.prices import Price, PriceTable
from proxy.settings import Settings
from proxy.stats import Stats
from proxy.stats_keeper import StatsKeeper
from proxy.store.base import CounterWrite
from proxy.store.failopen import FailOpenStore
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from tests.unit.test_failopen import FlakyStore

PRICES = PriceTable({"gpt-4o-mini": Price(0.15, 0.60)})
NAMESPACES = ("artwork_info", "ai_content")
T0 = 1_795_651_200.0  # a UTC midnight, so minutes, hours and days all start here


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def keeper_on(store: MemoryStore | FailOpenStore, clock: Clock, *, retention: float = 86400) -> StatsKeeper:
    return StatsKeeper(Stats(PRICES), store, namespaces=NAMESPACES, key_prefix="p:", retention=retention, clock=clock)


# Bucketing: which minutes a window covers, steps, parsing.


def test_a_window_is_the_current_minute_and_the_ones_before_it() -> None:
    now = T0 + 3 * 60 + 17
    assert floor_to(now, 60) == T0 + 180
    assert window_buckets(now, 60) == [T0 + 180]
    assert window_buckets(now, 300) == [T0 + 60 * m for m in (-1, 0, 1, 2, 3)]
    assert len(window_buckets(now, 3600)) == 60
    assert len(window_buckets(now, 86400)) == 1440
    assert window_buckets(now, 1800, 600) == [T0 - 1200, T0 - 600, T0]
    assert len(window_buckets(now, 86400, 600)) == 144


def test_default_steps_keep_long_windows_to_at_most_120_points_of_whole_ten_minutes() -> None:
    assert default_step(900) == 60
    assert default_step(3600) == 60
    assert default_step(7200) == 60
    assert default_step(6 * 3600) == 600
    assert default_step(12 * 3600) == 600
    assert default_step(86400) == 1200
    assert 86400 / default_step(86400) == 72


@pytest.mark.parametrize(
    ("raw", "seconds"), [(None, 3600), ("15m", 900), ("1h", 3600), ("24h", 86400), ("90", 120), ("1d", 86400)]
)
def test_windows_are_durations_in_whole_minutes(raw: str | None, seconds: int) -> None:
    assert parse_window(raw, retention=86400) == seconds


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("25h", "longer than the history kept"),
        ("30s", "too short"),
        ("soon", "must be a number of seconds or a duration"),
        ("-1h", "must be a number of seconds or a duration"),
        ("0", "positive duration"),
    ],
)
def test_bad_windows_are_client_errors(raw: str, message: str) -> None:
    with pytest.raises(ClientRequestError, match=message) as caught:
        parse_window(raw, retention=86400)
    assert caught.value.status == 400


def test_the_default_window_never_exceeds_the_retention() -> None:
    assert parse_window(None, retention=600) == 600


def test_steps_are_whole_minutes_within_the_window() -> None:
    assert parse_step(None, window=86400) == 1200
    assert parse_step("5m", window=3600) == 300
    for bad in ("90s", "2h", "x"):
        with pytest.raises(ClientRequestError):
            parse_step(bad, window=3600)


# What a flush writes.


async def test_a_flush_lands_in_the_minute_it_happens_in() -> None:
    store, clock = MemoryStore(1_000_000), Clock(T0 + 125)  # 2 min 5 s after T0
    keeper = keeper_on(store, clock)
    keeper.stats.record("artwork_info", "HIT", 0.001, key="p:artwork_info:mona-lisa")
    keeper.stats.record("artwork_info", "MISS", 0.2, key="p:artwork_info:guernica")
    assert await keeper.flush()
    minute = await store.read_counters(f"p:_artstory_proxy:history:{int(T0) + 120}")
    assert minute["artwork_info|n|hit"] == 1
    assert minute["artwork_info|n|miss"] == 1
    assert await store.read_counters(f"p:_artstory_proxy:history:{int(T0) + 60}") == {}
    assert (await store.read_counters(f"p:_artstory_proxy:history:day:{int(T0)}"))["artwork_info|n|hit"] == 1
    # The cumulative hash gets the same deltas.
    assert (await store.read_counters("p:_artstory_proxy:stats"))["artwork_info|n|hit"] == 1
    # Only hits count per key.
    top = await store.top_scores([f"p:_artstory_proxy:topkeys:{int(T0)}"], 10, scratch_key="s")
    assert top == [("p:artwork_info:mona-lisa", 1)]


def test_the_writes_of_one_flush() -> None:
    keeper = keeper_on(MemoryStore(1000), Clock(T0))
    now = T0 + 3600 + 61
    hits = {f"k{index}": index for index in range(KEY_HITS_PER_FLUSH + 50)}
    writes = keeper.history.writes({"artwork_info|n|hit": 2}, hits, now)
    by_key = {write.key: write for write in writes}
    minute = by_key[f"p:_artstory_proxy:history:{int(T0) + 3660}"]
    assert minute.ttl == 86400 + 60
    assert not minute.sorted_set
    assert by_key[f"p:_artstory_proxy:history:day:{int(T0)}"].ttl == DAY_KEPT
    assert by_key[f"p:_artstory_proxy:history:10m:{int(T0) + 3600}"].ttl == 86400 + 600
    assert by_key[f"p:_artstory_proxy:history:10m:{int(T0) + 3600}"].deltas == {"artwork_info|n|hit": 2}
    top = by_key[f"p:_artstory_proxy:topkeys:{int(T0) + 3600}"]
    assert top.sorted_set
    assert top.keep == TOP_KEYS_KEPT
    assert top.ttl == 86400 + 3600
    # Only the most-hit keys of a flush are written: the tail of one-off hits is dropped.
    assert len(top.deltas) == KEY_HITS_PER_FLUSH
    assert min(top.deltas.values()) == 50
    assert keeper.history.writes({}, {}, now) == []


# Reading windows.


async def test_minutes_read_back_as_points_with_percentiles_from_merged_buckets() -> None:
    store, clock = MemoryStore(1_000_000), Clock(T0 + 10)
    keeper = keeper_on(store, clock)
    for _ in range(9):
        keeper.stats.record("artwork_info", "HIT", 0.001)
    assert await keeper.flush()
    clock.now += 60
    keeper.stats.record("artwork_info", "HIT", 0.5)  # one slow hit in the next minute
    keeper.stats.record("ai_content", "MISS", 0.2)
    assert await keeper.flush()
    clock.now += 60
    body = await keeper.history_report(300, 60)
    assert [point["t"] for point in body["points"]] == [int(T0) + 60 * m for m in (-2, -1, 0, 1, 2)]
    hits = [point["totals"]["hits"] for point in body["points"]]
    assert hits == [0, 0, 9, 1, 0]
    # Points carry only the namespaces seen in them.
    assert set(body["points"][2]["namespaces"]) == {"artwork_info"}
    assert set(body["points"][3]["namespaces"]) == {"artwork_info", "ai_content"}
    window = body["window_totals"]
    assert set(window["namespaces"]) == set(NAMESPACES)
    assert window["totals"]["requests"] == 11
    latency = window["namespaces"]["artwork_info"]["latency_ms"]["hit"]
    assert latency["count"] == 10
    assert 1.0 <= latency["p50"] <= 1.25
    assert 500 <= latency["p99"] <= 625  # the slow minute's bucket, merged with the fast one
    assert body["points"][2]["totals"]["latency_ms"]["hit"]["p99"] <= 1.25
    assert body["today"]["since"] == int(T0)
    assert body["today"]["totals"]["requests"] == 11


async def test_steps_add_minutes_together() -> None:
    store, clock = MemoryStore(1_000_000), Clock(T0)
    keeper = keeper_on(store, clock)
    for _ in range(4):
        keeper.stats.record("artwork_info", "HIT", 0.001)
        assert await keeper.flush()
        clock.now += 60
    body = await keeper.history_report(600, 300)
    assert [point["t"] for point in body["points"]] == [int(T0) - 300, int(T0)]
    assert [point["totals"]["hits"] for point in body["points"]] == [0, 4]


async def test_long_windows_read_ten_minute_hashes() -> None:
    store, clock = MemoryStore(1_000_000), Clock(T0)
    keeper = keeper_on(store, clock)
    for minute in range(25):  # a hit a minute, and one slow miss in the last
        clock.now = T0 + 60 * minute + 5
        keeper.stats.record("artwork_info", "HIT", 0.001)
        if minute == 24:
            keeper.stats.record("ai_content", "MISS", 2.0)
        assert await keeper.flush()
    body = await keeper.history_report(6 * 3600, default_step(6 * 3600))
    assert body["step"] == 600
    assert len(body["points"]) == 36
    assert [point["totals"]["hits"] for point in body["points"][-3:]] == [10, 10, 5]
    assert body["window_totals"]["totals"]["requests"] == 26
    assert 2000 <= body["window_totals"]["totals"]["latency_ms"]["miss"]["p99"] <= 2500
    # The same counts, minute by minute, with an explicit step.
    fine = await keeper.history_report(6 * 3600, 300)
    assert fine["window_totals"]["totals"] == body["window_totals"]["totals"]


async def test_unflushed_counts_show_in_the_current_minute_and_today() -> None:
    store, clock = MemoryStore(1_000_000), Clock(T0 + 30)
    keeper = keeper_on(store, clock)
    keeper.stats.record("artwork_info", "HIT", 0.001, key="p:artwork_info:mona-lisa")
    body = await keeper.history_report(120, 60)
    assert body["points"][-1]["totals"]["hits"] == 1
    assert body["today"]["totals"]["hits"] == 1
    assert body["top_keys"]["keys"] == [{"key": "artwork_info:mona-lisa", "namespace": "artwork_info", "hits": 1}]


async def test_most_hit_keys_add_up_across_hours_and_drop_the_prefix() -> None:
    store, clock = MemoryStore(1_000_000), Clock(T0 + 3000)
    keeper = keeper_on(store, clock)
    for key, hits in (("p:artwork_info:mona-lisa", 3), ("p:artwork_info:guernica", 2)):
        for _ in range(hits):
            keeper.stats.record("artwork_info", "HIT", 0.001, key=key)
    assert await keeper.flush()
    clock.now += 1200  # the next hour
    for _ in range(2):
        keeper.stats.record("artwork_info", "HIT", 0.001, key="p:artwork_info:guernica")
    assert await keeper.flush()
    body = await keeper.history_report(3600, 60)
    assert body["top_keys"]["since"] == int(T0)
    assert [(item["key"], item["hits"]) for item in body["top_keys"]["keys"]] == [
        ("artwork_info:guernica", 4),
        ("artwork_info:mona-lisa", 3),
    ]


# Retention.


async def test_minutes_expire_after_the_retention_in_the_memory_store() -> None:
    monotonic = Clock(0.0)
    store, clock = MemoryStore(1_000_000, clock=monotonic), Clock(T0)
    keeper = keeper_on(store, clock, retention=600)
    keeper.stats.record("artwork_info", "HIT", 0.001, key="p:artwork_info:mona-lisa")
    assert await keeper.flush()
    minute_key = f"p:_artstory_proxy:history:{int(T0)}"
    monotonic.now = 600 + 59
    assert (await store.read_counters(minute_key))["artwork_info|n|hit"] == 1
    clock.now = T0 + 599  # the minute is still inside a 10-minute window read now
    assert (await keeper.history_report(600, 60))["window_totals"]["totals"]["hits"] == 1
    monotonic.now = 600 + 60
    assert await store.read_counters(minute_key) == {}
    # The cumulative counters never expire.
    assert (await store.read_counters("p:_artstory_proxy:stats"))["artwork_info|n|hit"] == 1
    monotonic.now = 600 + 3600
    assert await store.top_scores([f"p:_artstory_proxy:topkeys:{int(T0)}"], 5, scratch_key="s") == []


async def test_redis_keys_get_the_retention_as_their_ttl() -> None:
    client = fakeredis.aioredis.FakeRedis()
    store = FailOpenStore(RedisStore(client))
    keeper = keeper_on(store, Clock(T0 + 5), retention=7200)
    keeper.stats.record("artwork_info", "HIT", 0.001, key="p:artwork_info:mona-lisa")
    assert await keeper.flush()
    assert await client.ttl(f"p:_artstory_proxy:history:{int(T0)}") == 7200 + 60
    assert await client.ttl(f"p:_artstory_proxy:history:day:{int(T0)}") == DAY_KEPT
    assert await client.ttl(f"p:_artstory_proxy:topkeys:{int(T0)}") == 7200 + 3600
    assert await client.ttl("p:_artstory_proxy:stats") == -1  # the cumulative hash never expires
    body = await keeper.history_report(3600, 60)
    assert body["window_totals"]["totals"]["hits"] == 1
    assert body["top_keys"]["keys"][0]["key"] == "artwork_info:mona-lisa"
    # The union's scratch key is gone.
    assert await client.keys("*union*") == []


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_sorted_sets_keep_only_their_highest_members(backend: str) -> None:
    store = MemoryStore(1_000_000) if backend == "memory" else RedisStore(fakeredis.aioredis.FakeRedis())
    deltas = {f"key-{index}": index for index in range(1, 11)}
    await store.write_counters([CounterWrite("z", deltas, sorted_set=True, keep=3, ttl=60)])
    await store.write_counters([CounterWrite("y", {"key-1": 100}, sorted_set=True)])
    assert await store.top_scores(["z"], 10, scratch_key="tmp") == [("key-10", 10), ("key-9", 9), ("key-8", 8)]
    assert await store.top_scores(["z", "y", "absent"], 2, scratch_key="tmp") == [("key-1", 100), ("key-10", 10)]
    assert await store.read_counters_many(["absent"]) == [{}]


def test_the_retention_setting() -> None:
    assert Settings.from_env({}).stats_retention == 86400
    assert Settings.from_env({"PROXY_STATS_RETENTION": "6h"}).stats_retention == 21600
    assert Settings.from_env({"PROXY_STATS_RETENTION": "7200"}).stats_retention == 7200
    for bad in ("30s", "forever", "-1"):
        with pytest.raises(SettingsError, match="PROXY_STATS_RETENTION"):
            Settings.from_env({"PROXY_STATS_RETENTION": bad})


# Failures.


async def test_a_failed_flush_keeps_counts_and_key_hits_for_the_next_one() -> None:
    flaky = FlakyStore()
    clock = Clock(T0)
    keeper = keeper_on(FailOpenStore(flaky), clock)
    keeper.stats.record("artwork_info", "HIT", 0.001, key="p:artwork_info:mona-lisa")
    flaky.down = True
    assert not await keeper.flush()
    keeper.stats.record("artwork_info", "HIT", 0.001, key="p:artwork_info:mona-lisa")
    flaky.down = False
    clock.now += 60
    assert await keeper.flush()
    body = await keeper.history_report(120, 60)
    assert [point["totals"]["hits"] for point in body["points"]] == [0, 2]  # in the minute of the flush
    assert body["top_keys"]["keys"][0]["hits"] == 2
    assert keeper.stats.key_hits == {}


async def test_reading_the_history_reports_store_errors() -> None:
    from proxy.errors import StoreError

    flaky = FlakyStore()
    keeper = keeper_on(FailOpenStore(flaky), Clock(T0))
    flaky.down = True
    with pytest.raises(StoreError):
        await keeper.history_report(3600, 60)


def test_pending_key_hits_are_bounded_during_an_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.stats.MAX_PENDING_KEYS", 3)
    stats = Stats(PRICES)
    stats.restore_key_hits({"a": 5, "b": 1, "c": 4, "d": 3, "e": 2})
    assert stats.key_hits == {"a": 5, "c": 4, "d": 3}


def test_only_hits_and_stale_answers_count_per_key() -> None:
    stats = Stats(PRICES)
    for outcome in ("HIT", "STALE", "MISS", "COALESCED", "REFRESH", "BYPASS"):
        stats.record("artwork_info", outcome, 0.001, key="artwork_info:x")
    stats.record("artwork_info", "HIT", 0.001)  # no key (an embedding batch)
    assert stats.take_key_hits() == {"artwork_info:x": 2}
    assert stats.key_hits == {}


def test_module_constants_are_consistent() -> None:
    assert history_module.TOP_KEYS_KEPT >= history_module.TOP_KEYS_SHOWN
    assert history_module.DEFAULT_RETENTION == 86400
