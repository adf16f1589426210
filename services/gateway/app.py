"""The gateway's Starlette app, built from its dependencies.

    app = create_app(settings, tenants, GrpcDialogueClient(settings.dialogue_address),
                     rate_limiter=RedisRateLimiter.from_url(settings.redis_url),
                     readiness=GrpcReadiness(settings.dependency_addresses, 1.0))

Dependencies with ``start()``/``close()`` (gRPC channels, the Redis pool) are
started in the app's lifespan and closed on shutdown; tests pass their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, runtime_checkable

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mesh import get_logger
from mesh.tenants import Tenants
from services.gateway import api
from services.gateway.admin import AdminConsole
from services.gateway.auth import ApiKeyAuthenticator, Authenticator
from services.gateway.dialogue import DialogueClient
from services.gateway.messenger import webhook
from services.gateway.messenger.pages import PageDirectory
from services.gateway.metrics import GatewayMetrics
from services.gateway.middleware import RequestContextMiddleware, StrictTransportSecurityMiddleware
from services.gateway.ratelimit import RateLimiter
from services.gateway.readiness import SERVING, Readiness
from services.gateway.settings import GatewaySettings

_log = get_logger("gateway")


@runtime_checkable
class Resource(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


class _Operations:
    def __init__(
        self, readiness: Readiness | None, metrics: GatewayMetrics, requires: tuple[str, ...]
    ) -> None:
        self._readiness = readiness
        self._metrics = metrics
        self._requires = requires

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        checks = await self._readiness.check() if self._readiness is not None else {}
        required = [name for name in self._requires if name in checks]
        ready = all(checks[name] == SERVING for name in required)
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks, "requires": required},
            status_code=200 if ready else 503,
        )

    async def metrics(self, request: Request) -> Response:
        return Response(self._metrics.render(), media_type=CONTENT_TYPE_LATEST)


def create_app(
    settings: GatewaySettings,
    tenants: Tenants,
    dialogue: DialogueClient,
    *,
    rate_limiter: RateLimiter | None = None,
    readiness: Readiness | None = None,
    metrics: GatewayMetrics | None = None,
    authenticator: Authenticator | None = None,
    admin: AdminConsole | None = None,
) -> Starlette:
    """The gateway. No ``rate_limiter``: no rate limits; no ``readiness``: always ready."""
    metrics = metrics or GatewayMetrics()
    authenticator = authenticator or ApiKeyAuthenticator(tenants)
    messenger = webhook.MessengerWebhook(
        pages=PageDirectory(tenants), dialogue=dialogue, settings=settings, metrics=metrics
    )
    messages = api.MessagesApi(
        settings=settings,
        authenticator=authenticator,
        dialogue=dialogue,
        rate_limiter=rate_limiter,
        metrics=metrics,
    )
    operations = _Operations(readiness, metrics, settings.ready_requires)
    routes: list[BaseRoute] = [
        Route(webhook.ROUTE, messenger.verify, methods=["GET"]),
        Route(webhook.ROUTE, messenger.receive, methods=["POST"]),
        Route(api.ROUTE, messages.post, methods=["POST"]),
        Route("/healthz", operations.healthz, methods=["GET"]),
        Route("/readyz", operations.readyz, methods=["GET"]),
        Route("/metrics", operations.metrics, methods=["GET"]),
    ]
    if admin is not None:
        routes += admin.routes  # /admin (pages) and /api/admin (JSON), behind a login
    resources: list[Resource] = []
    for candidate in (dialogue, rate_limiter, readiness, admin):
        if isinstance(candidate, Resource):
            resources.append(candidate)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started: list[Resource] = []
        try:
            for resource in resources:
                await resource.start()
                started.append(resource)
            _log.info("gateway started", extra={"tenants": [t.id for t in tenants]})
            yield
        finally:
            for resource in reversed(started):
                await resource.close()

    middleware = [Middleware(RequestContextMiddleware, metrics=metrics, routes=routes)]
    if settings.hsts_seconds:
        middleware.append(
            Middleware(StrictTransportSecurityMiddleware, max_age=settings.hsts_seconds)
        )
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
