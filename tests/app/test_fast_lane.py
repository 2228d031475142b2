"""The fast lane (proxy/fastlane.py): plain hits answered beneath aiohttp, the rest handed to it.

Every other app test runs through the fast lane too (tests/conftest.py serves apps the way
`python -m proxy serve` does); these tests look at the connection itself: what one keep-alive
connection carries, pipelining, requests the lane leaves to aiohttp, idle connections.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import fakeredis
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from proxy import fastlane
from proxy.access import hash_access_key
from proxy.state import STATS
from proxy.store.failopen import FailOpenStore
from proxy.store.redis import RedisStore
from tests.conftest import ProxyClientFactory, chat_body
from tests.fake_upstream import FakeUpstream

CHAT = "/v1/chat/completions"
IGNORED_HEADERS = {"date", "x-request-id", "age"}  # differ from one answer to the next anyway


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        decoded: dict[str, object] = json.loads(self.body)
        return decoded


class RawConnection:
    """One client connection, written and read byte for byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, *requests: bytes) -> None:
        self.writer.write(b"".join(requests))
        await self.writer.drain()

    async def response(self) -> RawResponse:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:
            assert headers.get("transfer-encoding") == "chunked", headers
            parts = []
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            await self.reader.readexactly(2)
            body = b"".join(parts)
        return RawResponse(status, headers, body)

    async def closed_by_server(self, within: float) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), within) == b""
        except TimeoutError:
            return False


@pytest.fixture
async def connect() -> AsyncIterator[object]:
    opened: list[RawConnection] = []

    async def open_to(client: TestClient[web.Request, web.Application]) -> RawConnection:
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        connection = RawConnection(reader, writer)
        opened.append(connection)
        return connection

    yield open_to
    for connection in opened:
        connection.writer.close()


