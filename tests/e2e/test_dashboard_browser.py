"""The dashboard in a real browser: Debian's headless chromium opens the page of a proxy that has
served known traffic, the figures it shows are those of `/redis/stats`, and screenshots at a
laptop's and a phone's size are saved to `tests/artifacts/` for people to look at.

Chromium is driven over the DevTools protocol (a websocket, with aiohttp), so the test waits for
the page to say it has drawn its charts instead of guessing a time, and a phone is emulated
properly (a 390 px viewport; `--window-size` cannot go below 500 px in headless mode). Chromium is
not optional: `.ci/run` installs it (`apt-get install chromium`); without it this test fails and
says so.
"""

from __future__ import annotations

import asyncio
import base64
import math
import shutil
import struct
import time
from html.parser import HTMLParser
from pathlib import Path
from random import Random
from types import TracebackType
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.history import History, floor_to, merge
from proxy.prices import load_price_table
from proxy.settings import default_config_file
from proxy.state import STATS, STATS_KEEPER
from proxy.stats import Stats
from proxy.store.base import CounterWrite, Store
from proxy.usage import Usage
from tests.conftest import REPO, ProxyClientFactory, chat_body

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ARTIFACTS = REPO / "tests" / "artifacts"
TOKEN = "dashboard-browser-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START_TIMEOUT = 30.0
READY_TIMEOUT = 30.0
LAPTOP = (1280, 800)
PHONE = (390, 844)
FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
# The page is ready when it has rendered data and drawn its three charts.
READY = "document.body.getAttribute('data-state') === 'ready' && document.querySelectorAll('.chart canvas').length >= 3"


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "the dashboard browser test needs Debian's chromium on PATH: `apt-get install -y chromium` "
        "(.ci/run installs it when it is missing)"
    )


class DevToolsError(Exception):
    """An error answer of the DevTools protocol."""


