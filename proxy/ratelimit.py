"""Rate limits and daily budgets per client, shared by every replica through Redis.

Two token buckets per client: one for requests that reach the upstream (misses, refreshes,
bypasses: `PROXY_RATE_LIMIT_UPSTREAM`), one, much larger, for hits (`PROXY_RATE_LIMIT_HITS`),
which cost nothing upstream. Each check is one atomic Lua script in Redis (one round trip),
timed by the Redis server's clock so replicas agree. A daily budget in US dollars
(`PROXY_DAILY_BUDGET_USD`) is checked in the same script and spent from the `usage` of upstream
answers times the price table. With Redis unreachable, limits fall back to buckets in this
process (each replica then allows the full limit on its own) and `/redis/health` says so.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from proxy.constants import INTERNAL_NAMESPACE
from proxy.store.redis import REDIS_FAILURES
from proxy.store.redis_clients import RedisClient

_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$", re.IGNORECASE)
_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
BUDGET_KEY_TTL = 2 * 86400
REDIS_RETRY_INTERVAL = 1.0  # while Redis is down, try it again at most this often
log = structlog.get_logger("proxy.ratelimit")

# KEYS[1] bucket, KEYS[2] budget (when there is one), ARGV: capacity, refill per second, budget.
# Both keys carry the client in a {hash tag}, so on a Redis Cluster they share a slot.
# Returns {allowed (1/0), milliseconds until allowed, reason (0 ok, 1 rate, 2 budget)}.
_TAKE = """
if #KEYS > 1 and ARGV[3] ~= '' then
  local spent = tonumber(redis.call('GET', KEYS[2]) or '0')
  if spent >= tonumber(ARGV[3]) then return {0, -1, 2} end
end
if ARGV[1] == '' then return {1, 0, 0} end
local capacity, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens, stamp = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, stamp = capacity, now end
tokens = math.min(capacity, tokens + (now - stamp) / 1000 * rate)
local allowed, wait = 0, 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 else wait = math.ceil((1 - tokens) / rate * 1000) end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
if allowed == 1 then return {1, 0, 0} end
return {0, wait, 1}
"""


@dataclass(frozen=True, slots=True)
class Limit:
    """`count` requests per `seconds`, as a bucket of `count` tokens refilled at that rate."""

    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    @classmethod
    def parse(cls, raw: str) -> Limit:
        """`60/min`, `10/s`, `1000/5m`, `5000/day`."""
        match = _LIMIT.match(raw)
        if not match or int(match.group(1)) < 1:
            raise ValueError(f"{raw!r} is not a limit such as 60/min, 10/s or 5000/day")
        count, multiple, unit = match.groups()
        return cls(int(count), (int(multiple) if multiple else 1) * _UNITS[unit.lower()])


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: int = 0
    reason: str | None = None


ALLOWED = Decision(True)


class Limiter:
    def __init__(
        self,
        client: RedisClient | None,
        *,
        key_prefix: str,
        upstream: Limit | None,
        hits: Limit | None,
        daily_budget: float | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.hits = hits
        self.daily_budget = daily_budget
        self._prefix = f"{key_prefix}{INTERNAL_NAMESPACE}:"
        self._clock = clock
        self._local: dict[str, tuple[float, float]] = {}
        self._local_spend: dict[str, float] = {}
        self.degraded = False
        self._retry_redis_at = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.upstream or self.hits or self.daily_budget)

    @property
    def mode(self) -> str:
        if not self.enabled:
            return "off"
        return (
            "local (Redis unreachable: each replica counts on its own)" if self.degraded or not self.client else "redis"
        )

    async def check_upstream(self, client: str) -> Decision:
        """May this client's request reach the upstream? Takes one token when it may."""
        if not self.upstream and not self.daily_budget:
            return ALLOWED
        return await self._take("up", client, self.upstream, with_budget=True)

    async def check_hit(self, client: str) -> Decision:
        if not self.hits:
            return ALLOWED
        return await self._take("hit", client, self.hits, with_budget=False)

    async def spend(self, client: str, dollars: float) -> None:
        """Count an upstream answer's cost against the client's budget for today (UTC)."""
        if not self.daily_budget or dollars <= 0:
            return
        key = self._budget_key(client)
        if self.client is not None:
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.incrbyfloat(key, dollars)
                    pipe.expire(key, BUDGET_KEY_TTL)
                    await pipe.execute()
                return
            except REDIS_FAILURES as exc:
                self._degrade(exc)
        self._local_spend[key] = self._local_spend.get(key, 0.0) + dollars

    async def _take(self, kind: str, client: str, limit: Limit | None, *, with_budget: bool) -> Decision:
        bucket = f"{self._prefix}rl:{kind}:{{{client}}}"
        budget_key = self._budget_key(client) if with_budget and self.daily_budget else ""
        if self.client is not None and (not self.degraded or time.monotonic() >= self._retry_redis_at):
            keys = [bucket, budget_key] if budget_key else [bucket]
            try:
                allowed, wait_ms, reason = await self.client.eval(
                    _TAKE,
                    len(keys),
                    *keys,
                    str(limit.count) if limit else "",
                    str(limit.rate) if limit else "",
                    str(self.daily_budget) if budget_key else "",
                )
                self._recovered()
                return self._decision(int(allowed), int(wait_ms), int(reason))
            except REDIS_FAILURES as exc:
                self._degrade(exc)
        return self._take_locally(bucket, budget_key, limit)

    def _take_locally(self, bucket: str, budget_key: str, limit: Limit | None) -> Decision:
        if budget_key and self._local_spend.get(budget_key, 0.0) >= (self.daily_budget or 0):
            return self._decision(0, -1, 2)
        if limit is None:
            return ALLOWED
        now = time.monotonic()
        tokens, stamp = self._local.get(bucket, (float(limit.count), now))
        tokens = min(float(limit.count), tokens + (now - stamp) * limit.rate)
        if tokens >= 1:
            self._local[bucket] = (tokens - 1, now)
            return ALLOWED
        self._local[bucket] = (tokens, now)
        return self._decision(0, math.ceil((1 - tokens) / limit.rate * 1000), 1)

    def _decision(self, allowed: int, wait_ms: int, reason: int) -> Decision:
        if allowed:
            return ALLOWED
        if reason == 2:
            return Decision(False, self._seconds_to_midnight(), "daily budget spent")
        return Decision(False, max(1, math.ceil(wait_ms / 1000)), "rate limit")

    def _budget_key(self, client: str) -> str:
        day = dt.datetime.fromtimestamp(self._clock(), dt.UTC).strftime("%Y-%m-%d")
        return f"{self._prefix}budget:{{{client}}}:{day}"

    def _seconds_to_midnight(self) -> int:
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        midnight = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return max(1, math.ceil((midnight - now).total_seconds()))

    def _degrade(self, exc: BaseException) -> None:
        if not self.degraded:
            log.warning("rate limits fall back to this process: Redis is unreachable", error=str(exc))
        self.degraded = True
        self._retry_redis_at = time.monotonic() + REDIS_RETRY_INTERVAL

    def _recovered(self) -> None:
        if self.degraded:
            log.info("rate limits are shared through Redis again")
        self.degraded = False
