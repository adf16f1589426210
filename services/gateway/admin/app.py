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

This is the one place that builds the parts and hands each what it uses:
the pages and the API get the service, the profiles, the accounts (sessions
and signing in) and the settings, never the console itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount

from mesh import get_logger
from mesh.tenants import Tenants
from services.gateway.admin.api import Api
from services.gateway.admin.auth import Accounts
from services.gateway.admin.backends import Backends
from services.gateway.admin.guard import Guard, exception_handlers
from services.gateway.admin.pages import Pages
from services.gateway.admin.params import API_PREFIX, PAGES_PREFIX
from services.gateway.admin.profiles import CustomerProfiles
from services.gateway.admin.render import Renderer
from services.gateway.admin.service import ConsoleService
from services.gateway.admin.settings import AdminSettings
from services.gateway.admin.users import UserStore

_log = get_logger("gateway.admin")


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
        self.accounts = Accounts(settings, [t.id for t in tenants])
        pages = Pages(
            service=self.service,
            profiles=self.profiles,
            renderer=self.renderer,
            settings=settings,
            accounts=self.accounts,
        )
        api = Api(self.service, self.profiles, self.accounts, settings, self.renderer.message)
        csp = _csp(settings)
        login = f"{PAGES_PREFIX}/login"
        self.pages = Starlette(
            routes=pages.routes(),
            middleware=[
                Middleware(
                    Guard,
                    identify=self.accounts.identify,
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
                Middleware(
                    Guard, identify=self.accounts.identify, api=True, csp=csp, login_path=login
                )
            ],
            exception_handlers=exception_handlers(True, pages.error_page),
        )
        self.routes: list[BaseRoute] = [
            Mount(PAGES_PREFIX, app=self.pages, name="admin"),
            Mount(API_PREFIX, app=self.api, name="admin-api"),
        ]

    async def start(self) -> None:
        start = getattr(self.backends, "start", None)
        if start is not None:
            await start()
        await self.profiles.start()
        users = self.accounts.open(self.backends.redis)
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
        self.accounts.close()
        await self.profiles.close()
        close = getattr(self.backends, "close", None)
        if close is not None:
            await close()

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
