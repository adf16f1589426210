"""The one way a part of the mesh opens a Redis client.

``REDIS_URL`` may name a standalone server or any node of a cluster: the
client asks the server (``INFO cluster``) and becomes a cluster client when
it is one. Credentials and TLS come from ``REDIS_*`` (``mesh.redis_options``).
A server that does not answer yet gets a standalone client, which fails until
it is back.

The NLU never talks to Redis and never imports this module, so its
environment needs no ``redis`` (``mesh/__init__`` does not import it either).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.exceptions import RedisError

from mesh.config import Env
from mesh.redis_options import redis_options

RedisClient = Redis | RedisCluster

# How long a command waits for a free connection of a bounded pool.
_POOL_WAIT_S = 5.0


async def connect(
    url: str,
    *,
    timeout: float | None = 5.0,
    connect_timeout: float = 2.0,
    max_connections: int | None = None,
    env: Env | None = None,
) -> RedisClient:
    """A client of ``url``: a cluster client when the server is a cluster node.

    ``timeout`` bounds the wait for a reply (None for clients that serve
    blocking pops). With ``max_connections`` the pool is bounded and a command
    waits for a free connection instead of failing. Raises ``ConfigError``
    for ``REDIS_*`` settings that cannot work.
    """
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout}
    options.update(redis_options(url, env))
    single: RedisClient
    if max_connections is None:
        single = Redis.from_url(url, **options)
    else:
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=_POOL_WAIT_S, **options
        )
        single = Redis.from_pool(pool)  # closing the client closes the pool
    try:
        info = await single.info("cluster")
    except (RedisError, OSError):
        return single
    if info.get("cluster_enabled") not in (1, "1"):
        return single
    await single.aclose()
    if max_connections is not None:
        options["max_connections"] = max_connections
    return RedisCluster.from_url(url, **options)
