"""Who is signed in to the console, and the checks every request goes through.

`SessionAuthenticator` reads the session cookie and answers the gateway's
`Principal` (subject ``admin:<name>``, scheme ``session``, the tenants granted
and the role), so it fits `services.gateway.auth.Authenticator` and can join
the gateway's chain. The console itself uses `identify`, which also gives the
user and the session (for its CSRF token).

Cookies are ``HttpOnly; SameSite=Strict; Path=/``, and ``Secure`` over https
(named ``__Host-...`` then, which the browser binds to this host). Every
POST carries the session's CSRF token (form field ``csrf_token`` or header
``X-CSRF-Token``), compared in constant time; a POST whose ``Origin`` names
another site is refused before that.

`Accounts` holds the users, the sessions and the sign-in throttle once Redis
is open, and runs signing in and out, so the pages only show the outcome.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from mesh import get_logger
from services.gateway.admin.errors import (
    BackendUnavailable,
    CsrfRejected,
    Forbidden,
    LockedOut,
    NotAuthenticated,
    NotFound,
)
from services.gateway.admin.lockout import LoginThrottle
from services.gateway.admin.sessions import Session, SessionStore
from services.gateway.admin.settings import AdminSettings
from services.gateway.admin.users import ROLE_ADMIN, RedisClient, User, UserStore
from services.gateway.auth import AuthenticationFailed, Principal

SCHEME_SESSION = "session"
COOKIE = "chatbot_admin"
SECURE_COOKIE = "__Host-chatbot_admin"
LOGIN_COOKIE = "chatbot_admin_login"
SECURE_LOGIN_COOKIE = "__Host-chatbot_admin_login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_log = get_logger("gateway.admin")


@dataclass(frozen=True)
class Identity:
    user: User
    session: Session
    principal: Principal

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def is_admin(self) -> bool:
        return self.user.role == ROLE_ADMIN

    @property
    def tenants(self) -> list[str]:
        return sorted(self.principal.tenant_ids)

    def require_tenant(self, tenant_id: str) -> str:
        """``tenant_id`` when granted; NotFound otherwise (its existence stays hidden)."""
        if not self.principal.can_access(tenant_id):
            raise NotFound(f"no tenant {tenant_id!r}")
        return tenant_id

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this needs the admin role")


def secure_cookies(settings: AdminSettings, conn: HTTPConnection) -> bool:
    if settings.cookie_secure == "auto":
        return conn.url.scheme in ("https", "wss")
    return settings.cookie_secure == "true"


def cookie_value(conn: HTTPConnection, plain: str, secure: str) -> str:
    return conn.cookies.get(secure) or conn.cookies.get(plain) or ""


def set_cookie(
    response: Response,
    settings: AdminSettings,
    conn: HTTPConnection,
    names: tuple[str, str],
    value: str,
    max_age: int | None,
) -> None:
    secure = secure_cookies(settings, conn)
    response.set_cookie(
        names[1] if secure else names[0],
        value,
        max_age=max_age,
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )


def clear_cookie(
    response: Response, settings: AdminSettings, conn: HTTPConnection, names: tuple[str, str]
) -> None:
    secure = secure_cookies(settings, conn)
    response.delete_cookie(
        names[1] if secure else names[0],
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )


class SessionAuthenticator:
    def __init__(self, users: UserStore, sessions: SessionStore, tenants: Iterable[str]) -> None:
        self._users = users
        self._sessions = sessions
        self._tenants = frozenset(tenants)

    async def identify(self, conn: HTTPConnection, *, touch: bool = True) -> Identity | None:
        """Who ``conn``'s cookie signs in; ``touch=False`` checks without counting as activity."""
        token = cookie_value(conn, COOKIE, SECURE_COOKIE)
        if not token:
            return None
        session = await self._sessions.load(token, touch=touch)
        if session is None:
            return None
        user = await self._users.get(session.username)
        if user is None or user.generation != session.generation:
            await self._sessions.delete(session)  # the user changed or was removed
            return None
        roles = {user.role} | ({"viewer"} if user.role == ROLE_ADMIN else set())
        principal = Principal(
            subject=f"admin:{user.name}",
            scheme=SCHEME_SESSION,
            tenant_ids=user.granted(self._tenants),
            roles=frozenset(roles),
        )
        return Identity(user=user, session=session, principal=principal)

    async def authenticate(self, conn: HTTPConnection) -> Principal | None:
        """The gateway's `Authenticator` interface."""
        if not cookie_value(conn, COOKIE, SECURE_COOKIE):
            return None
        identity = await self.identify(conn)
        if identity is None:
            raise AuthenticationFailed("the session is not valid")
        return identity.principal


