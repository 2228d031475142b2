"""The benchmark's own Redis database: safety check, clean-up, filling and memory figures.

The suite writes only to its own database number (12 by default) under its key prefix, and
refuses to start when that database holds keys outside the prefix. Clean-up is `FLUSHDB` on that
database alone, never on database 0 and never `FLUSHALL`.
"""

from __future__ import annotations

import hashlib
import time

import redis

FILL_BATCH = 5_000


class ForeignKeys(RuntimeError):
    """The benchmark database holds keys that are not the benchmark's."""


class BenchRedis:
    """A synchronous client on the benchmark database."""

    def __init__(self, host: str, port: int, db: int, prefix: str) -> None:
        if db == 0:
            raise ValueError("the benchmarks never use Redis database 0: pick another with --redis-db")
        self.db = db
        self.prefix = prefix
        self.client = redis.Redis(host=host, port=port, db=db, socket_timeout=30)

    def check_own(self) -> None:
        """Raise `ForeignKeys` when the database holds a key outside the benchmark's prefix."""
        cursor = 0
        while True:
            cursor, keys = self.client.scan(cursor=cursor, count=1000)
            foreign = [key for key in keys if not key.decode(errors="replace").startswith(self.prefix)]
            if foreign:
                raise ForeignKeys(
                    f"Redis database {self.db} holds keys that are not the benchmark's "
                    f"(e.g. {foreign[0]!r}); choose a free database with --redis-db"
                )
            if cursor == 0:
                return

    def check_sample(self, samples: int = 20) -> None:
        """A quick version of `check_own` on random keys, for a database the run has filled."""
        for _ in range(samples):
            key = self.client.randomkey()
            if key is None:
                return
            if not key.decode(errors="replace").startswith(self.prefix):
                raise ForeignKeys(f"Redis database {self.db} holds a key that is not the benchmark's: {key!r}")

    def flush(self) -> None:
        """Empty the benchmark database (its keys sampled first), without blocking Redis."""
        self.check_sample()
        self.client.flushdb(asynchronous=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and int(self.client.info("memory").get("lazyfree_pending_objects", 0)):
            time.sleep(0.05)

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def server_version(self) -> str:
        return str(self.client.info("server").get("redis_version", "?"))

    def server_pid(self) -> int | None:
        """The Redis server's process id when it runs on this machine, else None."""
        host = self.client.connection_pool.connection_kwargs.get("host", "")
        if host not in ("127.0.0.1", "localhost", "::1"):
            return None
        pid = self.client.info("server").get("process_id")
        return int(pid) if pid else None

    def size(self) -> int:
        return int(self.client.dbsize())

    def find_keys(self, pattern: str, limit: int = 10) -> list[str]:
        """Up to `limit` keys matching `pattern` under the prefix."""
        found: list[str] = []
        for key in self.client.scan_iter(match=self.prefix + pattern, count=1000):
            found.append(key.decode())
            if len(found) >= limit:
                break
        return found

    def get(self, key: str) -> bytes | None:
        value = self.client.get(key)
        return value if isinstance(value, bytes) or value is None else bytes(value)

    def memory_usage(self, key: str) -> int | None:
        usage = self.client.memory_usage(key)
        return None if usage is None else int(usage)

    def fill(self, namespace: str, start: int, count: int, value: bytes, ttl_ms: int) -> None:
        """Store `count` copies of `value` under distinct digest keys `<prefix><namespace>:<sha256>`."""
        pipe = self.client.pipeline(transaction=False)
        for index in range(start, start + count):
            digest = hashlib.sha256(f"bench-fill-{index}".encode()).hexdigest()
            pipe.set(f"{self.prefix}{namespace}:{digest}", value, px=ttl_ms)
            if len(pipe) >= FILL_BATCH:
                pipe.execute()
        if len(pipe):
            pipe.execute()

    def close(self) -> None:
        self.client.close()
