"""Who a customer is: name and picture from Meta's User Profile API, cached in Redis.

The console shows a Messenger conversation by the person's name and picture
rather than a bare page-scoped id. ``GET {graph}/<PSID>?fields=first_name,
last_name,profile_pic`` carries the page token in the Authorization header (a
URL ends up in logs) and ``appsecret_proof`` when the app secret is known.

- Answers are cached under ``<prefix>profile:messenger:<tenant>:<psid>`` for
  ``ADMIN_PROFILE_TTL_SECONDS``; a refusal (the page may not read that person:
  code 100, permission codes 10 and 200-299, an invalid token 190) is cached
  too, as "unknown", for ``ADMIN_PROFILE_REFUSED_TTL_SECONDS``. Transient
  failures (timeouts, rate limits, 5xx) are not cached.
- A page waits at most ``ADMIN_PROFILE_WAIT_SECONDS`` for lookups; those still
  running finish in the background (at most ``ADMIN_PROFILE_CONCURRENCY`` at a
  time, each within ``ADMIN_PROFILE_FETCH_TIMEOUT``) and fill the cache for the
  next view. Until then the console shows the id.
- Names are personal data: they are never logged (lines carry the keyed hash of
  the id and Meta's error code only), and erasing a customer's data deletes
  the cached profile (`CustomerProfiles.forget`, also used by ``chatbot erase-user``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from chatbot.common.v1 import event_pb2
from redis.exceptions import RedisError

from mesh import get_logger
from mesh.graph import graph_headers, graph_params
from mesh.logging import hashed
from mesh.tenants import Tenant, Tenants
from services.gateway.admin.backends import Backends
from services.gateway.admin.settings import AdminSettings
from services.gateway.admin.users import RedisClient

_log = get_logger("gateway.admin.profiles")
FIELDS = "first_name,last_name,profile_pic"
_NAME_LIMIT = 100
_URL_LIMIT = 2048
# Meta's codes for "this page may not read this person" (or not at all): cached as unknown.
_REFUSED_CODES = frozenset({10, 100, 190}) | frozenset(range(200, 300))
_REFUSED = "refused"


@dataclass(frozen=True)
class Profile:
    """A person as the page sees them; ``picture`` is an http(s) URL or empty."""

    first_name: str = ""
    last_name: str = ""
    picture: str = ""

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    def to_json(self) -> dict[str, str]:
        found = {"name": self.name, "first_name": self.first_name, "last_name": self.last_name}
        if self.picture:
            found["picture"] = self.picture
        return found


def cache_key(prefix: str, tenant_id: str, user_id: str) -> str:
    return f"{prefix}profile:messenger:{tenant_id}:{user_id}"


async def forget_profile(redis: RedisClient, prefix: str, tenant_id: str, user_id: str) -> bool:
    """Deletes one customer's cached profile; True if there was one."""
    return bool(await redis.delete(cache_key(prefix, tenant_id, user_id)))


def _text(value: Any, limit: int) -> str:
    return value.strip()[:limit] if isinstance(value, str) else ""


def _picture(value: Any) -> str:
    url = _text(value, _URL_LIMIT)
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return ""
    return url if scheme in ("http", "https") else ""


def _profile(body: Any) -> Profile | None:
    if not isinstance(body, dict):
        return None
    found = Profile(
        first_name=_text(body.get("first_name"), _NAME_LIMIT),
        last_name=_text(body.get("last_name"), _NAME_LIMIT),
        picture=_picture(body.get("profile_pic")),
    )
    return found if found.name else None


class _Refused(Exception):
    """Meta will not tell this page who the person is."""

    def __init__(self, code: int, subcode: int) -> None:
        super().__init__(f"code {code}/{subcode}")
        self.code, self.subcode = code, subcode


class _Transient(Exception):
    """No answer now (timeout, rate limit, Meta down): ask again next time."""


