"""Rate limits for the JSON channel: fixed windows counted in Redis.

One Lua script per key increments the counter and sets its expiry in one
atomic step, so concurrent gateway replicas share the count and a crash
between the two commands cannot leave a counter that never expires. Each
script touches one key (hash-tagged), so it runs on a Redis Cluster too; a
``REDIS_URL`` naming a cluster node gets a cluster client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from mesh.redis_options import redis_options

_HIT = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
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

    def __init__(self, url: str, prefix: str = "gateway:ratelimit:") -> None:
        self._url = url
        self._prefix = prefix
        self._client: aioredis.Redis | aioredis.RedisCluster | None = None
        self._script: AsyncScript | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisRateLimiter:
        return cls(url)

    async def start(self) -> None:
        # Short timeouts: the limiter must never be why a request is slow.
        options: dict[str, Any] = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
        options.update(redis_options(self._url))  # credentials and TLS from REDIS_*
        client: aioredis.Redis | aioredis.RedisCluster = aioredis.Redis.from_url(
            self._url, **options
        )
        try:
            info = await client.info("cluster")
        except (RedisError, OSError):
            info = {}  # down for now: a standalone client, failing open until it is back
        if info.get("cluster_enabled") in (1, "1"):
            await client.aclose()
            client = aioredis.RedisCluster.from_url(self._url, **options)
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
            count, ttl_ms = await self._script(keys=[f"{self._prefix}{key}"], args=[window_ms])
        except (RedisError, OSError) as exc:
            raise RateLimiterUnavailable(str(exc)) from exc
        count, ttl_ms = int(count), int(ttl_ms)
        return RateDecision(allowed=count <= limit, count=count, retry_after=max(ttl_ms, 0) / 1000)


def user_key(tenant_id: str, user_id: str) -> str:
    return "{" + f"{tenant_id}:{user_id}" + "}:user"


def tenant_key(tenant_id: str) -> str:
    return "{" + tenant_id + "}:tenant"
