"""Runs the gateway under uvicorn with its real dependencies."""

from __future__ import annotations

import uvicorn
from starlette.applications import Starlette

from mesh.redis_options import redis_options
from mesh.tenants import Tenants
from mesh.tls import MeshTls
from services.gateway.admin import AdminSettings, GrpcAdminBackends, create_admin_app
from services.gateway.app import create_app
from services.gateway.dialogue import GrpcDialogueClient
from services.gateway.ratelimit import RedisRateLimiter
from services.gateway.readiness import GrpcReadiness
from services.gateway.settings import GatewaySettings


def build_app(
    settings: GatewaySettings, tenants: Tenants, admin_settings: AdminSettings | None = None
) -> Starlette:
    """The gateway with its real dependencies; raises ``ConfigError`` on a bad setting."""
    # Channels and Redis clients open in the lifespan: check their files now,
    # so a missing certificate or password file stops the start, not a request.
    MeshTls.from_env()
    redis_options(settings.redis_url)
    limits = settings.user_rate_limit or settings.tenant_rate_limit
    admin = create_admin_app(
        admin_settings or AdminSettings.from_env(),
        tenants,
        GrpcAdminBackends(settings.chatlog_address, settings.dialogue_address, settings.redis_url),
    )
    return create_app(
        settings,
        tenants,
        GrpcDialogueClient(settings.dialogue_address),
        rate_limiter=RedisRateLimiter.from_url(settings.redis_url) if limits else None,
        readiness=GrpcReadiness(settings.dependency_addresses, settings.readiness_timeout),
        admin=admin,
    )


def uvicorn_config(settings: GatewaySettings, app: Starlette) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,  # keep the mesh's JSON logging
        access_log=False,  # the gateway logs and counts requests itself
        server_header=False,
        timeout_graceful_shutdown=10,
        proxy_headers=True,
        # Explicit, so uvicorn's own FORWARDED_ALLOW_IPS default never applies.
        forwarded_allow_ips=list(settings.forwarded_allow_ips),
    )


def serve(settings: GatewaySettings, tenants: Tenants, app: Starlette | None = None) -> None:
    uvicorn.Server(uvicorn_config(settings, app or build_app(settings, tenants))).run()
