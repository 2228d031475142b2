"""The fast lane's framing of a passed-on answer (proxy/lane_misses.py), byte for byte."""

from __future__ import annotations

import gzip

import pytest
from multidict import CIMultiDict

from proxy.lane_misses import MissFraming
from proxy.responses import ForwardPlan

DATE = "Thu, 26 Nov 2026 12:00:00 GMT"


def plan(length: int | None, *, gzip_on: bool = False, **headers: str) -> ForwardPlan:
    return ForwardPlan(CIMultiDict({"Content-Type": "application/json", **headers}), length, gzip_on)


def head_lines(framing: MissFraming) -> list[str]:
    return framing.head().decode().split("\r\n")


def test_a_known_length_is_framed_with_its_length_and_no_chunks() -> None:
    framing = MissFraming(200, plan(11), DATE)
    assert head_lines(framing)[:3] == ["HTTP/1.1 200 OK", "Content-Type: application/json", "Content-Length: 11"]
    assert framing.sized
    assert framing.body(b"hello ") == b"hello "
    assert not framing.complete
    assert framing.body(b"world") == b"world"
    assert framing.complete
    assert framing.end() == b""


def test_a_stream_is_chunked_and_ends_with_the_last_chunk() -> None:
    framing = MissFraming(200, plan(None), DATE)
    assert "Transfer-Encoding: chunked" in head_lines(framing)
    assert not framing.sized
    assert framing.body(b"data: 1\n\n") == b"9\r\ndata: 1\n\n\r\n"
    assert framing.body(b"") == b""  # never a zero-size chunk before the end
    assert framing.end() == b"0\r\n\r\n"


def test_gzip_on_the_way_decodes_to_the_answer() -> None:
    framing = MissFraming(200, plan(None, gzip_on=True), DATE)
    assert "Content-Encoding: gzip" in head_lines(framing)
    wire = b"".join([framing.body(b'{"a": 1, '), framing.body(b'"b": 2}'), framing.end()])
    chunks, rest = [], wire
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(rest[:size])
        rest = rest[size + 2 :]
    assert gzip.decompress(b"".join(chunks)) == b'{"a": 1, "b": 2}'


def test_an_answer_without_a_body_has_no_framing_headers() -> None:
    lines = head_lines(MissFraming(204, plan(None), DATE))
    assert lines[0] == "HTTP/1.1 204 No Content"
    assert not any(line.startswith(("Content-Length", "Transfer-Encoding")) for line in lines)


def test_a_header_with_a_control_character_is_refused_as_aiohttp_refuses_it() -> None:
    with pytest.raises(ValueError, match="control character"):
        MissFraming(200, plan(5, **{"X-Injected": "a\r\nSet-Cookie: b"}), DATE)