class CustomerProfiles:
    """Looks profiles up for the conversations a page shows; ``start``/``close`` in the lifespan.

    ``transport`` is httpx's seam (tests may hand one); by default a real
    connection pool to ``settings.graph_api_url``.
    """

    def __init__(
        self,
        settings: AdminSettings,
        tenants: Tenants,
        backends: Backends,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._tenants = tenants
        self._backends = backends
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._limit: asyncio.Semaphore | None = None
        self._inflight: dict[str, asyncio.Task[Profile | None]] = {}

    async def start(self) -> None:
        self._http = httpx.AsyncClient(
            transport=self._transport,
            timeout=self._settings.profile_fetch_timeout,
            follow_redirects=False,
        )
        self._limit = asyncio.Semaphore(self._settings.profile_concurrency)

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        self._inflight.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def _prefix(self) -> str:
        return self._settings.redis_prefix

    async def lookup(
        self, tenant_id: str, users: Iterable[event_pb2.UserRef]
    ) -> dict[str, Profile]:
        """The known profiles of ``users`` (Messenger ones), by user id; never raises.

        Waits at most ``profile_wait_seconds`` for lookups not yet cached.
        """
        tenant = self._tenants.get(tenant_id)
        if not self._settings.graph_api_url or self._http is None:
            return {}
        if tenant is None or not tenant.page_access_token:
            return {}
        ids = list(
            dict.fromkeys(
                u.user_id for u in users if u.channel == event_pb2.CHANNEL_MESSENGER and u.user_id
            )
        )
        if not ids:
            return {}
        try:
            cached = await self._cached(tenant_id, ids)
        except (RedisError, OSError) as exc:
            _log.warning(
                "customer profiles unavailable (Redis)", extra={"error": type(exc).__name__}
            )
            return {}
        found: dict[str, Profile] = {}
        missing: dict[str, asyncio.Task[Profile | None]] = {}
        for user_id, value in zip(ids, cached, strict=True):
            if value is None:
                missing[user_id] = self._task(tenant, user_id)
            elif isinstance(value, Profile):
                found[user_id] = value
        if missing:
            await asyncio.wait(missing.values(), timeout=self._settings.profile_wait_seconds)
            for user_id, task in missing.items():
                if task.done() and not task.cancelled() and task.exception() is None:
                    profile = task.result()
                    if profile is not None:
                        found[user_id] = profile
        return found

    async def forget(self, tenant_id: str, user_id: str) -> None:
        """Drops the cached profile (and any lookup under way) of an erased customer."""
        task = self._inflight.pop(cache_key(self._prefix, tenant_id, user_id), None)
        if task is not None:
            task.cancel()
        await forget_profile(self._backends.redis, self._prefix, tenant_id, user_id)

    async def _cached(self, tenant_id: str, ids: list[str]) -> list[Profile | str | None]:
        async with self._backends.redis.pipeline(transaction=False) as pipe:
            for user_id in ids:
                pipe.get(cache_key(self._prefix, tenant_id, user_id))
            raw = await pipe.execute()
        out: list[Profile | str | None] = []
        for value in raw:
            if value is None:
                out.append(None)
                continue
            try:
                decoded = json.loads(value)
            except ValueError:
                out.append(None)
                continue
            profile = _profile(decoded)
            out.append(profile if profile is not None else _REFUSED)
        return out

    def _task(self, tenant: Tenant, user_id: str) -> asyncio.Task[Profile | None]:
        key = cache_key(self._prefix, tenant.id, user_id)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._fill(tenant, user_id, key))
            self._inflight[key] = task
            task.add_done_callback(
                lambda done: (
                    self._inflight.pop(key, None) if self._inflight.get(key) is done else None
                )
            )
        return task

    async def _fill(self, tenant: Tenant, user_id: str, key: str) -> Profile | None:
        assert self._limit is not None
        async with self._limit:
            try:
                profile = await self._fetch(tenant, user_id)
            except _Refused as exc:
                _log.info(
                    "customer profile refused by the Graph API",
                    extra={
                        "tenant": tenant.id,
                        "user": hashed(user_id),
                        "code": exc.code,
                        "subcode": exc.subcode,
                    },
                )
                await self._store(key, {}, self._settings.profile_refused_ttl_seconds)
                return None
            except _Transient as exc:
                _log.info(
                    "customer profile not available now",
                    extra={"tenant": tenant.id, "user": hashed(user_id), "reason": str(exc)},
                )
                return None
            if profile is None:  # no name to show: as good as a refusal
                await self._store(key, {}, self._settings.profile_refused_ttl_seconds)
                return None
            value = {
                "first_name": profile.first_name,
                "last_name": profile.last_name,
                "profile_pic": profile.picture,
            }
            await self._store(key, value, self._settings.profile_ttl_seconds)
            return profile

    async def _store(self, key: str, value: dict[str, str], ttl: int) -> None:
        if key not in self._inflight:
            return  # forgotten (erased) while the lookup ran
        try:
            await self._backends.redis.set(key, json.dumps(value), ex=ttl)
        except (RedisError, OSError) as exc:
            _log.warning("customer profile not cached (Redis)", extra={"error": type(exc).__name__})

    async def _fetch(self, tenant: Tenant, user_id: str) -> Profile | None:
        assert self._http is not None
        url = f"{self._settings.graph_api_url.rstrip('/')}/{quote(user_id, safe='')}"
        query = {"fields": FIELDS, **graph_params(tenant)}
        try:
            answer = await self._http.get(
                url,
                params=query,
                headers=graph_headers(tenant),
            )
        except httpx.TimeoutException as exc:
            raise _Transient("timeout") from exc
        except httpx.HTTPError as exc:
            raise _Transient(type(exc).__name__) from exc
        try:
            body = answer.json()
        except ValueError:
            body = None
        if answer.status_code == 200:
            return _profile(body)
        error = body.get("error") if isinstance(body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        subcode = error.get("error_subcode", 0) if isinstance(error, dict) else 0
        if isinstance(code, int) and code in _REFUSED_CODES and answer.status_code < 500:
            raise _Refused(code, subcode if isinstance(subcode, int) else 0)
        raise _Transient(f"HTTP {answer.status_code}, code {code}")
