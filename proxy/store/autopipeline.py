"""Commands auto-pipelined on one connection: every command issued in one event-loop tick goes out
in one write, and replies are matched to requests in order (Redis answers a connection's commands
in the order it received them). This is what ioredis calls auto-pipelining; it spares each command
a pooled connection checkout, a command object and a timeout of its own, which is most of what
redis-py costs per command. The hit path's GETs and a miss's lock, store and unlock go this way.

A request that is cancelled or times out while its GET is in flight simply stops waiting: its
reply is still read and dropped in its turn, so no reply ever reaches the wrong caller. The
connection has one deadline: when the oldest GET in flight has waited `timeout` seconds, the
connection is declared dead, every waiter gets a `ConnectionError`, and the next GET reconnects.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: TCP (optionally TLS) or a unix socket, with AUTH and SELECT."""

    host: str | None
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        if parts.scheme == "unix":
            db = int(query.get("db", ["0"])[0])
            return cls(None, 0, parts.path, db, _unquoted(parts.username), _unquoted(parts.password), False)
        path_db = parts.path.strip("/")
        db = int(path_db) if path_db.isdigit() else int(query.get("db", ["0"])[0])
        return cls(
            parts.hostname or "localhost",
            parts.port or 6379,
            None,
            db,
            _unquoted(parts.username),
            _unquoted(parts.password),
            parts.scheme == "rediss",
        )


def _unquoted(value: str | None) -> str | None:
    return unquote(value) if value else None


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _encoded(part: bytes | str | int) -> bytes:
    if isinstance(part, bytes):
        return part
    return part.encode() if isinstance(part, str) else b"%d" % part


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: AutoPipeline) -> None:
        self.owner = owner
        self.reader = hiredis.Reader()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        owner = self.owner
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not owner.inflight:
                owner.fail(ConnectionError("Redis sent a reply nobody asked for"))
                return
            waiter = owner.inflight.popleft()
            if not waiter.done():
                if isinstance(reply, hiredis.ReplyError):
                    waiter.set_exception(ConnectionError(f"Redis error: {reply}"))
                else:
                    waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.fail(ConnectionError(f"connection lost: {exc}" if exc else "connection closed"))


class AutoPipeline:
    """Redis commands over one connection, batched per event-loop tick."""

    def __init__(self, endpoint: Endpoint, *, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.inflight: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._batch: list[bytes] = []
        self._batch_waiters: list[asyncio.Future[Any]] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None

    async def get(self, key: str) -> bytes | None:
        reply = await self._send(_get_command(key))
        return reply if reply is None or isinstance(reply, bytes) else None

    def get_soon(self, key: str) -> asyncio.Future[Any] | None:
        """The reply of a GET as a future, queued at once; None while not connected (`get`
        connects). The reply is bytes or None; a failure is a `ConnectionError`."""
        if self._transport is None or self._transport.is_closing():
            return None
        return self._queue(_get_command(key))

    async def execute(self, *parts: bytes | str | int) -> Any:
        """Any command; its reply as hiredis gives it (bytes, int, list, None). A Redis error
        reply raises `ConnectionError` like a broken connection: callers fail open either way."""
        return await self._send(_command(*map(_encoded, parts)))

    async def _send(self, command: bytes) -> Any:
        if self._transport is None:
            await self._connect()
        # A caller that stops waiting cancels its waiter, which stays in `inflight`: its reply is
        # still read in its turn and dropped (`data_received` skips waiters that are done).
        return await self._queue(command)

    def _queue(self, command: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._batch.append(command)
        self._batch_waiters.append(waiter)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return waiter

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, waiters = self._batch, self._batch_waiters
        self._batch, self._batch_waiters = [], []
        if not batch:
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            error = ConnectionError("not connected")
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
            return
        self.inflight.extend(waiters)
        transport.write(b"".join(batch))
        if self._watchdog is None:
            self._arm_watchdog()

    def _arm_watchdog(self) -> None:
        oldest = self.inflight[0] if self.inflight else None
        self._watchdog = asyncio.get_running_loop().call_later(self.timeout, self._check, oldest)

    def _check(self, oldest: asyncio.Future[Any] | None) -> None:
        self._watchdog = None
        if not self.inflight:
            return
        if self.inflight[0] is oldest:  # no reply at all for `timeout` seconds
            self.fail(ConnectionError(f"Timeout reading from Redis after {self.timeout:g} s"))
            return
        self._arm_watchdog()

    def fail(self, error: Exception) -> None:
        """Give every waiter the error and drop the connection; the next GET reconnects."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        while self.inflight:
            waiter = self.inflight.popleft()
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()  # retrieved here too: a waiter that gave up must not warn
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def _connect(self) -> None:
        if self._connecting is not None:
            await asyncio.shield(self._connecting)
            return
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            endpoint = self.endpoint
            protocol_factory = lambda: _Protocol(self)  # noqa: E731
            if endpoint.path is not None:
                connect = loop.create_unix_connection(protocol_factory, endpoint.path)
            else:
                context = ssl.create_default_context() if endpoint.tls else None
                connect = loop.create_connection(
                    protocol_factory, endpoint.host or "localhost", endpoint.port, ssl=context
                )
            transport, _ = await asyncio.wait_for(connect, self.timeout)
            self._transport = transport
            setup = []
            if endpoint.password:
                parts = [b"AUTH", endpoint.username.encode()] if endpoint.username else [b"AUTH"]
                setup.append(_command(*parts, endpoint.password.encode()))
            if endpoint.db:
                setup.append(_command(b"SELECT", str(endpoint.db).encode()))
            setup.append(_command(b"CLIENT", b"SETNAME", b"artstory-proxy-get"))
            waiters = [loop.create_future() for _ in setup]
            self.inflight.extend(waiters)
            self._transport.write(b"".join(setup))
            if self._watchdog is None:
                self._arm_watchdog()
            for waiter in waiters:
                await waiter
            self._connecting.set_result(None)
        except asyncio.CancelledError:
            self.fail(ConnectionError("connecting was cancelled"))
            self._connecting.cancel()
            raise
        except (OSError, TimeoutError, ConnectionError) as exc:
            error = ConnectionError(f"cannot connect to Redis: {exc or type(exc).__name__}")
            self.fail(error)
            self._connecting.set_exception(error)
            self._connecting.exception()
            raise error from exc
        finally:
            self._connecting = None

    def close(self) -> None:
        self.fail(ConnectionError("closed"))


def _get_command(key: str) -> bytes:
    encoded = key.encode()
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(encoded), encoded)
