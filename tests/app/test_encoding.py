"""Content encoding: stored once, gzip only for clients that take it, images never compressed again."""

from __future__ import annotations

import gzip
import json

import aiohttp
import pytest

from tests.conftest import ProxyClientFactory, chat_body
from tests.fake_upstream import FakeUpstream

LONG_PROMPT = "Tell me every detail of the brushwork in The Starry Night. " * 40


@pytest.mark.parametrize("upstream_gzip", [False, True])
async def test_encoding_matrix(make_proxy: ProxyClientFactory, fake: FakeUpstream, upstream_gzip: bool) -> None:
    proxy = await make_proxy()
    url = str(proxy.make_url("/v1/chat/completions"))
    upstream = {"x-fake-gzip": "1"} if upstream_gzip else {}
    expected: str | None = None
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for round_ in ("miss", "hit", "hit"):
            for accept in ("gzip", "identity") if round_ == "hit" else ("identity",):
                headers = {"Accept-Encoding": accept, **upstream}
                async with session.post(url, json=chat_body(LONG_PROMPT), headers=headers) as response:
                    raw = await response.read()
                    assert response.headers["X-Cache"] == ("MISS" if round_ == "miss" else "HIT")
                    assert "Accept-Encoding" in response.headers.get("Vary", "")
                    if accept == "gzip":
                        assert response.headers["Content-Encoding"] == "gzip"
                        text = gzip.decompress(raw).decode()
                        assert len(raw) < len(text) / 3
                    else:
                        assert "Content-Encoding" not in response.headers
                        text = raw.decode()
                    document = json.loads(text)
                    expected = expected or text
                    assert text == expected
                    assert LONG_PROMPT.strip() in document["choices"][0]["message"]["content"]
    assert fake.calls["/chat/completions"] == 1


async def test_a_miss_is_compressed_for_a_client_that_accepts_gzip(
    make_proxy: ProxyClientFactory, fake: FakeUpstream
) -> None:
    proxy = await make_proxy()
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(
            str(proxy.make_url("/v1/chat/completions")),
            json=chat_body(LONG_PROMPT),
            headers={"Accept-Encoding": "gzip"},
        ) as response,
    ):
        assert response.headers["X-Cache"] == "MISS"
        assert response.headers["Content-Encoding"] == "gzip"
        assert json.loads(gzip.decompress(await response.read()))["object"] == "chat.completion"


async def test_gzip_refused_with_q_zero_is_never_sent(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy()
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for _ in range(2):
            async with session.post(
                str(proxy.make_url("/v1/chat/completions")),
                json=chat_body(LONG_PROMPT),
                headers={"Accept-Encoding": "gzip;q=0, *;q=1"},
            ) as response:
                assert "Content-Encoding" not in response.headers
                json.loads(await response.read())


async def test_images_are_not_compressed_again(make_proxy: ProxyClientFactory, fake: FakeUpstream) -> None:
    fake.image_bytes = 60_000
    proxy = await make_proxy()
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for expected in ("MISS", "HIT"):
            async with session.get(
                str(proxy.make_url("/artworks/x/image")), headers={"Accept-Encoding": "gzip"}
            ) as response:
                assert response.headers["X-Cache"] == expected
                assert "Content-Encoding" not in response.headers
                assert len(await response.read()) == 60_000


async def test_streams_are_never_compressed_on_the_way_through(make_proxy: ProxyClientFactory) -> None:
    proxy = await make_proxy()
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(
            str(proxy.make_url("/v1/chat/completions")),
            json=chat_body(LONG_PROMPT, stream=True),
            headers={"Accept-Encoding": "gzip"},
        ) as response,
    ):
        assert response.headers["X-Cache"] == "MISS"
        assert "Content-Encoding" not in response.headers
        assert (await response.read()).rstrip().endswith(b"data: [DONE]")
