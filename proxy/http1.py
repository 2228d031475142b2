"""HTTP/1.1 framing for the fast lane (proxy/fastlane.py): a strict reader of request heads, and
response heads laid out as aiohttp writes them.

It accepts only the plainest requests: ASCII, CRLF line ends, `METHOD /target HTTP/1.1`, header
names that are tokens, and a body framed by at most one all-digit `Content-Length`. Everything
else - chunked bodies, `Expect`, `Upgrade`, HTTP/1.0, obsolete line folding, a bare LF, a head
over `MAX_HEAD_BYTES` - is `UNFRAMED`: the connection is then left to aiohttp's own parser, which
answers it or refuses it exactly as it always does. So the fast lane can never frame a request
differently from aiohttp (no request smuggling between the two).

`response_head` writes the status line, the given header lines, then `Date` and `Server`, as
aiohttp ends every response head.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from aiohttp.http import SERVER_SOFTWARE

MAX_HEAD_BYTES: Final = 16 * 1024  # aiohttp's own limits are 8190 bytes per line
MAX_CONTENT_LENGTH_DIGITS: Final = 15
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\t\x20-\x7e]*")
_TARGET = re.compile(r"/[\x21-\x7e]*")
_FRAMING_HEADERS = frozenset({"transfer-encoding", "expect", "upgrade", "te", "http2-settings"})
_REASONS: Final = {status.value: status.phrase for status in HTTPStatus}


def response_head(status: int, header_lines: Iterable[str], date: str) -> bytes:
    """A response's head: the status line, `header_lines` (`Name: value`), `Date` and `Server`."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}", *header_lines, f"Date: {date}"]
    lines.append(f"Server: {SERVER_SOFTWARE}\r\n\r\n")
    return "\r\n".join(lines).encode()


@dataclass(slots=True)
class RequestHead:
    """One request head, framed: `size` bytes of head, then `length` bytes of body."""

    method: str
    raw_path: str
    query_string: str
    headers: dict[str, str]  # lower-case names; the last value of a repeated name
    repeated: bool  # some header name appears more than once
    length: int
    size: int


class _Incomplete:
    def __repr__(self) -> str:
        return "INCOMPLETE"


class _Unframed:
    def __repr__(self) -> str:
        return "UNFRAMED"


INCOMPLETE: Final = _Incomplete()  # the head has not arrived whole yet
UNFRAMED: Final = _Unframed()  # not a request this reader frames: aiohttp must read the connection


def read_head(buffer: bytes | bytearray) -> RequestHead | _Incomplete | _Unframed:
    """The head at the start of `buffer`, `INCOMPLETE`, or `UNFRAMED`."""
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
    if end < 0:
        return UNFRAMED if len(buffer) >= MAX_HEAD_BYTES else INCOMPLETE
    raw = bytes(buffer[:end])
    if not raw.isascii() or raw.count(b"\n") != raw.count(b"\r\n"):
        return UNFRAMED
    lines = raw.decode("ascii").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1" or not _TOKEN.fullmatch(parts[0]):
        return UNFRAMED
    method, target = parts[0], parts[1]
    if not _TARGET.fullmatch(target) or "#" in target:
        return UNFRAMED
    headers: dict[str, str] = {}
    repeated = False
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            return UNFRAMED
        name = name.lower()
        if name in headers:
            repeated = True
            if name == "content-length":
                return UNFRAMED
        headers[name] = value.strip(" \t")
    if not _FRAMING_HEADERS.isdisjoint(headers) or "upgrade" in headers.get("connection", "").lower():
        return UNFRAMED
    declared = headers.get("content-length")
    if declared is None:
        length = 0
    elif declared.isdigit() and len(declared) <= MAX_CONTENT_LENGTH_DIGITS:
        length = int(declared)
    else:
        return UNFRAMED
    path, _, query = target.partition("?")
    return RequestHead(method, path, query, headers, repeated, length, end + 4)
