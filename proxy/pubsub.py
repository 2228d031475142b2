"""One Redis channel listened to for the life of the process, reconnecting after failures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from redis.exceptions import RedisError

from proxy.store.redis_clients import RedisClient

RECONNECT_DELAY = 1.0
CLOSE_TIMEOUT = 1.0
log = structlog.get_logger("proxy.pubsub")


class Subscription:
    """Calls `on_message(text)` for every message on `channel`, from a task started on demand."""

    def __init__(self, client: RedisClient, channel: str, on_message: Callable[[str], None]) -> None:
        self.client = client
        self.channel = channel
        self.on_message = on_message
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen(), name=f"listener {self.channel}")

    async def publish(self, text: str) -> None:
        await self.client.publish(self.channel, text)

    async def _listen(self) -> None:
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        data = message["data"]
                        self.on_message(data.decode() if isinstance(data, bytes) else data)
            except (RedisError, OSError) as exc:
                log.debug("listener lost its connection", channel=self.channel, error=str(exc))
            except Exception as exc:  # redis-py's cluster pub/sub can fail oddly mid-failover; listen again
                log.warning("listener failed; subscribing again", channel=self.channel, error=repr(exc))
            finally:
                # A dedicated connection, closed whole: no pooled connection is left mid-reply.
                # Bounded: redis-py's cluster pub/sub can hang while closing mid-failover.
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await asyncio.wait_for(pubsub.aclose(), CLOSE_TIMEOUT)  # type: ignore[no-untyped-call]
            await asyncio.sleep(RECONNECT_DELAY)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2 * CLOSE_TIMEOUT)
