"""The old import path of `harness.redis_servers`, for tests not moved to it yet."""

from harness.redis_servers import RedisCluster, RedisServer

__all__ = ["RedisCluster", "RedisServer"]