class Browser:
    """One headless chromium with one page, driven over the DevTools protocol."""

    def __init__(self, workdir: Path) -> None:
        self.profile = workdir / "profile"
        self.log_path = workdir / "chromium.log"
        self.process: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self._next_id = 0

    async def __aenter__(self) -> Browser:
        binary = chromium()
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank", stdout=log, stderr=log
            )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.process.returncode is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not start: {self.log_path.read_text(errors='replace')[-2000:]}")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(target for target in targets if target["type"] == "page")
        self.socket = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.socket is not None:
            await self.socket.close()
        if self.session is not None:
            await self.session.close()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.socket is not None
        self._next_id += 1
        await self.socket.send_json({"id": self._next_id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.socket.receive_json(), READY_TIMEOUT)
            if message.get("id") == self._next_id:  # anything else is an event
                if "error" in message:
                    raise DevToolsError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        reply = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in reply, f"{expression}: {reply['exceptionDetails']}"
        return reply["result"].get("value")

    async def open(self, url: str, size: tuple[int, int], *, mobile: bool = False) -> None:
        """Load `url` in a viewport of `size` and wait until the page has drawn its charts."""
        width, height = size
        await self.call(
            "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile
        )
        # Whatever page is open stops counting as ready, so only the new one can be.
        await self.evaluate("document.body && document.body.removeAttribute('data-state')")
        await self.call("Page.navigate", url=url)
        await self.wait_until_ready()

    async def wait_until_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not await self.ready():
            if time.monotonic() > deadline:
                problem = await self.evaluate("document.body && document.body.getAttribute('data-error')")
                pytest.fail(f"the dashboard was not ready within {READY_TIMEOUT:g} s: {problem}")
            await asyncio.sleep(0.1)
        # Two animation frames: the charts are painted, not only laid out.
        await self.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")

    async def ready(self) -> bool:
        try:
            return bool(await self.evaluate(f"!!document.body && ({READY})"))
        except DevToolsError:  # the old page went away under the navigation: ask the new one
            return False

    async def screenshot(self, path: Path, *, full_page: bool) -> tuple[int, int]:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self.call("Page.getLayoutMetrics")
            content = metrics["cssContentSize"]
            params["captureBeyondViewport"] = True
            params["clip"] = {"x": 0, "y": 0, "width": content["width"], "height": content["height"], "scale": 1}
        shot = await self.call("Page.captureScreenshot", **params)
        return save_png(path, base64.b64decode(shot["data"]))


class Figures(HTMLParser):
    """Every element with an id or a data-namespace / data-key, with its attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.keys: dict[str, int] = {}
        self.body: dict[str, str] = {}
        self.canvases: dict[str, int] = {}
        self._open: list[tuple[str, dict[str, str]]] = []
        self._chart: str | None = None
        self._namespace: str | None = None
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "body":
            self.body = values
        if values.get("id", "").startswith("chart-"):
            self._chart = values["id"]
        if tag == "canvas" and self._chart:
            self.canvases[self._chart] = self.canvases.get(self._chart, 0) + 1
        if "data-namespace" in values:
            self._namespace = values["data-namespace"]
            self.namespaces[self._namespace] = {}
        if tag == "td" and self._namespace and "data-field" in values:
            self.namespaces[self._namespace][values["data-field"]] = values.get("data-value", "")
        if "data-key" in values:
            self.keys[values["data-key"]] = int(values["data-hits"])
        if "id" in values:
            values["text"] = ""
            self.by_id[values["id"]] = values
        self._open.append((tag, values))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, values = self._open.pop()
            if values.get("id", "").startswith("chart-"):
                self._chart = None
            if "data-namespace" in values:
                self._namespace = None
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, values in self._open:
            if "id" in values:
                values["text"] += data


def figures_of(dom: str) -> Figures:
    parser = Figures()
    parser.feed(dom)
    return parser


def save_png(path: Path, data: bytes) -> tuple[int, int]:
    path.write_bytes(data)
    return png_size(path)


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


async def known_traffic(proxy: TestClient[web.Request, web.Application]) -> None:
    """Misses, hits, coalesced followers, over three namespaces."""
    for _ in range(3):
        await (await proxy.post("/v1/chat/completions", json=chat_body())).read()
    for artwork, times in (("Mona Lisa", 4), ("Guernica", 2), ("The Scream", 1)):
        for _ in range(times):
            await (await proxy.get(f"/artworks/{artwork}")).read()
    for _ in range(2):
        await (await proxy.get("/artworks/Mona%20Lisa/similar")).read()
    slow = {"x-fake-delay": "0.3"}
    followers = await asyncio.gather(*(proxy.get("/artworks/The%20Starry%20Night", headers=slow) for _ in range(3)))
    assert sorted(response.headers["X-Cache"] for response in followers) == ["COALESCED", "COALESCED", "MISS"]
    for response in followers:
        await response.read()
    # A request is counted once its handler returns, which may be a moment after its client has
    # read the last byte: wait until all 15 are, so the page and the test see the same figures.
    deadline = time.monotonic() + 5
    while sum(value for name, value in proxy.app[STATS].fields.items() if "|n|" in name) < 15:
        assert time.monotonic() < deadline, "the requests were never counted"
        await asyncio.sleep(0.01)


def number(figure: dict[str, str]) -> float | None:
    raw = figure["data-value"]
    return None if raw == "" else float(raw)


async def seed_history(store: Store, key_prefix: str, minutes: int = 40) -> int:
    """Forty minutes of earlier traffic, written as replicas' flushes write it (a hash per minute,
    today's hash, the cumulative counter hash, key hits per hour), so the charts have lines to
    draw. Every minute's counts also go into today's hash, even minutes of yesterday when the
    test runs just after midnight UTC, so today, the window and all time stay equal. Returns how
    many requests it counted."""
    random = Random(9)  # made-up traffic, not cryptography
    prices = load_price_table(default_config_file("prices.toml"))
    history = History(store, key_prefix=key_prefix, namespaces=())
    now = time.time()
    total: dict[str, int] = {}
    key_hits: dict[int, dict[str, int]] = {}
    writes: list[CounterWrite] = []
    artworks = ("the-night-watch", "girl-with-a-pearl-earring", "the-kiss", "water-lilies", "mona-lisa")
    for ago in range(minutes, 0, -1):
        minute = floor_to(now, 60) - 60 * ago
        stats = Stats(prices)
        wave = 1 + 0.5 * math.sin(ago / 6)
        for namespace, per_minute, hit_share in (("artwork_info", 40, 0.8), ("ai_content", 12, 0.55)):
            for _ in range(round(per_minute * wave)):
                draw = random.random()
                outcome = "HIT" if draw < hit_share else "STALE" if draw < hit_share + 0.05 else "MISS"
                if namespace == "ai_content" and outcome == "STALE":
                    outcome = "COALESCED"
                hit = outcome in ("HIT", "STALE")
                seconds = random.lognormvariate(-7.3 if hit else -1.6, 0.5)  # about 0.7 ms and 200 ms
                usage = Usage("gpt-4o-mini", 12, 30) if hit and namespace == "ai_content" else None
                subject = artworks[min(int(random.expovariate(0.9)), len(artworks) - 1)]
                key = f"{key_prefix}{namespace}:{subject}" if namespace == "artwork_info" else None
                stats.record(namespace, outcome, seconds, usage=usage, key=key)
                if not hit:
                    stats.record_upstream(namespace, seconds * 0.9)
        writes.append(CounterWrite(history.minute_key(minute), dict(stats.fields), ttl=3600))
        total = merge([total, stats.fields])
        hour = key_hits.setdefault(floor_to(minute, 3600), {})
        for key, hits in stats.take_key_hits().items():
            hour[key] = hour.get(key, 0) + hits
    writes.append(CounterWrite(history.day_key(floor_to(now, 86400)), total, ttl=3600))
    writes.append(CounterWrite(f"{key_prefix}_artstory_proxy:stats", total))
    writes += [
        CounterWrite(history.top_keys_key(hour), hits, ttl=7200, sorted_set=True) for hour, hits in key_hits.items()
    ]
    await store.write_counters(writes)
    return sum(value for name, value in total.items() if "|n|" in name)


async def test_the_dashboard_shows_what_stats_counted(
    real_redis_store: Store, make_proxy: ProxyClientFactory, key_prefix: str, tmp_path: Path
) -> None:
    chromium()  # fail first, and clearly, when it is missing
    proxy = await make_proxy(store=real_redis_store, PROXY_KEY_PREFIX=key_prefix, PROXY_ADMIN_TOKEN=TOKEN)
    earlier = await seed_history(real_redis_store, key_prefix)
    await known_traffic(proxy)
    assert await proxy.app[STATS_KEEPER].flush()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    async with Browser(tmp_path) as browser:
        await browser.open(str(proxy.make_url(f"/redis/dashboard?token={TOKEN}")), LAPTOP)
        page = figures_of(await browser.evaluate("document.documentElement.outerHTML"))
        # The token left the address bar as soon as the page had it.
        assert await browser.evaluate("location.search") == ""
        stats = await (await proxy.get("/redis/stats", headers=AUTH)).json()
        history = await (await proxy.get("/redis/stats/history", headers=AUTH)).json()
        assert stats["cluster"]["totals"]["requests"] == earlier + 15  # the traffic is what we think
        check_figures(page, stats, history)
        for name, full_page in {"laptop": False, "laptop-full": True}.items():
            width, height = await browser.screenshot(ARTIFACTS / f"dashboard-{name}.png", full_page=full_page)
            assert width == LAPTOP[0]
            assert height >= LAPTOP[1]

        # Without the token the page asks for it; typing it in opens the dashboard.
        await browser.evaluate("sessionStorage.clear()")
        await browser.call("Page.navigate", url=str(proxy.make_url("/redis/dashboard")))
        deadline = time.monotonic() + READY_TIMEOUT
        while not await browser.evaluate("!!document.getElementById('login')"):
            assert time.monotonic() < deadline, "no sign-in form"
            await asyncio.sleep(0.1)
        await browser.evaluate(
            f"document.getElementById('token').value = {TOKEN!r};document.getElementById('login').requestSubmit()"
        )
        await browser.wait_until_ready()
        assert await browser.evaluate("location.search") == ""

        # A phone: the same page at 390 px, nothing wider than the screen. The tab kept the
        # token, so a reload without it opens the dashboard again.
        await browser.open(str(proxy.make_url("/redis/dashboard")), PHONE, mobile=True)
        assert await browser.evaluate("innerWidth") == PHONE[0]
        assert await browser.evaluate("document.documentElement.scrollWidth") <= PHONE[0], "wider than a phone"
        chart_edges = await browser.evaluate(
            "Array.from(document.querySelectorAll('.chart canvas')).map(c => c.getBoundingClientRect().right)"
        )
        assert max(chart_edges) <= PHONE[0]
        check_figures(figures_of(await browser.evaluate("document.documentElement.outerHTML")), stats, history)
        for name, full_page in {"phone": False, "phone-full": True}.items():
            width, _ = await browser.screenshot(ARTIFACTS / f"dashboard-{name}.png", full_page=full_page)
            assert width == PHONE[0]


def check_figures(page: Figures, stats: dict[str, Any], history: dict[str, Any]) -> None:
    """The figures on the page are those of `/redis/stats` (and of the history, which, with all
    the traffic inside the window and today, equals them)."""
    cluster = stats["cluster"]["totals"]
    assert "data-error" not in page.body, page.body["data-error"]

    for prefix in ("fig-all", "fig-window"):
        for name, field in (
            ("requests", "requests"),
            ("hits", "hits"),
            ("misses", "misses"),
            ("stale", "stale"),
            ("coalesced", "coalesced"),
            ("hit-rate", "hit_rate"),
            ("calls-saved", "upstream_calls_saved"),
            ("money-saved", "money_saved_usd"),
        ):
            assert number(page.by_id[f"{prefix}-{name}"]) == cluster[field], f"{prefix}-{name}"
        assert number(page.by_id[f"{prefix}-tokens-saved"]) == cluster["tokens_saved"]["total"]
        for kind in ("hit", "miss"):
            for percentile in ("p50", "p99"):
                expected = cluster["latency_ms"][kind][percentile]
                assert number(page.by_id[f"{prefix}-{kind}-{percentile}"]) == expected, f"{prefix}-{kind}-{percentile}"
    for name, field in (("calls-saved", "upstream_calls_saved"), ("money-saved", "money_saved_usd")):
        assert number(page.by_id[f"fig-today-{name}"]) == cluster[field]
    assert number(page.by_id["fig-today-tokens-saved"]) == cluster["tokens_saved"]["total"]
    # What people read is the same figure, formatted.
    assert page.by_id["fig-all-requests"]["text"] == f"{cluster['requests']:,}"
    assert page.by_id["fig-window-hits"]["text"] == f"{cluster['hits']:,}"
    assert page.by_id["fig-all-hit-rate"]["text"] == f"{cluster['hit_rate'] * 100:.1f} %"
    assert page.by_id["fig-all-tokens-saved"]["text"] == f"{cluster['tokens_saved']['total']:,}"

    # Namespaces, most hits first, and the most-hit keys.
    for namespace, summary in stats["cluster"]["namespaces"].items():
        if summary["requests"]:
            row = page.namespaces[namespace]
            assert float(row["hits"]) == summary["hits"] == float(row["all-hits"]), namespace
            assert float(row["requests"]) == summary["requests"], namespace
            assert float(row["entries"]) == stats["store"]["namespaces"][namespace]["entries"], namespace
    hits_order = [float(row["hits"]) for row in page.namespaces.values()]
    assert hits_order == sorted(hits_order, reverse=True)
    assert list(page.keys.items()) == [(item["key"], item["hits"]) for item in history["top_keys"]["keys"]]
    assert "artwork_info:guernica" in page.keys  # a key of the live traffic, beside the earlier ones

    # The store, and its health from /redis/health.
    store = stats["store"]
    assert number(page.by_id["fig-store-entries"]) == store["entries"]
    assert number(page.by_id["fig-store-evicted-keys"]) == store["evicted_keys"]
    assert number(page.by_id["fig-store-maxmemory"]) == store["maxmemory"]
    assert page.by_id["fig-store-used-memory"]["text"].endswith("iB")
    assert page.by_id["fig-store-health"]["data-value"] == "healthy"
    assert page.by_id["fig-store-backend"]["text"] == "redis"

    # The three charts were drawn.
    for chart in ("chart-hit-rate", "chart-rps", "chart-latency"):
        assert page.canvases.get(chart, 0) >= 1, f"{chart} has no canvas"


def test_figures_parser_reads_ids_and_rows() -> None:
    page = figures_of(
        '<body data-state="ready"><b id="fig-all-hits" data-value="4">4</b>'
        '<table><tr data-namespace="ai_content"><td data-field="hits" data-value="2">2</td></tr></table>'
        '<tr data-key="artwork_info:x" data-hits="3"></tr><div id="chart-rps"><canvas></canvas></div></body>'
    )
    assert page.by_id["fig-all-hits"]["data-value"] == "4"
    assert page.by_id["fig-all-hits"]["text"] == "4"
    assert page.namespaces == {"ai_content": {"hits": "2"}}
    assert page.keys == {"artwork_info:x": 3}
    assert page.canvases == {"chart-rps": 1}
    assert page.body["data-state"] == "ready"
