"""The admin console: pages at ``/admin``, a JSON API at ``/api/admin``.

    console = create_admin_app(
        AdminSettings.from_env(), tenants,
        GrpcAdminBackends(settings.chatlog_address, settings.dialogue_address, settings.redis_url),
    )
    routes += console.routes          # Mount("/admin", ...), Mount("/api/admin", ...)
    resources.append(console)         # start() in the lifespan, close() on shutdown

`start()` starts the backends when they have a ``start`` (channels and Redis
open in the running loop), then creates or updates the first administrator
from ``ADMIN_USERNAME``/``ADMIN_PASSWORD``. ``console.app`` is the console
alone, with that lifespan, for tests and for serving it on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Mount

from mesh import get_logger
from mesh.tenants import Tenants
from services.gateway.admin.api import Api
from services.gateway.admin.auth import Identity, SessionAuthenticator
from services.gateway.admin.backends import Backends
from services.gateway.admin.errors import BackendUnavailable
from services.gateway.admin.guard import Guard, exception_handlers
from services.gateway.admin.lockout import LoginThrottle
from services.gateway.admin.pages import API_PREFIX, PAGES_PREFIX, Pages
from services.gateway.admin.profiles import CustomerProfiles
from services.gateway.admin.render import Renderer
from services.gateway.admin.service import ConsoleService
from services.gateway.admin.sessions import SessionStore
from services.gateway.admin.settings import AdminSettings
from services.gateway.admin.users import UserStore

_log = get_logger("gateway.admin")


@dataclass(frozen=True)
class Auth:
    users: UserStore
    sessions: SessionStore
    throttle: LoginThrottle
    authenticator: SessionAuthenticator


def _csp(settings: AdminSettings) -> str:
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src 'self' {settings.img_src}; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


class AdminConsole:
    def __init__(self, settings: AdminSettings, tenants: Tenants, backends: Backends) -> None:
        self.settings = settings
        self.tenants = tenants
        self.backends = backends
        self.renderer = Renderer()
        self.profiles = CustomerProfiles(settings, tenants, backends)
        self.service = ConsoleService(settings, backends, self.profiles)
        self._auth: Auth | None = None
        pages, api = Pages(self), Api(self)
        csp = _csp(settings)
        login = f"{PAGES_PREFIX}/login"
        self.pages = Starlette(
            routes=pages.routes(),
            middleware=[
                Middleware(
                    Guard,
                    identify=self.identify,
                    api=False,
                    csp=csp,
                    login_path=login,
                    error_page=pages.error_page,
                )
            ],
            exception_handlers=exception_handlers(False, pages.error_page),
        )
        self.api = Starlette(
            routes=api.routes(),
            middleware=[
                Middleware(Guard, identify=self.identify, api=True, csp=csp, login_path=login)
            ],
            exception_handlers=exception_handlers(True, pages.error_page),
        )
        self.routes: list[BaseRoute] = [
            Mount(PAGES_PREFIX, app=self.pages, name="admin"),
            Mount(API_PREFIX, app=self.api, name="admin-api"),
        ]

    @property
    def auth(self) -> Auth:
        if self._auth is None:
            raise BackendUnavailable("the console is not started")
        return self._auth

    async def identify(self, conn: HTTPConnection) -> Identity | None:
        return await self.auth.authenticator.identify(conn)

    async def start(self) -> None:
        start = getattr(self.backends, "start", None)
        if start is not None:
            await start()
        await self.profiles.start()
        redis = self.backends.redis
        prefix = self.settings.redis_prefix
        users = UserStore(redis, prefix)
        sessions = SessionStore(
            redis,
            idle=self.settings.session_idle_seconds,
            max_age=self.settings.session_max_seconds,
            prefix=prefix,
        )
        throttle = LoginThrottle(
            redis,
            free_attempts=self.settings.lockout_attempts,
            ip_limit=self.settings.lockout_ip_attempts,
            window=self.settings.lockout_window_seconds,
            base_delay=self.settings.login_delay_seconds,
            prefix=prefix,
        )
        self._auth = Auth(
            users, sessions, throttle, SessionAuthenticator(users, sessions, self.tenants_ids)
        )
        # The webhook must start even when Redis is down: then the first
        # administrator is ensured in the background, once Redis answers.
        try:
            await self._first_admin(users)
        except RedisError as exc:
            _log.warning("admin users unavailable (Redis); retrying", extra={"error": repr(exc)})
            self._bootstrap = asyncio.create_task(self._ensure_first_admin(users))

    async def _first_admin(self, users: UserStore) -> None:
        name, password = self.settings.bootstrap_username, self.settings.bootstrap_password
        if name and password:
            user = await users.ensure_bootstrap_admin(name, password)
            _log.info("first administrator ready", extra={"user": user.name})
        elif not await users.names():
            _log.warning(
                "the admin console has no user: set ADMIN_USERNAME and ADMIN_PASSWORD, "
                "or add one with `chatbot users add`"
            )

    async def _ensure_first_admin(self, users: UserStore) -> None:
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self._first_admin(users)
                return
            except RedisError:
                delay = min(delay * 2, 30.0)

    async def close(self) -> None:
        bootstrap = getattr(self, "_bootstrap", None)
        if bootstrap is not None:
            bootstrap.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bootstrap
        self._auth = None
        await self.profiles.close()
        close = getattr(self.backends, "close", None)
        if close is not None:
            await close()

    @property
    def tenants_ids(self) -> list[str]:
        return [t.id for t in self.tenants]

    @property
    def app(self) -> Starlette:
        """The console alone, with a lifespan that starts and closes it."""

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.close()

        return Starlette(routes=self.routes, lifespan=lifespan)


def create_admin_app(settings: AdminSettings, tenants: Tenants, backends: Backends) -> AdminConsole:
    """The console, built from its dependencies; nothing is opened until `start()`."""
    return AdminConsole(settings, tenants, backends)
