"""Runs the chatlog service: binds at once, connects the store in the background.

The server answers health checks from its first second: NOT_SERVING until
the store answers (Cassandra may start after us, or be down for a while),
SERVING while it does. RPCs meanwhile fail fast with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable

from chatbot.chatlog.v1 import chatlog_service_pb2, chatlog_service_pb2_grpc

from mesh import get_logger
from mesh.metrics import serve_metrics
from mesh.page_tokens import PageTokens
from mesh.server import MeshServer
from mesh.tenants import Tenants
from services.chatlog.errors import InvalidArgument
from services.chatlog.health import StoreMonitor
from services.chatlog.retention import RetentionPolicies
from services.chatlog.servicer import ChatlogServicer
from services.chatlog.settings import ChatlogSettings
from services.chatlog.store.base import ChatlogStore
from services.chatlog.store.metered import metered

_log = get_logger("chatlog.server")
SERVICE_NAME = chatlog_service_pb2.DESCRIPTOR.services_by_name["ChatlogService"].full_name


def build_store(settings: ChatlogSettings) -> ChatlogStore:
    if settings.backend == "cassandra":
        from services.chatlog.store.cassandra import CassandraStore

        return CassandraStore(settings.cassandra)
    from services.chatlog.store.sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path)


def page_tokens(settings: ChatlogSettings, backend: str) -> PageTokens:
    secret = settings.page_token_secret
    if secret is None:
        _log.warning(
            "CHATLOG_PAGE_TOKEN_SECRET is not set: page tokens are signed with a random "
            "secret of this process, so they fail after a restart and on other replicas"
        )
        secret = secrets.token_bytes(32)
    return PageTokens(secret, backend, InvalidArgument)


class ChatlogApp:
    """The server, its store and the health monitor, started and stopped together."""

    def __init__(
        self,
        settings: ChatlogSettings,
        tenants: Tenants,
        store: ChatlogStore | None = None,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """``clock`` (Unix ns) decides what has expired; tests where time is the subject set it."""
        self.settings = settings
        self.store = store or build_store(settings)
        self.server = MeshServer(
            "chatlog", host=settings.host, port=settings.port, service_names=[SERVICE_NAME]
        )
        self.monitor = StoreMonitor(
            self.store,
            self.server.set_serving,
            interval=settings.health_interval,
            maintenance_interval=settings.maintenance_interval,
            clock=clock,
        )
        self.servicer = ChatlogServicer(
            metered(self.store),
            tenants,
            page_tokens(settings, self.store.name),
            RetentionPolicies(
                self.store, settings.default_message_ttl_ns, settings.retention_cache_seconds
            ),
            limits=settings.limits,
            on_unavailable=self.monitor.report_unavailable,
            clock=clock,
        )
        chatlog_service_pb2_grpc.add_ChatlogServiceServicer_to_server(
            self.servicer, self.server.grpc
        )
        self._monitoring: asyncio.Task[None] | None = None

    async def start(self) -> int:
        port = await self.server.start()
        self._monitoring = asyncio.create_task(self.monitor.run(), name="chatlog-store-monitor")
        return port

    async def stop(self) -> None:
        if self._monitoring is not None:
            self.monitor.stop()
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(self._monitoring)
            except TimeoutError:  # a probe still waiting on the store: cancel it
                self._monitoring.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._monitoring
        await self.server.stop(self.settings.grace)
        await self.store.close()


async def serve(settings: ChatlogSettings, tenants: Tenants) -> None:
    app = ChatlogApp(settings, tenants)
    serve_metrics(settings.metrics_port)
    port = await app.start()
    where = settings.sqlite_path if settings.backend == "sqlite" else settings.cassandra.hosts
    print(
        f"chatlog service listening on {settings.host}:{port} ({settings.backend}: {where})",
        flush=True,
    )
    try:
        await app.server.wait_for_termination_signal()
    finally:
        await app.stop()
