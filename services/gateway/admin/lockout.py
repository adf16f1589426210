"""Lockout after repeated failed logins, per user name and per client address.

Failures are counted in fixed windows in Redis (one Lua script per key:
increment, and set the expiry on the first failure), so every gateway replica
shares the counts. A name or address with ``limit`` failures in the window is
locked until the window ends; while locked even the right password is refused.
A successful login clears the name's count (not the address's).
"""

from __future__ import annotations

import hashlib

from services.gateway.admin.users import RedisClient

_FAIL = """
local count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return count
"""


class LoginThrottle:
    def __init__(
        self,
        redis: RedisClient,
        *,
        user_limit: int,
        ip_limit: int,
        window: int,
        prefix: str = "admin:",
    ) -> None:
        self._redis = redis
        self._user_limit = user_limit
        self._ip_limit = ip_limit
        self._window = window
        self._prefix = prefix
        self._script = redis.register_script(_FAIL)

    def _user_key(self, name: str) -> str:
        # Hashed: any text typed as a name becomes a bounded key.
        digest = hashlib.sha256(name.strip().lower().encode("utf-8", "surrogatepass"))
        return f"{self._prefix}fail:user:{digest.hexdigest()[:32]}"

    def _ip_key(self, address: str) -> str:
        return f"{self._prefix}fail:ip:{address[:64]}"

    async def locked(self, name: str, address: str) -> bool:
        user_count = await self._redis.get(self._user_key(name))
        ip_count = await self._redis.get(self._ip_key(address))
        return int(user_count or 0) >= self._user_limit or int(ip_count or 0) >= self._ip_limit

    async def failed(self, name: str, address: str) -> None:
        await self._script(keys=[self._user_key(name)], args=[self._window])
        await self._script(keys=[self._ip_key(address)], args=[self._window])

    async def succeeded(self, name: str) -> None:
        await self._redis.delete(self._user_key(name))

    async def clear(self, name: str) -> None:
        """Unlocks a name (the ``chatbot users unlock`` command)."""
        await self._redis.delete(self._user_key(name))
