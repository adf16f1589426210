"""Slowing down password guessing without letting anyone lock an administrator out.

Every sign-in attempt is charged in Redis *before* its password is verified,
in one Lua script, so concurrent guesses cannot all slip past the check while
scrypt runs; a success refunds it. Two counts are kept:

- per (user name, client address): ``free`` attempts, then each further one
  must wait a delay that doubles per recent failure (``base``, ``2*base``, ...,
  at most ``cap``). The count is forgotten ``window`` seconds after the last
  delay ends, and a successful sign-in clears it. Guessing a name from one
  address slows only that address down for that name: the same user signs in
  from elsewhere as usual.
- per client address, over all names: at most ``ip_limit`` attempts that were
  not successful within ``window`` seconds (password spraying).

Both keys of an address share a hash tag, so the script touches one slot of a
Redis Cluster. Times come from the Redis server, one clock for every replica.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from services.gateway.admin.users import RedisClient

_ATTEMPT = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local free, base, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ip_limit, window = tonumber(ARGV[4]), tonumber(ARGV[5])
local by_ip = tonumber(redis.call('GET', KEYS[2]) or '0')
if by_ip >= ip_limit then
  return {1, math.max(redis.call('PTTL', KEYS[2]), 1000)}
end
local fails = tonumber(redis.call('HGET', KEYS[1], 'fails') or '0')
local not_before = tonumber(redis.call('HGET', KEYS[1], 'not_before') or '0')
if now < not_before then
  return {2, not_before - now}
end
fails = fails + 1
local delay = 0
if fails >= free then
  delay = math.min(cap, base * 2 ^ math.min(fails - free, 40))
end
redis.call('HSET', KEYS[1], 'fails', fails, 'not_before', now + delay)
redis.call('PEXPIRE', KEYS[1], delay + window)
if redis.call('INCR', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], window)
end
return {0, 0}
"""

_SUCCEEDED = """
redis.call('DEL', KEYS[1])
local left = redis.call('DECR', KEYS[2])
if left <= 0 then redis.call('DEL', KEYS[2]) end
return 0
"""

ALLOWED = "allowed"
DELAYED = "delayed"
ADDRESS_LIMITED = "address_limited"


@dataclass(frozen=True)
class Verdict:
    """Whether an attempt may verify its password, and if not, how long to wait."""

    outcome: str
    retry_after_ms: int = 0

    @property
    def allowed(self) -> bool:
        return self.outcome == ALLOWED

    @property
    def retry_after_seconds(self) -> int:
        return max(1, -(-self.retry_after_ms // 1000))


def _digest(text: str) -> str:
    # Any text typed as a name or sent as an address becomes a bounded key.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class LoginThrottle:
    def __init__(
        self,
        redis: RedisClient,
        *,
        free_attempts: int,
        ip_limit: int,
        window: int,
        base_delay: float = 1.0,
        prefix: str = "admin:",
    ) -> None:
        self._redis = redis
        self._free = free_attempts
        self._ip_limit = ip_limit
        self._window_ms = window * 1000
        self._base_ms = max(1, int(base_delay * 1000))
        self._prefix = prefix
        self._attempt = redis.register_script(_ATTEMPT)
        self._succeeded = redis.register_script(_SUCCEEDED)

    def _keys(self, name: str, address: str) -> list[str]:
        tag = f"{self._prefix}fail:{{{_digest(address)}}}"
        return [f"{tag}:user:{_digest(name.strip().lower())}", f"{tag}:ip"]

    async def attempt(self, name: str, address: str) -> Verdict:
        """Charges one attempt, or says why it must wait; call before verifying."""
        outcome, wait_ms = await self._attempt(
            keys=self._keys(name, address),
            args=[self._free, self._base_ms, self._window_ms, self._ip_limit, self._window_ms],
        )
        if int(outcome) == 0:
            return Verdict(ALLOWED)
        return Verdict(ADDRESS_LIMITED if int(outcome) == 1 else DELAYED, int(wait_ms))

    async def succeeded(self, name: str, address: str) -> None:
        """Clears the name's failures from this address and refunds the attempt."""
        await self._succeeded(keys=self._keys(name, address))

    async def clear(self, name: str) -> int:
        """Forgets a name's failures from every address (``chatbot users unlock``)."""
        return await self._forget(f"{self._prefix}fail:*:user:{_digest(name.strip().lower())}")

    async def clear_all(self) -> int:
        """Forgets every name's failures and every address's count."""
        return await self._forget(f"{self._prefix}fail:*")

    async def _forget(self, pattern: str) -> int:
        keys = [key async for key in self._redis.scan_iter(match=pattern, count=1000)]
        for key in keys:  # one by one: in a cluster they live in different slots
            await self._redis.delete(key)
        return len(keys)
