"""gRPC client channels between services.

Targets are ``host:port``. In Kubernetes, point them at a headless Service
(``dns:///chatlog.chatbot.svc:50053``): the channel resolves every pod and
balances calls round-robin, which long-lived HTTP/2 connections behind a
ClusterIP would not. The request id of the current call travels on as
``x-request-id``.

With ``MESH_TLS_*`` set (``mesh.tls``) channels speak TLS, and present this
process's certificate for mutual TLS; the target's host is the name checked
in the server's certificate unless ``MESH_TLS_SERVER_NAME`` says otherwise.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from mesh import tracing
from mesh.logging import request_id_var
from mesh.metrics import GRPC_CLIENT_LATENCY
from mesh.tls import MeshTls

REQUEST_ID_HEADER = "x-request-id"


class _RequestIdInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        with tracing.span(name.lstrip("/"), kind="client", attributes={"rpc.system": "grpc"}):
            request_id = request_id_var.get()
            carrier: dict[str, str] = {}
            tracing.inject(carrier)  # this client span becomes the server span's parent
            if request_id or carrier:
                metadata = list(client_call_details.metadata or [])
                if request_id and not any(key == REQUEST_ID_HEADER for key, _ in metadata):
                    metadata.append((REQUEST_ID_HEADER, request_id))
                metadata += list(carrier.items())
                client_call_details = grpc.aio.ClientCallDetails(
                    client_call_details.method,
                    client_call_details.timeout,
                    grpc.aio.Metadata(*metadata),
                    client_call_details.credentials,
                    client_call_details.wait_for_ready,
                )
            started = time.perf_counter()
            call = await continuation(client_call_details, request)
            # Wait inside the span so it covers the whole call; the caller
            # awaits the finished call again for its result or error.
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call
            service, _, rpc = name.lstrip("/").partition("/")
            code = await call.code()
            GRPC_CLIENT_LATENCY.labels(service, rpc, code.name if code else "UNKNOWN").observe(
                time.perf_counter() - started
            )
            return call


def open_channel(target: str, *, tls: MeshTls | None = None) -> grpc.aio.Channel:
    """A channel to another service of the mesh (close it on shutdown).

    ``tls`` defaults to ``MeshTls.from_env()``, which raises ``ConfigError``
    when a certificate file is missing or invalid.
    """
    tls = tls if tls is not None else MeshTls.from_env()
    options: list[tuple[str, Any]] = [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.max_receive_message_length", 8 * 1024 * 1024),
        ("grpc.enable_retries", 1),
        # Back within seconds after a peer's outage (gRPC's default waits up to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
    interceptors = [_RequestIdInterceptor()]
    if tls.enabled:
        return grpc.aio.secure_channel(
            target,
            tls.channel_credentials(),
            options=[*options, *tls.channel_options()],
            interceptors=interceptors,
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
