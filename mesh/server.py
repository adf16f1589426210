"""The ``grpc.aio`` server every service runs: health, reflection, interceptors
and a graceful shutdown on SIGTERM.

    server = MeshServer("nlu", host="127.0.0.1", port=50052,
                        service_names=["chatbot.nlu.v1.NluService"])
    add_NluServiceServicer_to_server(servicer, server.grpc)
    await server.start()
    await server.set_serving(True)
    await server.wait_for_termination_signal()
    await server.stop()

Transport security comes from ``MESH_TLS_*`` (``mesh.tls``) unless ``tls`` is
given. With ``GRPC_HEALTH_PORT`` set, a second, plaintext port serves
``grpc.health.v1`` and nothing else: Kubernetes' native gRPC probes cannot
speak TLS, and health is no secret.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh import tracing
from mesh.config import Env
from mesh.logging import get_logger, request_id_var
from mesh.metrics import GRPC_HANDLED, GRPC_LATENCY
from mesh.tls import MeshTls

_log = get_logger("mesh.server")

REQUEST_ID_HEADER = "x-request-id"
_HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def _split_method(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


class _Undecodable:
    """Request bytes that are not a message of the method's type."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # grpc.aio answers a request it cannot decode with UNKNOWN; it is the
    # client's mistake, so the handler turns it into INVALID_ARGUMENT.
    if deserializer is None:
        return None
    parse = deserializer

    def decode(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError as exc:
            return _Undecodable(exc)

    return decode


class MeshInterceptor(grpc.aio.ServerInterceptor):
    """Request ids (from ``x-request-id`` or new), metrics and a log line on failure.

    Request bytes that do not decode are INVALID_ARGUMENT.
    """

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, method = _split_method(details.method)
        metadata = dict(details.invocation_metadata or ())
        request_id = str(metadata.get(REQUEST_ID_HEADER) or uuid.uuid4().hex)
        inner: Any = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            token = request_id_var.set(request_id)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                with tracing.span(
                    f"{service}/{method}",
                    parent={k: str(v) for k, v in metadata.items() if k == "traceparent"},
                    kind="server",
                    attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
                ):
                    if isinstance(request, _Undecodable):
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"the request is not a valid message: {request.error}",
                        )
                    response = await inner(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN
                if code is grpc.StatusCode.UNKNOWN:
                    _log.exception("unhandled error", extra={"rpc": details.method})
                raise
            finally:
                if not isinstance(code, grpc.StatusCode):
                    code = grpc.StatusCode.UNKNOWN
                GRPC_HANDLED.labels(service, method, code.name).inc()
                GRPC_LATENCY.labels(service, method).observe(time.perf_counter() - started)
                request_id_var.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=_lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


class MeshServer:
    """A ``grpc.aio`` server with health, reflection and the mesh interceptor.

    ``service_names`` are the full names of the services registered on it; they
    are listed by reflection and reported by the health service, NOT_SERVING
    until ``set_serving(True)``. ``tls`` defaults to ``MeshTls.from_env()``;
    ``health_port`` to ``GRPC_HEALTH_PORT`` (unset: no health-only port; 0: any
    free port). Both raise ``ConfigError`` here, at start-up, when misconfigured.
    """

    def __init__(
        self,
        name: str,
        *,
        host: str,
        port: int,
        service_names: Sequence[str],
        max_message_bytes: int = 8 * 1024 * 1024,
        tls: MeshTls | None = None,
        health_port: int | None = None,
    ) -> None:
        self.name = name
        self._address = f"{host}:{port}"
        self.tls = tls if tls is not None else MeshTls.from_env()
        self._credentials = self.tls.server_credentials() if self.tls.enabled else None
        if health_port is None and Env().optional("GRPC_HEALTH_PORT"):
            health_port = Env().integer("GRPC_HEALTH_PORT", 0, minimum=0)
        self._health_address = f"{host}:{health_port}" if health_port is not None else None
        self._service_names = list(service_names)
        self.grpc = grpc.aio.server(
            interceptors=[MeshInterceptor()],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
                # Clients re-resolve DNS only when a connection ends: ending
                # them now and then spreads load onto new replicas.
                ("grpc.max_connection_age_ms", 5 * 60 * 1000),
                ("grpc.max_connection_age_grace_ms", 30 * 1000),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self._health_grpc: grpc.aio.Server | None = None
        if self._health_address is not None:
            self._health_grpc = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_grpc)
        self.port = 0
        self.health_port: int | None = None

    async def start(self) -> int:
        """Binds, starts, and returns the bound port (useful with port 0)."""
        reflection.enable_server_reflection(
            [*self._service_names, _HEALTH_SERVICE, reflection.SERVICE_NAME], self.grpc
        )
        if self._credentials is not None:
            self.port = self.grpc.add_secure_port(self._address, self._credentials)
        else:
            self.port = self.grpc.add_insecure_port(self._address)
        if self.port == 0:
            raise OSError(f"cannot bind {self._address}")
        if self._health_grpc is not None and self._health_address is not None:
            self.health_port = self._health_grpc.add_insecure_port(self._health_address)
            if self.health_port == 0:
                raise OSError(f"cannot bind {self._health_address} (GRPC_HEALTH_PORT)")
        await self.set_serving(False)
        await self.grpc.start()
        if self._health_grpc is not None:
            await self._health_grpc.start()
        _log.info(
            "grpc server started",
            extra={
                "address": self._address,
                "port": self.port,
                "tls": self.tls.mode,
                "health_port": self.health_port,
            },
        )
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ["", *self._service_names]:
            await self.health.set(service, status)

    async def stop(self, grace: float = 10.0) -> None:
        """Reports NOT_SERVING, lets in-flight RPCs finish within ``grace``, stops."""
        await self.health.enter_graceful_shutdown()
        await self.grpc.stop(grace)
        if self._health_grpc is not None:
            await self._health_grpc.stop(None)
        _log.info("grpc server stopped", extra={"port": self.port})

    async def wait_for_termination_signal(self) -> None:
        """Returns on SIGTERM or SIGINT."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        _log.info("termination signal received: shutting down", extra={"port": self.port})
