"""The stack's own limits: minimal aiohttp servers the proxy is measured against.

- `ceiling`: reads the body and returns fixed bytes (what aiohttp itself can do on one core);
- `redis-pipelined`: hashes method, path and body, does one Redis GET and returns the stored
  bytes; the GETs that arrive in one event-loop tick go out together, packed by redis.asyncio
  into one write on one connection, as ioredis's auto-pipelining does (`WirePipeline`). Batches
  do not wait for each other: a redis.asyncio `Pipeline` per tick on one pooled connection (one
  batch in flight at a time) measured 10-15 % slower, so this is the higher limit;
- `redis-naive`: the same with one plain `await redis.get(key)` per request (a blocking pool of
  64 connections, as the proxy's).

The Redis variants behave as a minimal cache: a key that is not there yet is filled with the
fixed bytes, so one warm-up request makes every later one a hit. Answers are `--body-bytes`
long, or `--image-bytes` for paths ending in `/image` (the 60 KB image scenario).

Run alone: `python -m benchmarks.baselines --kind redis-pipelined --port 9200`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import redis.asyncio as redis
from aiohttp import web

KINDS = ("ceiling", "redis-pipelined", "redis-naive")
Getter = Callable[[str], Awaitable[bytes | None]]


class WirePipeline:
    """Auto-pipelining on the wire, as ioredis does: the GETs of one loop tick are packed by
    redis.asyncio into one write on a single connection and sent at once, without waiting for the
    replies of earlier batches; one reader task takes the replies in order. Several batches can be
    on the wire together, so the event loop never idles waiting for Redis.

    On a broken connection every GET in flight fails (the request answers 500, which wrk counts)
    and the connection is opened again; a GET never waits forever.
    """

    def __init__(self, url: str) -> None:
        self._pool = redis.ConnectionPool.from_url(url)
        self._connection: Any = None
        self._pending: list[tuple[str, asyncio.Future[bytes | None]]] = []
        self._in_flight: deque[asyncio.Future[bytes | None]] = deque()
        self._scheduled = False
        self._ready = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0

    async def start(self) -> None:
        await self._connect()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._connection is not None:
            await self._connection.disconnect()
        await self._pool.aclose()

    async def get(self, key: str) -> bytes | None:
        """The value at `key`, sent with the other GETs of this loop tick."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        self._pending.append((key, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    async def _connect(self) -> None:
        self._connection = self._pool.make_connection()
        await self._connection.connect()
        self._ready = True
        self._spawn(self._read_replies())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if not self._ready:
            for _key, future in batch:
                future.set_exception(ConnectionError("Redis connection is being reopened"))
            return
        self._in_flight.extend(future for _key, future in batch)
        packed = self._connection.pack_commands([("GET", key) for key, _future in batch])
        self.batches += 1
        self._spawn(self._send(packed))

    async def _send(self, packed: list[bytes]) -> None:
        try:
            await self._connection.send_packed_command(packed, check_health=False)
        except Exception as exc:
            await self._reset(exc)

    async def _read_replies(self) -> None:
        connection = self._connection
        while True:
            try:
                value = await connection.read_response(timeout=math.inf)
            except Exception as exc:
                if connection is self._connection:
                    await self._reset(exc)
                return
            if self._in_flight:
                future = self._in_flight.popleft()
                if not future.done():
                    future.set_result(value)

    async def _reset(self, exc: Exception) -> None:
        """Fail everything in flight and open a new connection."""
        if not self._ready:
            return
        self._ready = False
        while self._in_flight:
            future = self._in_flight.popleft()
            if not future.done():
                future.set_exception(exc)
        await self._connection.disconnect(nowait=True)
        while True:
            try:
                await self._connect()
                return
            except Exception:
                await asyncio.sleep(0.1)


def payload_for(path: str, body_bytes: int, image_bytes: int) -> tuple[bytes, str]:
    """The fixed answer and its content type for a request path."""
    if path.endswith("/image"):
        return b"\x89PNG" + b"\x00" * (image_bytes - 4), "image/png"
    filler = b'{"object":"chat.completion","content":"' + b"x" * max(0, body_bytes - 42) + b'"}'
    return filler[:body_bytes].ljust(body_bytes, b" "), "application/json"


def create_app(kind: str, *, redis_url: str, key_prefix: str, body_bytes: int, image_bytes: int) -> web.Application:
    """The baseline application of one `kind` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown baseline {kind!r}; one of {', '.join(KINDS)}")
    app = web.Application()
    answers = {False: payload_for("/", body_bytes, image_bytes), True: payload_for("/image", body_bytes, image_bytes)}

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/healthz", healthz)

    if kind == "ceiling":

        async def fixed(request: web.Request) -> web.Response:
            await request.read()
            body, content_type = answers[request.path.endswith("/image")]
            return web.Response(body=body, content_type=content_type)

        app.router.add_route("*", "/{tail:.*}", fixed)
        return app

    state: dict[str, Getter] = {}

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pipeline: WirePipeline | None = None
        if kind == "redis-pipelined":
            client = redis.Redis.from_url(redis_url)  # only for the SET of a first request
            pipeline = WirePipeline(redis_url)
            await pipeline.start()
            state["get"] = pipeline.get
        else:
            # A pool like the proxy's own: requests wait for one of 64 connections.
            client = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(redis_url, max_connections=64))
            state["get"] = client.get
        state["set"] = client.set  # type: ignore[assignment]
        yield
        if pipeline is not None:
            await pipeline.stop()
        await client.aclose()

    app.cleanup_ctx.append(resources)

    async def cached(request: web.Request) -> web.Response:
        body = await request.read()
        digest = hashlib.sha256(request.method.encode() + b"\0" + request.raw_path.encode() + b"\0" + body)
        key = f"{key_prefix}baseline:{digest.hexdigest()}"
        image = request.path.endswith("/image")
        value = await state["get"](key)
        if value is None:  # first time: store the fixed answer, so the next request is a hit
            value = answers[image][0]
            await state["set"](key, value, ex=3600)  # type: ignore[call-arg]
        return web.Response(body=value, content_type=answers[image][1])

    app.router.add_route("*", "/{tail:.*}", cached)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="a baseline server of the benchmark suite")
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--key-prefix", default="bench:")
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--image-bytes", type=int, default=61_440)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (the proxy runs on asyncio's loop)")
    args = parser.parse_args()
    app = create_app(
        args.kind,
        redis_url=args.redis_url,
        key_prefix=args.key_prefix,
        body_bytes=args.body_bytes,
        image_bytes=args.image_bytes,
    )
    loop: asyncio.AbstractEventLoop | None = None
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
