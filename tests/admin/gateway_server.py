"""``python -m tests.admin.gateway_server``: the real gateway with the console mounted.

Until ``services/gateway/app.py`` mounts the console itself, this builds the
gateway exactly as ``python -m services.gateway serve`` does and adds the
console the way app.py will (its routes, and its start and close in the
lifespan). Once the gateway has ``/admin`` routes of its own, it serves the
gateway unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette

from mesh import ConfigError, configure_logging
from mesh.tenants import Tenants
from services.gateway.admin import AdminSettings, GrpcAdminBackends, create_admin_app
from services.gateway.server import build_app
from services.gateway.settings import GatewaySettings


def build(settings: GatewaySettings, tenants: Tenants) -> Starlette:
    app = build_app(settings, tenants)
    if any(str(getattr(route, "path", "")).startswith("/admin") for route in app.routes):
        return app
    console = create_admin_app(
        AdminSettings.from_env(),
        tenants,
        GrpcAdminBackends(settings.chatlog_address, settings.dialogue_address, settings.redis_url),
    )
    app.router.routes.extend(console.routes)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with inner(app):
            await console.start()
            try:
                yield
            finally:
                await console.close()

    app.router.lifespan_context = lifespan
    return app


def main() -> int:
    configure_logging("gateway")
    try:
        settings, tenants = GatewaySettings.from_env(), Tenants.from_env()
        app = build(settings, tenants)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        lifespan="on", timeout_graceful_shutdown=5,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
