"""Reading and parsing bodies: a bounded read, JSON or nothing, the data of an event stream."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import StreamReader


async def read_up_to(stream: StreamReader, limit: int) -> bytes | None:
    """The whole body, or None as soon as it grows past `limit` bytes (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while not stream.at_eof():
        # What has arrived already, without a trip through the event loop (a small body usually
        # comes whole with its headers); then wait for more, b"" at the end.
        chunk = stream.read_nowait() or await stream.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def json_or_none(data: bytes) -> Any:
    """The parsed JSON document, or None when the bytes are not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def sse_data(body: bytes, *, last: int | None = None) -> list[bytes]:
    """The `data:` payloads of an event stream, one per event (multi-line data joined by newlines);
    with `last`, only those of the last `last` events."""
    events = body.replace(b"\r\n", b"\n").split(b"\n\n")
    if last is not None:
        events = events[-(last + 1) :]  # the stream's closing blank line leaves one empty event
    payloads = []
    for event in events:
        lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        if lines:
            payloads.append(b"\n".join(lines))
    return payloads
