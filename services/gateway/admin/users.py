"""Console users, kept in Redis: a name, a password hash, a role and tenant grants.

One hash per user (``<prefix>user:<name>``) and a set of the names
(``<prefix>users``); every command touches one key, so a Redis Cluster works.
``generation`` changes whenever the password, role or grants change, and
sessions opened before no longer count. Storing the same password again at a
higher hashing cost (on sign-in) is not a change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster

from services.gateway.admin import passwords

ROLE_VIEWER = "viewer"
ROLE_ADMIN = "admin"
ROLES = (ROLE_VIEWER, ROLE_ADMIN)
ALL_TENANTS = "*"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")

RedisClient = Redis | RedisCluster

# Replaces the hash only if it is still the one verified (not changed meanwhile).
_REHASH = """
if redis.call('HGET', KEYS[1], 'password') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'password', ARGV[2])
  return 1
end
return 0
"""


class InvalidUser(ValueError):
    """A name, role or grant that cannot be stored."""


def normalize_name(name: str) -> str:
    name = name.strip().lower()
    if not _NAME.match(name):
        raise InvalidUser(
            "a user name is 1-64 lowercase letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def normalize_tenants(tenants: Iterable[str]) -> tuple[str, ...]:
    found = sorted({t.strip() for t in tenants if t.strip()})
    if not found:
        raise InvalidUser("grant at least one tenant (or '*' for all)")
    if ALL_TENANTS in found:
        return (ALL_TENANTS,)
    return tuple(found)


@dataclass(frozen=True)
class User:
    name: str
    role: str
    tenants: tuple[str, ...]
    password_hash: str = ""
    generation: int = 0
    created_ms: int = 0
    updated_ms: int = 0

    def __repr__(self) -> str:
        return f"User(name={self.name!r}, role={self.role!r}, tenants={self.tenants!r})"

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    def granted(self, known: Iterable[str]) -> frozenset[str]:
        """The tenants this user may see, among those configured."""
        known = frozenset(known)
        if ALL_TENANTS in self.tenants:
            return known
        return known & frozenset(self.tenants)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class UserStore:
    def __init__(self, redis: RedisClient, prefix: str = "admin:") -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, name: str) -> str:
        return f"{self._prefix}user:{name}"

    @property
    def _index(self) -> str:
        return f"{self._prefix}users"

    async def get(self, name: str) -> User | None:
        try:
            name = normalize_name(name)
        except InvalidUser:
            return None
        raw = await self._redis.hgetall(self._key(name))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return User(
            name=name,
            role=fields.get("role", ROLE_VIEWER),
            tenants=tuple(t for t in fields.get("tenants", "").split(",") if t),
            password_hash=fields.get("password", ""),
            generation=int(fields.get("generation", "0") or 0),
            created_ms=int(fields.get("created_ms", "0") or 0),
            updated_ms=int(fields.get("updated_ms", "0") or 0),
        )

    async def put(
        self,
        name: str,
        *,
        role: str,
        tenants: Sequence[str],
        password: str | None = None,
        password_hash: str | None = None,
    ) -> User:
        """Creates or updates a user; a new user needs a password."""
        name = normalize_name(name)
        if role not in ROLES:
            raise InvalidUser(f"role must be one of {', '.join(ROLES)}")
        grants = normalize_tenants(tenants)
        existing = await self.get(name)
        if password is not None:
            password_hash = await asyncio.to_thread(passwords.hash_password, password)
        if password_hash is None:
            if existing is None:
                raise InvalidUser("a new user needs a password")
            password_hash = existing.password_hash
        now = int(time.time() * 1000)
        changed = existing is None or (
            existing.password_hash != password_hash
            or existing.role != role
            or existing.tenants != grants
        )
        generation = (existing.generation if existing else 0) + (1 if changed else 0)
        fields: dict[Any, Any] = {
            "role": role,
            "tenants": ",".join(grants),
            "password": password_hash,
            "generation": str(generation),
            "created_ms": str(existing.created_ms if existing else now),
            "updated_ms": str(now if changed or existing is None else existing.updated_ms),
        }
        await self._redis.hset(self._key(name), mapping=fields)
        await self._redis.sadd(self._index, name)
        return User(
            name=name,
            role=role,
            tenants=grants,
            password_hash=password_hash,
            generation=generation,
            created_ms=int(fields["created_ms"]),
            updated_ms=int(fields["updated_ms"]),
        )

    async def delete(self, name: str) -> bool:
        name = normalize_name(name)
        removed = int(await self._redis.delete(self._key(name)))
        await self._redis.srem(self._index, name)
        return removed > 0

    async def names(self) -> list[str]:
        members = await self._redis.smembers(self._index)
        return sorted(_text(m) for m in members)

    async def authenticate(self, name: str, password: str) -> User | None:
        """The user when the password is theirs; as slow for unknown names as for known ones."""
        user = await self.get(name)
        encoded = user.password_hash if user and user.password_hash else passwords.dummy_hash()
        try:
            good = await asyncio.to_thread(passwords.verify_password, password, encoded)
        except passwords.InvalidHash:
            good = False
        if user is None or not good:
            return None
        if passwords.needs_rehash(user.password_hash):
            upgraded = await asyncio.to_thread(passwords.hash_password, password)
            stored = await self._redis.eval(
                _REHASH, 1, self._key(user.name), user.password_hash, upgraded
            )
            if int(stored):
                user = dataclasses.replace(user, password_hash=upgraded)
        return user

    async def ensure_bootstrap_admin(self, name: str, password: str) -> User:
        """``ADMIN_USERNAME``/``ADMIN_PASSWORD``: an admin of all tenants, password kept in step."""
        existing = await self.get(name)
        if existing is not None and existing.password_hash:
            try:
                same = await asyncio.to_thread(
                    passwords.verify_password, password, existing.password_hash
                )
            except passwords.InvalidHash:
                same = False
            if same and existing.role == ROLE_ADMIN and existing.tenants == (ALL_TENANTS,):
                return existing
            if same:
                return await self.put(name, role=ROLE_ADMIN, tenants=[ALL_TENANTS])
        return await self.put(name, role=ROLE_ADMIN, tenants=[ALL_TENANTS], password=password)
