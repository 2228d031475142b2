"""How the fast lane passes on an upstream answer it did not have: the bytes aiohttp would write.

A plain request (see proxy/fastlane.py) found absent from the cache joins or starts a flight
(`CacheProxy.plain_miss`) and the lane writes the flight's answer itself, as it arrives,
instead of lending the request to aiohttp: one parser, one request object and one task fewer
on every miss. The headers come from `responses.forward_plan`, shared with aiohttp's path, and
are laid out as aiohttp lays out a `StreamResponse`: the plan's headers (with the CORS ones for
an allowed origin), `Content-Encoding`, the framing (`Content-Length` or `Transfer-Encoding:
chunked`), a default `Content-Type`, `Date` and `Server`.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from typing import Final

from proxy.flight import Flight, FlightReader
from proxy.http1 import response_head
from proxy.middleware import error_body
from proxy.responses import ForwardPlan

_FORBIDDEN_HEADER_CHARS: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def has_body(status: int) -> bool:
    """Whether a response with this status carries a body (RFC 9110: not 1xx, 204 or 304)."""
    return status >= 200 and status not in (204, 304)


class MissFraming:
    """One answer's bytes: `head` once, `body` per chunk the flight gives, `end` after the last."""

    __slots__ = ("_compressor", "_head", "_left", "chunked", "sized")

    def __init__(self, status: int, plan: ForwardPlan, date: str) -> None:
        lines = [f"{name}: {value}" for name, value in plan.headers.items()]
        length = plan.length
        self._compressor = None
        if not has_body(status):
            self.chunked = False
        elif plan.gzip:
            lines.append("Content-Encoding: gzip")
            self._compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
            self.chunked = True
        else:
            self.chunked = length is None
        if self.chunked:
            lines.append("Transfer-Encoding: chunked")
        elif length is not None and has_body(status):
            lines.append(f"Content-Length: {length}")
        if has_body(status) and length != 0 and "Content-Type" not in plan.headers:
            lines.append("Content-Type: application/octet-stream")
        if any(_FORBIDDEN_HEADER_CHARS.search(line) for line in lines):  # as aiohttp's writer refuses them
            raise ValueError("a control character in the answer's headers")
        self._head = response_head(status, lines, date)
        # A known length is written with the first body bytes, as one segment; a stream's head at once.
        self.sized = length is not None and length > 0 and not self.chunked
        self._left = length or 0  # body bytes of a known length still to come

    @property
    def complete(self) -> bool:
        """Whether the body of a known length has been framed whole."""
        return self.sized and self._left <= 0

    def head(self) -> bytes:
        return self._head

    def body(self, chunk: bytes) -> bytes:
        self._left -= len(chunk)
        if self._compressor is not None:
            chunk = self._compressor.compress(chunk)
        if not self.chunked or not chunk:
            return chunk
        return b"%x\r\n%b\r\n" % (len(chunk), chunk)

    def end(self) -> bytes:
        if not self.chunked:
            return b""
        tail = b""
        if self._compressor is not None:
            flushed = self._compressor.flush()
            tail = b"%x\r\n%b\r\n" % (len(flushed), flushed) if flushed else b""
        return tail + b"0\r\n\r\n"


@dataclass(slots=True)
class PassedOn:
    """A miss the lane is passing on: the flight it reads (replaced when a joined flight's
    answer may not be shared), as what, the status written, and whether the client got it whole."""

    flight: Flight
    reader: FlightReader
    outcome: str
    status: int = 502
    whole: bool = False


def error_response(status: int, message: str, request_id: str, date: str) -> bytes:
    """An error as the edge's `json_error` answers it (`web.json_response`), as bytes."""
    body = json.dumps(error_body(status, message, request_id)).encode()
    lines = (
        "Content-Type: application/json; charset=utf-8",
        f"X-Request-ID: {request_id}",
        f"Content-Length: {len(body)}",
    )
    return response_head(status, lines, date) + body
