"""Server-sent event streams pass through as they arrive; only complete ones are stored."""

from __future__ import annotations

import asyncio

from tests.conftest import ProxyClientFactory, chat_body
from tests.fake_upstream import FakeUpstream


async def test_a_complete_stream_is_replayed_byte_for_byte(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy()
    miss = await proxy.post("/v1/chat/completions", json=chat_body(stream=True))
    assert miss.headers["Content-Type"].startswith("text/event-stream")
    streamed = await miss.read()
    assert streamed.rstrip().endswith(b"data: [DONE]")
    hit = await proxy.post("/v1/chat/completions", json=chat_body(stream=True))
    assert hit.headers["X-Cache"] == "HIT"
    assert hit.headers["Content-Type"].startswith("text/event-stream")
    assert await hit.read() == streamed
    assert fake.calls["/chat/completions"] == 1


async def test_a_stream_cut_short_is_never_stored(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    proxy = await make_proxy()
    for _ in range(2):
        response = await proxy.post("/v1/chat/completions", json=chat_body(stream=True), headers={"x-fake-cut": "1"})
        assert response.headers["X-Cache"] == "MISS"
        try:
            body = await response.read()
        except Exception:  # the truncated stream surfaces as a payload error: the client knows
            body = b""
        assert b"[DONE]" not in body
    assert fake.calls["/chat/completions"] == 2


async def test_a_client_that_hangs_up_does_not_stop_the_entry_being_stored(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    fake.latency = 0.1
    proxy = await make_proxy()
    request = asyncio.ensure_future(proxy.post("/v1/chat/completions", json=chat_body(stream=True)))
    await asyncio.sleep(0.03)
    request.cancel()
    await asyncio.sleep(0.3)
    fake.latency = 0
    hit = await proxy.post("/v1/chat/completions", json=chat_body(stream=True))
    assert hit.headers["X-Cache"] == "HIT"
    assert fake.calls["/chat/completions"] == 1
