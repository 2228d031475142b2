"""Experiment, not part of the proxy: how fast could a hit path beneath aiohttp be?

A bare `asyncio.Protocol` parses HTTP/1.1 requests (Content-Length bodies only, no pipelining
subtleties, no errors handled), computes the proxy's real key (`proxy.cache_key`), looks it up
through the proxy's real auto-pipelined connection (`proxy.store.autopipeline`), decodes the entry
(remembered while the stored bytes are the same, as the proxy does) and writes the status line,
the stored headers, the cache headers and the body in one write. What it leaves out: the access
line, the counters, rate limits, CORS and access keys (together about 10-15 us per hit in the
proxy's profile).

Run it against entries the proxy stored (same Redis database and key prefix), then load it:

    python -m benchmarks.experiments.raw_hit_lane --port 18002 --seconds 20 &
    BENCH_METHOD=POST BENCH_BODY_FILE=chat.json wrk -t1 -c50 -d3s -s benchmarks/lua/fixed.lua \
        http://127.0.0.1:18002/v1/chat/completions
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchmarks.config import REPO
from proxy.cache_key import build_key, key_credential, key_input
from proxy.entry import Entry, decode_entry
from proxy.routes import RouteTable, load_route_table
from proxy.store.autopipeline import AutoPipeline, Endpoint


class HitLane(asyncio.Protocol):
    def __init__(self, table: RouteTable, lane: AutoPipeline, prefix: str, memo: dict[str, tuple[bytes, Entry]]):
        self.table, self.lane, self.prefix, self.memo = table, lane, prefix, memo
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            task = asyncio.ensure_future(self.answer(method, target, headers, body))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        match = self.table.match(method, target)
        assert match is not None
        route = match.route
        request = key_input(
            route=route,
            method=method,
            upstream_path=route.upstream_path_for(target, match.params),
            query_string="",
            body=body,
            headers=headers,
            credential=key_credential(headers),
        )
        key = self.prefix + build_key(route, match.template, match.params, request)
        raw = await self.lane.get(key)
        assert raw is not None, "store the entry through the proxy first"
        remembered = self.memo.get(key)
        if remembered is not None and remembered[0] == raw:
            entry = remembered[1]
        else:
            entry = decode_entry(raw)
            self.memo[key] = (raw, entry)
        now = time.time()
        stored = "".join(f"{name}: {value}\r\n" for name, value in entry.headers)
        head = (
            f"HTTP/1.1 {entry.status} OK\r\n{stored}Content-Length: {len(entry.body)}\r\nX-Cache: HIT\r\n"
            f"Age: {entry.age(now)}\r\nCache-Status: artstory-proxy; hit; "
            f"ttl={int(entry.stored_at + entry.fresh_for - now)}; detail={route.name}\r\n\r\n"
        )
        assert self.transport is not None
        self.transport.write(head.encode() + entry.body)


async def serve(port: int, redis_url: str, prefix: str, seconds: float) -> None:
    routes = REPO / "config" / "routes.toml"
    table = load_route_table(routes, upstreams=("openai", "artwork", "image"), default_ttl=3600)
    lane = AutoPipeline(Endpoint.from_url(redis_url), timeout=0.5)
    memo: dict[str, tuple[bytes, Entry]] = {}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HitLane(table, lane, prefix, memo), "127.0.0.1", port, backlog=1024)
    await asyncio.sleep(seconds)
    server.close()
    lane.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=18002)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--key-prefix", default="bench:")
    parser.add_argument("--seconds", type=float, default=20.0, help="stop after this long")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.redis_url, args.key_prefix, args.seconds))


if __name__ == "__main__":
    main()
