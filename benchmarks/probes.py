"""Small asyncio clients for what wrk cannot measure: stream timings and coalesced misses.

They run in the driver process, which is pinned to the load CPUs.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from dataclasses import dataclass

import aiohttp


@dataclass
class StreamTiming:
    """One streamed answer: time to first and to last body byte (ms), and how it ended."""

    ttfb_ms: float
    ttlb_ms: float
    status: int
    x_cache: str
    complete: bool


async def stream_timings(url: str, bodies: list[bytes], *, headers: dict[str, str] | None = None) -> list[StreamTiming]:
    """POST each body in turn (one at a time, one kept-alive connection) and time its stream."""
    timings: list[StreamTiming] = []
    send_headers = {"Content-Type": "application/json", **(headers or {})}
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        for body in bodies:
            started = time.perf_counter()
            async with session.post(url, data=body, headers=send_headers) as response:
                first = await response.content.readany()
                first_at = time.perf_counter()
                received = [first]
                while chunk := await response.content.readany():
                    received.append(chunk)
                done_at = time.perf_counter()
                whole = b"".join(received)
                if response.headers.get("Content-Encoding", "").lower() == "gzip":
                    whole = gzip.decompress(whole)  # a hit may replay the stored gzip bytes
                timings.append(
                    StreamTiming(
                        ttfb_ms=(first_at - started) * 1000,
                        ttlb_ms=(done_at - started) * 1000,
                        status=response.status,
                        x_cache=response.headers.get("X-Cache", ""),
                        complete=b"data: [DONE]" in whole,
                    )
                )
    return timings


@dataclass
class Answer:
    """One answer of a coalescing round: when it was complete, its status and X-Cache."""

    done_at: float
    status: int
    x_cache: str


def http_request(method: str, path: str, port: int, body: bytes, headers: dict[str, str]) -> bytes:
    """The raw bytes of an HTTP/1.1 request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """Read one HTTP/1.1 response (Content-Length or chunked) and note when it was complete."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return Answer(time.perf_counter(), int(status_line.split()[1]), headers.get("x-cache", ""))


@dataclass
class CoalesceRound:
    """N identical concurrent requests: when each was answered, relative to the send (ms)."""

    sent: int
    done_ms: list[float]
    statuses: dict[int, int]
    x_cache: dict[str, int]

    @property
    def leader_ms(self) -> float:
        return min(self.done_ms)

    @property
    def last_ms(self) -> float:
        return max(self.done_ms)

    @property
    def spread_ms(self) -> float:
        """How long after the first answer the last follower was answered."""
        return self.last_ms - self.leader_ms


async def coalesce_round(port: int, path: str, body: bytes, count: int, headers: dict[str, str]) -> CoalesceRound:
    """Open `count` connections, then write the same request on all of them at once."""
    request = http_request("POST", path, port, body, {"Content-Type": "application/json", **headers})
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
    try:
        await asyncio.sleep(0.2)  # let the server accept every connection before the burst
        started = time.perf_counter()
        for _reader, writer in connections:
            writer.write(request)
        answers = await asyncio.wait_for(asyncio.gather(*(read_answer(reader) for reader, _ in connections)), 60)
    finally:
        for _reader, writer in connections:
            writer.close()
    statuses: dict[int, int] = {}
    x_cache: dict[str, int] = {}
    for answer in answers:
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        x_cache[answer.x_cache or "-"] = x_cache.get(answer.x_cache or "-", 0) + 1
    return CoalesceRound(
        sent=count,
        done_ms=[(answer.done_at - started) * 1000 for answer in answers],
        statuses=statuses,
        x_cache=x_cache,
    )


async def upstream_calls(port: int, path: str) -> int:
    """How many calls the fake upstream has received on `path` (its `/__stats` endpoint)."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/__stats") as response:
        stats = await response.json()
    return int(stats["calls"].get(path, 0))