def same_origin(request: Request) -> bool:
    """False when ``Origin`` (or, without it, ``Referer``) names another site."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    scheme, _, rest = origin.partition("://")
    return rest.split("/", 1)[0] == host and scheme in ("http", "https")


def check_csrf(request: Request, expected: str, form: dict[str, str] | None) -> None:
    if not same_origin(request):
        raise CsrfRejected("the request came from another site")
    given = request.headers.get(CSRF_HEADER) or (form or {}).get(CSRF_FIELD) or ""
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfRejected("the CSRF token is missing or wrong; reload the page")


def _wait_text(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} seconds"
    return f"{-(-seconds // 60)} minutes"


@dataclass(frozen=True)
class _Stores:
    users: UserStore
    sessions: SessionStore
    throttle: LoginThrottle
    authenticator: SessionAuthenticator


class Accounts:
    """The console's users, sessions and sign-in throttle, all kept in Redis.

    Built with the console and opened in its ``start()``, once Redis is: before
    that (and after ``close()``) every use answers BackendUnavailable.
    """

    def __init__(self, settings: AdminSettings, tenants: Iterable[str]) -> None:
        self._settings = settings
        self._tenants = tuple(tenants)
        self._stores: _Stores | None = None

    def open(self, redis: RedisClient) -> UserStore:
        """Opens the stores on ``redis``; the users' store is also the first admin's."""
        settings, prefix = self._settings, self._settings.redis_prefix
        users = UserStore(redis, prefix)
        sessions = SessionStore(
            redis,
            idle=settings.session_idle_seconds,
            max_age=settings.session_max_seconds,
            prefix=prefix,
        )
        throttle = LoginThrottle(
            redis,
            free_attempts=settings.lockout_attempts,
            ip_limit=settings.lockout_ip_attempts,
            window=settings.lockout_window_seconds,
            base_delay=settings.login_delay_seconds,
            prefix=prefix,
        )
        authenticator = SessionAuthenticator(users, sessions, self._tenants)
        self._stores = _Stores(users, sessions, throttle, authenticator)
        return users

    def close(self) -> None:
        self._stores = None

    @property
    def _open(self) -> _Stores:
        if self._stores is None:
            raise BackendUnavailable("the console is not started")
        return self._stores

    async def identify(self, conn: HTTPConnection, *, touch: bool = True) -> Identity | None:
        return await self._open.authenticator.identify(conn, touch=touch)

    async def sign_in(self, request: Request, username: str, password: str, form_token: str) -> str:
        """A new session's token for ``username``, or the error that refuses it.

        The sign-in form's own token comes first (CsrfRejected), then the
        throttle (LockedOut), then the password (NotAuthenticated). A session
        the browser still holds is ended, so every sign-in starts a fresh one.
        """
        stores = self._open
        expected = cookie_value(request, LOGIN_COOKIE, SECURE_LOGIN_COOKIE)
        if (
            not same_origin(request)
            or not expected
            or not hmac.compare_digest(form_token.encode(), expected.encode())
        ):
            raise CsrfRejected("The sign-in form expired; please try again.")
        address = request.client.host if request.client else "unknown"
        # Charged before the password is checked, so parallel guesses are counted too.
        verdict = await stores.throttle.attempt(username, address)
        if not verdict.allowed:
            _log.warning(
                "login refused: too many attempts",
                extra={"client": address, "reason": verdict.outcome},
            )
            wait = verdict.retry_after_seconds
            raise LockedOut(f"Too many failed sign-ins. Try again in {_wait_text(wait)}.", wait)
        user = await stores.users.authenticate(username, password) if username else None
        if user is None:
            known = await stores.users.get(username) is not None if username else False
            _log.warning(
                "login failed",
                extra={"user": username if known else "(unknown user)", "client": address},
            )
            raise NotAuthenticated("The user name or the password is wrong.")
        await stores.throttle.succeeded(username, address)
        old = cookie_value(request, COOKIE, SECURE_COOKIE)
        if old:
            previous = await stores.sessions.load(old)
            if previous is not None:
                await stores.sessions.delete(previous)
        token, _ = await stores.sessions.create(user.name, user.generation)
        _log.info("login", extra={"user": user.name, "client": address})
        return token

    async def sign_out(self, who: Identity) -> None:
        await self._open.sessions.delete(who.session)
        _log.info("logout", extra={"user": who.name})
