"""The fast lane's strict request-head reader: what it frames, and what it leaves to aiohttp."""

from __future__ import annotations

import pytest

from proxy.http1 import INCOMPLETE, MAX_HEAD_BYTES, UNFRAMED, RequestHead, read_head


def test_a_plain_post_is_framed_with_its_body_length() -> None:
    raw = (
        b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nAuthorization:  Bearer k \r\n\r\n{}"
    )
    head = read_head(raw)
    assert isinstance(head, RequestHead)
    assert (head.method, head.raw_path, head.query_string) == ("POST", "/v1/chat/completions", "x=1")
    assert head.headers["authorization"] == "Bearer k"  # names lower-cased, values trimmed
    assert head.length == 2
    assert raw[head.size :] == b"{}"
    assert not head.repeated


def test_a_head_still_arriving_is_incomplete() -> None:
    assert read_head(b"GET / HTTP/1.1\r\nHost: h\r\n") is INCOMPLETE
    assert read_head(b"GET / HTTP/1.1\r\nHost: " + b"h" * MAX_HEAD_BYTES) is UNFRAMED  # never ends: aiohttp refuses it


@pytest.mark.parametrize(
    "raw",
    [
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nName: caf\xc3\xa9\r\n\r\n",
        b"GET http://elsewhere/ HTTP/1.1\r\n\r\n",
        b"GET /a#b HTTP/1.1\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
    ],
    ids=[
        "chunked",
        "two-lengths",
        "signed-length",
        "list-length",
        "expect",
        "upgrade",
        "http-1.0",
        "bare-lf",
        "obs-fold",
        "space-in-name",
        "non-ascii",
        "absolute-target",
        "fragment",
        "double-space",
    ],
)
def test_anything_but_the_plainest_framing_is_left_to_aiohttp(raw: bytes) -> None:
    assert read_head(raw) is UNFRAMED


def test_repeated_headers_are_flagged_not_merged_silently() -> None:
    head = read_head(b"GET / HTTP/1.1\r\nAccept: a\r\nAccept: b\r\n\r\n")
    assert isinstance(head, RequestHead)
    assert head.repeated  # the lane hands such a request to aiohttp, which sees both values
