"""Forgetting sign-in failures, against real Redis: one name, or all of them under a prefix."""

from __future__ import annotations

import asyncio

from harness.redis_servers import RedisServer
from mesh.redis_client import connect
from services.gateway.admin.lockout import ADDRESS_LIMITED, ALLOWED, DELAYED, LoginThrottle
from services.gateway.admin.users import RedisClient


def _throttle(redis: RedisClient, prefix: str) -> LoginThrottle:
    # One free attempt, then a minute's wait; two attempts per address.
    return LoginThrottle(
        redis, free_attempts=1, ip_limit=2, window=60, base_delay=60, prefix=prefix
    )


def test_clear_all_forgets_every_name_and_address_under_its_prefix_only(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        redis = await connect(redis_server.url)
        try:
            mine, other = _throttle(redis, "lockout-a:"), _throttle(redis, "lockout-b:")
            for throttle in (mine, other):
                assert (await throttle.attempt("ann", "192.0.2.1")).allowed
                assert (await throttle.attempt("bob", "192.0.2.1")).allowed
                assert (await throttle.attempt("ann", "192.0.2.2")).allowed
            assert (await mine.attempt("carl", "192.0.2.1")).outcome == ADDRESS_LIMITED
            assert (await mine.attempt("ann", "192.0.2.2")).outcome == DELAYED

            # Two names from one address, one from another, and each address's count.
            assert await mine.clear_all() == 5
            assert (await mine.attempt("carl", "192.0.2.1")).outcome == ALLOWED
            assert (await mine.attempt("ann", "192.0.2.2")).outcome == ALLOWED
            assert (await other.attempt("ann", "192.0.2.2")).outcome == DELAYED
            # The attempts since are counted afresh: two names, two addresses.
            assert await mine.clear_all() == 4
        finally:
            await redis.aclose()

    asyncio.run(scenario())
