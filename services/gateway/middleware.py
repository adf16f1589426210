"""Per request: its id (from ``X-Request-Id`` or new) in the logs and on every gRPC
call it makes (``mesh.channels`` reads ``request_id_var``), and its metrics.

Plain ASGI, not ``BaseHTTPMiddleware``: no extra task per request, so the
context variable set here is the one the endpoint and its gRPC calls see.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence

from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mesh import tracing
from mesh.logging import request_id_var
from services.gateway.metrics import GatewayMetrics

REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _incoming_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = bytes(value).decode("latin-1")
            if _VALID_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, *, metrics: GatewayMetrics, routes: Sequence[BaseRoute]
    ) -> None:
        self.app = app
        self._metrics = metrics
        self._routes = routes

    def _route(self, scope: Scope) -> str:
        # The route's template, never the raw path: labels stay few.
        for route in self._routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return str(getattr(route, "path", "other"))
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-Id", request_id)
            await send(message)

        # A server span per request (a no-op unless tracing is on): the root of
        # a message's trace, continued by SubmitEvents and the dialogue worker.
        parent = {
            name.decode("latin-1"): bytes(value).decode("latin-1")
            for name, value in scope.get("headers", ())
            if name == b"traceparent"
        }
        try:
            with tracing.span(
                f"{scope['method']} {self._route(scope)}",
                parent=parent or None,
                kind="server",
                attributes={"http.request.method": scope["method"]},
            ):
                await self.app(scope, receive, send_with_id)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"
            route = self._route(scope)
            self._metrics.requests.labels(route, method, str(status)).inc()
            self._metrics.request_seconds.labels(route, method).observe(
                time.perf_counter() - started
            )
            request_id_var.reset(token)


class StrictTransportSecurityMiddleware:
    """``Strict-Transport-Security`` on every response to an https request.

    Behind a TLS-terminating proxy the scheme is the one its
    ``X-Forwarded-Proto`` names (uvicorn believes the peers in
    ``GATEWAY_FORWARDED_ALLOW_IPS``); over plain http nothing is added, as RFC 6797
    asks and as a local run needs.
    """

    def __init__(self, app: ASGIApp, *, max_age: int) -> None:
        self.app = app
        self._value = f"max-age={max_age}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("Strict-Transport-Security", self._value)
            await send(message)

        await self.app(scope, receive, send_with_hsts)