def post(path: str, body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{header}\r\n" for header in headers)
    return (
        f"POST {path} HTTP/1.1\r\nHost: proxy.test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def get(path: str, *headers: str) -> bytes:
    extra = "".join(f"{header}\r\n" for header in headers)
    return f"GET {path} HTTP/1.1\r\nHost: proxy.test\r\n{extra}\r\n".encode()


def chat(content: str = "Tell me about the Mona Lisa") -> bytes:
    return json.dumps(chat_body(content)).encode()


def lane_hits(client: TestClient[web.Request, web.Application]) -> int:
    return client.app[STATS].fast_lane_hits  # type: ignore[index]


def lane_misses(client: TestClient[web.Request, web.Application]) -> int:
    return client.app[STATS].fast_lane_misses  # type: ignore[index]


async def test_one_connection_carries_misses_hits_and_operations_in_order(
    proxy: TestClient[web.Request, web.Application], fake: FakeUpstream, connect
) -> None:  # type: ignore[no-untyped-def]
    connection = await connect(proxy)
    answers = []
    for request in (post(CHAT, chat()), post(CHAT, chat()), get("/redis/health"), post(CHAT, chat()), get("/nope")):
        await connection.send(request)
        answers.append(await connection.response())

    assert [answer.status for answer in answers] == [200, 200, 200, 200, 404]
    assert [answer.headers.get("x-cache") for answer in answers] == ["MISS", "HIT", None, "HIT", None]
    assert answers[1].body == answers[3].body == answers[0].body
    assert answers[2].json()["status"] == "healthy"
    assert "no route" in str(answers[4].json()["error"])
    assert fake.calls["/chat/completions"] == 1
    assert lane_hits(proxy) == 2  # both hits were the lane's; the rest went through aiohttp


async def test_pipelined_requests_are_answered_in_order(
    proxy: TestClient[web.Request, web.Application], fake: FakeUpstream, connect
) -> None:  # type: ignore[no-untyped-def]
    connection = await connect(proxy)
    await connection.send(post(CHAT, chat("first")))
    assert (await connection.response()).headers["x-cache"] == "MISS"

    # One write: a hit, a miss, the hit again, an error, the new entry: five answers, in order.
    await connection.send(
        post(CHAT, chat("first")),
        post(CHAT, chat("second")),
        post(CHAT, chat("first")),
        get("/nope"),
        post(CHAT, chat("second")),
    )
    answers = [await connection.response() for _ in range(5)]

    assert [answer.headers.get("x-cache") for answer in answers] == ["HIT", "MISS", "HIT", None, "HIT"]
    assert answers[3].status == 404
    assert b"first" in answers[0].body
    assert b"second" in answers[1].body
    assert b"second" in answers[4].body
    assert fake.calls["/chat/completions"] == 2


async def lane_and_aiohttp(
    make_proxy: ProxyClientFactory, connect, request: bytes, *, stored: bool = True, **env: str
) -> tuple[list[TestClient[web.Request, web.Application]], list[RawResponse]]:  # type: ignore[no-untyped-def]
    """Two proxies, with and without the lane, then the same request's answer from each. With
    `stored`, they share one store holding the entry (a hit on both); without, each has its own
    empty store (a miss on both)."""
    if stored:
        server = fakeredis.FakeServer()
        stores = [FailOpenStore(RedisStore(fakeredis.aioredis.FakeRedis(server=server))) for _ in range(2)]
        clients = [
            await make_proxy(store=store, **env, **lane)
            for store, lane in zip(stores, ({}, {"PROXY_FAST_LANE": "off"}), strict=True)
        ]
        await (await clients[0].post(CHAT, json=chat_body())).read()
    else:
        clients = [await make_proxy(**env, **lane) for lane in ({}, {"PROXY_FAST_LANE": "off"})]
    answers = []
    for client in clients:
        connection = await connect(client)
        await connection.send(request)
        answers.append(await connection.response())
    return clients, answers


def comparable(answer: RawResponse) -> dict[str, str]:
    return {name: value for name, value in answer.headers.items() if name not in IGNORED_HEADERS}


async def test_a_hit_from_the_lane_is_the_answer_aiohttp_gives(make_proxy: ProxyClientFactory, connect) -> None:  # type: ignore[no-untyped-def]
    request = post(CHAT, chat(), "Accept-Encoding: gzip", "X-Request-Id: same-id-1")
    (lane, plain), (from_lane, from_aiohttp) = await lane_and_aiohttp(make_proxy, connect, request)

    assert from_lane.status == from_aiohttp.status == 200
    assert from_lane.body == from_aiohttp.body
    assert comparable(from_lane) == comparable(from_aiohttp)
    assert from_lane.headers["x-request-id"] == from_aiohttp.headers["x-request-id"] == "same-id-1"
    assert lane_hits(lane) == 1
    assert lane_hits(plain) == 0


async def test_requests_asking_for_more_than_a_plain_hit_are_aiohttps(
    proxy: TestClient[web.Request, web.Application], fake: FakeUpstream, connect
) -> None:  # type: ignore[no-untyped-def]
    connection = await connect(proxy)
    await connection.send(post(CHAT, chat()))
    await connection.response()
    for header in ("Cache-Control: no-cache", "Pragma: no-cache", "X-Cache-TTL: 60"):
        await connection.send(post(CHAT, chat(), header))
        answer = await connection.response()
        assert answer.status == 200, (header, answer.body)

    assert (
        fake.calls["/chat/completions"] == 3
    )  # the two no-cache requests went upstream (REFRESH); the TTL one was a hit
    assert lane_hits(proxy) == 0


async def test_a_connection_the_lane_cannot_frame_is_left_to_aiohttp(
    proxy: TestClient[web.Request, web.Application], fake: FakeUpstream, connect
) -> None:  # type: ignore[no-untyped-def]
    body = chat()
    connection = await connect(proxy)
    chunked = (
        (
            f"POST {CHAT} HTTP/1.1\r\nHost: proxy.test\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n"
        ).encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    await connection.send(chunked)
    assert (await connection.response()).headers["x-cache"] == "MISS"
    await connection.send(post(CHAT, body))  # the same connection, now aiohttp's
    answer = await connection.response()

    assert answer.headers["x-cache"] == "HIT"
    assert fake.calls["/chat/completions"] == 1
    assert lane_hits(proxy) == 0


async def test_malformed_and_oversized_requests_get_aiohttps_refusals(make_proxy: ProxyClientFactory, connect) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy(PROXY_MAX_REQUEST_BYTES="1KB")
    connection = await connect(proxy)
    await connection.send(post(CHAT, b"x" * 2048))
    too_big = await connection.response()
    assert too_big.status == 413
    assert "limit" in str(too_big.json()["error"])

    connection = await connect(proxy)
    await connection.send(b"GET /v1/models HTTP/1.1\r\nHost: proxy.test\r\nBad Header: x\r\n\r\n")
    assert (await connection.response()).status == 400
    assert await connection.closed_by_server(within=5)


async def test_hits_count_in_stats_and_the_lanes_share_is_reported(
    proxy: TestClient[web.Request, web.Application], connect
) -> None:  # type: ignore[no-untyped-def]
    connection = await connect(proxy)
    for _ in range(4):
        await connection.send(post(CHAT, chat()))
        await connection.response()

    stats = await (await proxy.get("/redis/stats")).json()
    metrics = await (await proxy.get("/metrics")).text()

    assert stats["process"]["totals"]["hits"] == 3
    assert stats["process"]["namespaces"]["ai_content"]["misses"] == 1
    assert stats["fast_lane_hits"] == 3
    assert stats["fast_lane_misses"] == 1
    assert "artstory_proxy_fast_lane_hits_total 3.0" in metrics
    assert "artstory_proxy_fast_lane_misses_total 1.0" in metrics


async def test_idle_connections_close_but_busy_ones_stay(
    make_proxy: ProxyClientFactory, fake: FakeUpstream, connect, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(fastlane, "KEEPALIVE_TIMEOUT", 0.4)
    monkeypatch.setattr(fastlane, "SWEEP_EVERY", 0.05)
    proxy = await make_proxy()
    connection = await connect(proxy)
    await connection.send(post(CHAT, chat()))  # a miss: aiohttp's handler joins the connection
    await connection.response()
    for _ in range(8):  # hits for twice the idle timeout: neither the lane nor aiohttp may close it
        await asyncio.sleep(0.1)
        await connection.send(post(CHAT, chat()))
        assert (await connection.response()).headers["x-cache"] == "HIT"

    assert await connection.closed_by_server(within=3)  # then idle: closed


async def test_a_long_pipeline_is_answered_whole_and_in_order(make_proxy: ProxyClientFactory, connect) -> None:  # type: ignore[no-untyped-def]
    # A small body limit makes the lane stop reading while its backlog is over about 17 KiB.
    proxy = await make_proxy(PROXY_MAX_REQUEST_BYTES="1KB")
    connection = await connect(proxy)
    prompts = [f"prompt {index % 7}" for index in range(300)]
    await connection.send(
        *(post(CHAT, chat(prompt), f"X-Request-Id: r{index}") for index, prompt in enumerate(prompts))
    )
    answers = [await connection.response() for _ in prompts]

    assert [answer.headers["x-request-id"] for answer in answers] == [f"r{index}" for index in range(300)]
    assert all(prompt.encode() in answer.body for prompt, answer in zip(prompts, answers, strict=True))
    assert [answer.headers["x-cache"] for answer in answers].count("MISS") == 7


async def test_stopping_closes_the_lanes_idle_connections(
    proxy: TestClient[web.Request, web.Application], connect
) -> None:  # type: ignore[no-untyped-def]
    await (await proxy.post(CHAT, json=chat_body())).read()
    connection = await connect(proxy)
    await connection.send(post(CHAT, chat()))
    assert (await connection.response()).headers["x-cache"] == "HIT"

    await proxy.server.close()

    assert await connection.closed_by_server(within=5)


async def test_browser_hits_from_an_allowed_origin_are_the_lanes_with_the_same_cors_headers(
    make_proxy: ProxyClientFactory, fake: FakeUpstream, connect
) -> None:  # type: ignore[no-untyped-def]
    request = post(CHAT, chat(), "Origin: https://app.example", "Accept-Encoding: gzip")
    (lane, _), (from_lane, from_aiohttp) = await lane_and_aiohttp(
        make_proxy, connect, request, PROXY_CORS_ORIGINS="https://app.example"
    )

    assert from_lane.headers["access-control-allow-origin"] == "https://app.example"
    assert from_lane.headers["vary"] == "Accept-Encoding, Origin"  # both, not only the last one set
    assert comparable(from_lane) == comparable(from_aiohttp)
    assert lane_hits(lane) == 1

    connection = await connect(lane)
    await connection.send(post(CHAT, chat(), "Origin: https://elsewhere.example"))
    refused = await connection.response()
    await connection.send(post(CHAT, chat(), "Origin: http://proxy.test"))  # its own origin (Host)
    same_origin = await connection.response()

    assert refused.status == 403  # the edge's refusal, through aiohttp
    assert "access-control-allow-origin" not in refused.headers
    assert same_origin.headers["x-cache"] == "HIT"
    assert "access-control-allow-origin" not in same_origin.headers
    assert lane_hits(lane) == 2
    assert fake.calls["/chat/completions"] == 1


def same_answer(answer: RawResponse) -> tuple[int, dict[str, str], str]:
    """An answer without the numbers the fake upstream counts up (ids, timestamps)."""
    body = answer.body
    if answer.headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    return answer.status, comparable(answer), re.sub(r"\d+", "N", body.decode())


@pytest.mark.parametrize(
    "headers",
    [
        (),  # a Content-Length, the head and the body in one write
        ("Accept-Encoding: gzip",),  # compressed on the way, chunked
        ("Origin: https://app.example",),  # an allowed browser origin: the CORS headers
    ],
)
async def test_a_miss_from_the_lane_is_the_answer_aiohttp_gives(
    make_proxy: ProxyClientFactory, connect, fake: FakeUpstream, headers: tuple[str, ...]
) -> None:  # type: ignore[no-untyped-def]
    request = post(CHAT, chat(), "X-Request-Id: same-id-2", *headers)
    env = {"PROXY_CORS_ORIGINS": "https://app.example"}
    (lane, plain), (from_lane, from_aiohttp) = await lane_and_aiohttp(make_proxy, connect, request, stored=False, **env)

    assert from_lane.headers["x-cache"] == from_aiohttp.headers["x-cache"] == "MISS"
    assert same_answer(from_lane) == same_answer(from_aiohttp)
    assert from_lane.headers["x-request-id"] == "same-id-2"
    assert lane_misses(lane) == 1
    assert lane_misses(plain) == 0
    assert fake.total_calls == 2


async def test_a_streamed_miss_from_the_lane_is_the_stream_aiohttp_gives(
    make_proxy: ProxyClientFactory, connect, fake: FakeUpstream
) -> None:  # type: ignore[no-untyped-def]
    request = post(CHAT, json.dumps(chat_body("Tell me about the Mona Lisa", stream=True)).encode())
    (lane, _), (from_lane, from_aiohttp) = await lane_and_aiohttp(make_proxy, connect, request, stored=False)

    assert from_lane.headers["transfer-encoding"] == "chunked"
    assert same_answer(from_lane) == same_answer(from_aiohttp)
    assert from_lane.body.rstrip().endswith(b"data: [DONE]")
    assert lane_misses(lane) == 1


async def test_an_upstream_error_from_the_lane_is_the_error_aiohttp_gives(
    make_proxy: ProxyClientFactory, connect
) -> None:  # type: ignore[no-untyped-def]
    request = post(CHAT, chat(), "X-Request-Id: same-id-3")
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9"}  # nothing listens there
    (lane, _), (from_lane, from_aiohttp) = await lane_and_aiohttp(make_proxy, connect, request, stored=False, **env)

    assert from_lane.status == from_aiohttp.status == 502
    assert from_lane.body == from_aiohttp.body
    assert comparable(from_lane) == comparable(from_aiohttp)
    assert "could not be reached" in from_lane.json()["error"]["message"]  # type: ignore[index]
    assert lane_misses(lane) == 1


async def test_identical_misses_on_two_connections_share_one_upstream_call(
    proxy: TestClient[web.Request, web.Application], connect, fake: FakeUpstream
) -> None:  # type: ignore[no-untyped-def]
    first, second = await connect(proxy), await connect(proxy)
    slow = post(CHAT, chat(), "x-fake-delay: 0.2")
    await first.send(slow)
    await asyncio.sleep(0.05)
    await second.send(slow)
    answers = [await first.response(), await second.response()]

    assert [answer.headers["x-cache"] for answer in answers] == ["MISS", "COALESCED"]
    assert answers[0].body == answers[1].body
    assert fake.total_calls == 1
    assert lane_misses(proxy) == 2
    await second.send(slow)
    assert (await second.response()).headers["x-cache"] == "HIT"


async def test_a_client_that_hangs_up_on_a_lane_miss_still_gets_it_stored(
    proxy: TestClient[web.Request, web.Application], connect, fake: FakeUpstream
) -> None:  # type: ignore[no-untyped-def]
    leaving = await connect(proxy)
    with capture_logs() as logs:
        await leaving.send(post(CHAT, chat(), "x-fake-delay: 0.1"))
        await asyncio.sleep(0.02)
        leaving.writer.close()
        await asyncio.sleep(0.3)

    staying = await connect(proxy)
    await staying.send(post(CHAT, chat()))
    answer = await staying.response()

    assert answer.headers["x-cache"] == "HIT"
    assert fake.total_calls == 1
    abandoned = [line for line in logs if line["event"] == "request"]
    assert [line["status"] for line in abandoned] == [499]  # nginx's "client closed request"
    assert "not written whole" in abandoned[0]["error"]


KEYED = {"OPENAI_API_KEY": "sk-held-by-the-proxy", "PROXY_ACCESS_KEYS": "frontend:" + hash_access_key("ask-frontend")}


async def test_requests_with_an_access_key_are_the_lanes_once_it_authenticates(
    make_proxy: ProxyClientFactory, connect, fake: FakeUpstream
) -> None:  # type: ignore[no-untyped-def]
    proxy = await make_proxy(**KEYED)
    connection = await connect(proxy)
    answers = []
    for credential in ("Authorization: Bearer ask-frontend", "X-Proxy-Key: ask-frontend", "X-Proxy-Key: ask-unknown"):
        await connection.send(post(CHAT, chat(), credential))
        answers.append(await connection.response())

    assert [answer.status for answer in answers] == [200, 200, 401]
    assert [answer.headers.get("x-cache") for answer in answers[:2]] == ["MISS", "HIT"]  # one entry for both
    assert answers[2].headers["www-authenticate"].startswith("Bearer")  # refused on aiohttp's path
    assert (lane_misses(proxy), lane_hits(proxy)) == (1, 1)
    seen = fake.seen[-1].headers
    assert seen["Authorization"] == "Bearer sk-held-by-the-proxy"
    assert "X-Proxy-Key" not in seen
    stats = await (await proxy.get("/redis/stats")).json()
    assert stats["refusals"]["access_denied"] == 1


async def test_a_miss_with_an_access_key_from_the_lane_is_the_answer_aiohttp_gives(
    make_proxy: ProxyClientFactory, connect
) -> None:  # type: ignore[no-untyped-def]
    request = post(CHAT, chat(), "X-Proxy-Key: ask-frontend", "X-Request-Id: same-id-4")
    (lane, _), (from_lane, from_aiohttp) = await lane_and_aiohttp(make_proxy, connect, request, stored=False, **KEYED)

    assert same_answer(from_lane) == same_answer(from_aiohttp)
    assert from_lane.headers["x-cache"] == "MISS"
    assert lane_misses(lane) == 1
