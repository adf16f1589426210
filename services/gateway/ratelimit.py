"""Rate limits for the JSON channel: fixed windows counted in Redis.

A window opens at a key's first request. One Lua script per key opens or
continues the window, counts the request and sets the key's expiry in one
atomic step, so concurrent gateway replicas share the count and a crash
between two commands cannot leave a counter that never expires. Time is
Redis's own clock (one clock for every replica) unless a ``clock`` is
given. Each script touches one key (hash-tagged), so it runs on a Redis
Cluster too; a ``REDIS_URL`` naming a cluster node gets a cluster client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from mesh.redis_client import RedisClient, connect

# KEYS: the counter (a hash: since, count). ARGV: window (ms), now (ms; "":
# Redis's clock). Times stay strings in Redis: a Lua number is a double.
# Returns the count with this request and the ms left in the window.
_HIT = """
local now = ARGV[2]
if now == '' then
  local t = redis.call('TIME')
  now = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
end
local window = tonumber(ARGV[1])
local since = redis.call('HGET', KEYS[1], 'since')
if not since or tonumber(now) - tonumber(since) >= window then
  since = now
  redis.call('HSET', KEYS[1], 'since', since, 'count', 0)
end
local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
local left = math.max(1, tonumber(since) + window - tonumber(now))
redis.call('PEXPIRE', KEYS[1], left)
return {count, left}
"""


class RateLimiterUnavailable(Exception):
    """The counters cannot be reached; callers decide whether to let requests through."""


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    count: int
    retry_after: float  # seconds until the window resets


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window: float) -> RateDecision:
        """Counts one request against ``key``: allowed while the count is within ``limit``."""
        ...


class RedisRateLimiter:
    """Counters in Redis: a standalone server, or a cluster when ``url`` names a cluster node."""

    def __init__(
        self,
        url: str,
        prefix: str = "gateway:ratelimit:w:",
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock`` (Unix seconds) replaces Redis's own, for tests where time is the subject."""
        self._url = url
        self._prefix = prefix
        self._clock = clock
        self._client: RedisClient | None = None
        self._script: AsyncScript | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisRateLimiter:
        return cls(url)

    async def start(self) -> None:
        # Short timeouts: the limiter must never be why a request is slow.
        client = await connect(self._url, timeout=0.5, connect_timeout=0.5)
        self._client = client
        self._script = client.register_script(_HIT)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = self._script = None

    async def hit(self, key: str, limit: int, window: float) -> RateDecision:
        window_ms = max(1, int(window * 1000))
        if self._script is None:
            raise RateLimiterUnavailable("the rate limiter is not started")
        try:
            now = "" if self._clock is None else str(int(self._clock() * 1000))
            count, ttl_ms = await self._script(keys=[f"{self._prefix}{key}"], args=[window_ms, now])
        except (RedisError, OSError) as exc:
            raise RateLimiterUnavailable(str(exc)) from exc
        count, ttl_ms = int(count), int(ttl_ms)
        return RateDecision(allowed=count <= limit, count=count, retry_after=max(ttl_ms, 0) / 1000)


def user_key(tenant_id: str, user_id: str) -> str:
    return "{" + f"{tenant_id}:{user_id}" + "}:user"


def tenant_key(tenant_id: str) -> str:
    return "{" + tenant_id + "}:tenant"
