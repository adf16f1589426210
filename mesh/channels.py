"""gRPC client channels between services.

Targets are ``host:port``. In Kubernetes, point them at a headless Service
(``dns:///chatlog.chatbot.svc:50053``): the channel resolves every pod and
balances calls round-robin, which long-lived HTTP/2 connections behind a
ClusterIP would not. The request id of the current call travels on as
``x-request-id``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from mesh.logging import request_id_var

REQUEST_ID_HEADER = "x-request-id"


class _RequestIdInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        request_id = request_id_var.get()
        if request_id:
            metadata = list(client_call_details.metadata or [])
            if not any(key == REQUEST_ID_HEADER for key, _ in metadata):
                metadata.append((REQUEST_ID_HEADER, request_id))
            client_call_details = grpc.aio.ClientCallDetails(
                client_call_details.method,
                client_call_details.timeout,
                grpc.aio.Metadata(*metadata),
                client_call_details.credentials,
                client_call_details.wait_for_ready,
            )
        return await continuation(client_call_details, request)


def open_channel(target: str) -> grpc.aio.Channel:
    """A channel to another service of the mesh (close it on shutdown)."""
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            ("grpc.enable_retries", 1),
        ],
        interceptors=[_RequestIdInterceptor()],
    )
