"""Login sessions: random tokens in a cookie, their state in Redis with a TTL.

Redis keeps only the SHA-256 of a token (``<prefix>session:<digest>``), so a
copy of Redis opens no session. A session holds the user's name, the user's
``generation`` when it was opened (a changed password or role ends it), its
CSRF token and when it started; it ends after ``idle`` seconds without a
request, and ``max_age`` after login in any case.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from services.gateway.admin.users import RedisClient, _text

TOKEN_BYTES = 32


@dataclass(frozen=True)
class Session:
    key: str
    username: str
    generation: int
    csrf_token: str
    created_ms: int

    def __repr__(self) -> str:  # tokens never reach a log line
        return f"Session(username={self.username!r})"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class SessionStore:
    def __init__(
        self, redis: RedisClient, *, idle: int, max_age: int, prefix: str = "admin:"
    ) -> None:
        self._redis = redis
        self._idle = idle
        self._max_age = max_age
        self._prefix = prefix

    def _key(self, token: str) -> str:
        return f"{self._prefix}session:{_digest(token)}"

    async def create(self, username: str, generation: int) -> tuple[str, Session]:
        """A new session; returns the token for the cookie (shown nowhere else)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = int(time.time() * 1000)
        session = Session(
            key=self._key(token),
            username=username,
            generation=generation,
            csrf_token=secrets.token_urlsafe(TOKEN_BYTES),
            created_ms=now,
        )
        await self._redis.hset(
            session.key,
            mapping={
                "username": username,
                "generation": str(generation),
                "csrf": session.csrf_token,
                "created_ms": str(now),
            },
        )
        await self._redis.expire(session.key, min(self._idle, self._max_age))
        return token, session

    async def load(self, token: str, *, touch: bool = True) -> Session | None:
        """The live session of ``token``, its idle time restarted (unless not ``touch``);
        None when gone."""
        if not token or len(token) > 256:
            return None
        key = self._key(token)
        raw = await self._redis.hgetall(key)
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        try:
            session = Session(
                key=key,
                username=fields["username"],
                generation=int(fields["generation"]),
                csrf_token=fields["csrf"],
                created_ms=int(fields["created_ms"]),
            )
        except (KeyError, ValueError):
            await self._redis.delete(key)
            return None
        age = time.time() - session.created_ms / 1000
        if age >= self._max_age:
            await self._redis.delete(key)
            return None
        if touch:
            await self._redis.expire(key, max(1, int(min(self._idle, self._max_age - age))))
        return session

    async def delete(self, session: Session) -> None:
        await self._redis.delete(session.key)
