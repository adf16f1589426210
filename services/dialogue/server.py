"""Runs the dialogue service: the gRPC API and this replica's workers."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2, dialogue_service_pb2_grpc
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from mesh import Env, get_logger
from mesh.channels import open_channel
from mesh.metrics import serve_metrics
from mesh.server import MeshServer
from mesh.tenants import Tenants
from services.dialogue.actions import ActionRunner
from services.dialogue.channels import DEFAULT_GRAPH_API_URL, MessengerChannel, OutboundChannel
from services.dialogue.clients import ChatlogOutbox, GrpcNlu
from services.dialogue.domain import DEFAULT_DOMAIN, Domain, load_domain
from services.dialogue.processor import Processor
from services.dialogue.servicer import DialogueServicer
from services.dialogue.store import DialogueStore, RedisClient, StoreSettings
from services.dialogue.worker import Workers, WorkerSettings

_log = get_logger("dialogue.server")
SERVICE_NAME = dialogue_service_pb2.DESCRIPTOR.services_by_name["DialogueService"].full_name


@dataclass(frozen=True)
class DialogueSettings:
    host: str
    port: int
    metrics_port: int
    redis_url: str
    nlu_address: str
    chatlog_address: str
    graph_api_url: str
    nlu_timeout_s: float
    chatlog_timeout_s: float
    store: StoreSettings
    workers: WorkerSettings
    page_token_secret: bytes
    grace_s: float

    @classmethod
    def from_env(cls, env: Env | None = None) -> DialogueSettings:
        env = env or Env()
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        secret = env.secret("DIALOGUE_PAGE_TOKEN_SECRET")
        if not secret:
            _log.warning(
                "DIALOGUE_PAGE_TOKEN_SECRET is not set: page tokens work only on this replica"
            )
        return cls(
            host=env.string("GRPC_HOST", "127.0.0.1"),
            port=env.integer("DIALOGUE_PORT", 50051, minimum=0),
            metrics_port=env.integer("METRICS_PORT", 9051, minimum=0),
            redis_url=env.string("REDIS_URL", "redis://127.0.0.1:6379/0"),
            nlu_address=env.string("NLU_ADDRESS", "127.0.0.1:50052"),
            chatlog_address=env.string("CHATLOG_ADDRESS", "127.0.0.1:50053"),
            graph_api_url=env.string("MESSENGER_GRAPH_API_URL", DEFAULT_GRAPH_API_URL),
            nlu_timeout_s=env.integer("NLU_TIMEOUT_MS", 3000, minimum=1) / 1000,
            chatlog_timeout_s=env.integer("CHATLOG_TIMEOUT_MS", 2000, minimum=1) / 1000,
            store=StoreSettings(
                holder=holder,
                lease_ms=env.integer("DIALOGUE_LEASE_MS", 10_000, minimum=100),
                dedupe_ttl_s=env.integer("DIALOGUE_DEDUPE_TTL_SECONDS", 48 * 3600, minimum=1),
                result_ttl_s=env.integer("DIALOGUE_RESULT_TTL_SECONDS", 3600, minimum=1),
                slot_ttl_s=env.integer("DIALOGUE_SLOT_TTL_SECONDS", 24 * 3600, minimum=1),
                stall_grace_s=env.number("DIALOGUE_STALL_GRACE_SECONDS", 5.0),
                reorder_window_ms=env.integer("DIALOGUE_REORDER_WINDOW_MS", 200, minimum=0),
            ),
            workers=WorkerSettings(
                concurrency=env.integer("DIALOGUE_WORKERS", 32, minimum=1),
                turn_items=env.integer("DIALOGUE_TURN_ITEMS", 1, minimum=1),
                max_attempts=env.integer("DIALOGUE_MAX_ATTEMPTS", 5, minimum=1),
                retry_backoff_s=env.integer("DIALOGUE_RETRY_BACKOFF_MS", 500, minimum=0) / 1000,
                sweep_interval_s=env.number("DIALOGUE_SWEEP_SECONDS", 3.0),
            ),
            page_token_secret=(secret or secrets.token_hex(32)).encode(),
            grace_s=env.number("SHUTDOWN_GRACE_SECONDS", 10.0),
        )


async def connect_redis(url: str, *, blocking: bool = False) -> RedisClient:
    """A client for ``url``: a cluster client when the server is a cluster node.

    ``blocking`` clients serve blocking pops, so they have no read time-out;
    the others fail fast (5 s) when Redis stops answering.
    """
    timeout = None if blocking else 5.0
    # A bounded pool that waits for a free connection instead of failing.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=1000 if blocking else 128,
        timeout=5,
        socket_connect_timeout=2,
        socket_timeout=timeout,
    )
    single = Redis(connection_pool=pool)
    try:
        info = await single.info("cluster")
    except RedisError:
        info = {}
    if info.get("cluster_enabled") in (1, "1"):
        await single.aclose()
        return RedisCluster.from_url(
            url,
            socket_connect_timeout=2,
            socket_timeout=timeout,
            max_connections=1000 if blocking else 128,
        )
    return single


def load_domains(tenants: Tenants) -> dict[str, Domain]:
    default = load_domain(DEFAULT_DOMAIN)
    return {t.id: load_domain(Path(t.domain)) if t.domain else default for t in tenants}


async def _watch_health(server: MeshServer, store: DialogueStore) -> None:
    serving: bool | None = None
    while True:
        try:
            healthy = await store.ping()
        except RedisError:
            healthy = False
        if healthy != serving:
            serving = healthy
            await server.set_serving(healthy)
            _log.info("health changed", extra={"serving": healthy})
        await asyncio.sleep(2.0)


async def serve(settings: DialogueSettings, tenants: Tenants) -> None:
    domains = load_domains(tenants)
    redis = await connect_redis(settings.redis_url)
    blocking_redis = await connect_redis(settings.redis_url, blocking=True)
    store = DialogueStore(redis, settings.store, blocking=blocking_redis)
    nlu_channel = open_channel(settings.nlu_address)
    chatlog_channel = open_channel(settings.chatlog_address)
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=200))
    chatlog = ChatlogOutbox(
        chatlog_channel,
        redis,
        settings.store.holder,
        timeout_s=settings.chatlog_timeout_s,
        blocking=blocking_redis,
    )
    channels: dict[int, OutboundChannel] = {
        event_pb2.CHANNEL_MESSENGER: MessengerChannel(http, settings.graph_api_url)
    }
    processor = Processor(
        store, tenants, domains, GrpcNlu(nlu_channel, settings.nlu_timeout_s), chatlog,
        channels, ActionRunner(http),
    )  # fmt: skip
    server = MeshServer(
        "dialogue", host=settings.host, port=settings.port, service_names=[SERVICE_NAME]
    )
    dialogue_service_pb2_grpc.add_DialogueServiceServicer_to_server(
        DialogueServicer(store, tenants, chatlog, settings.page_token_secret), server.grpc
    )
    serve_metrics(settings.metrics_port)
    port = await server.start()
    print(f"dialogue service listening on {settings.host}:{port}", flush=True)
    tasks = [
        asyncio.create_task(_watch_health(server, store)),
        asyncio.create_task(Workers(store, processor, settings.workers).run()),
        asyncio.create_task(chatlog.replay_forever()),
    ]
    try:
        await server.wait_for_termination_signal()
    finally:
        await server.health.enter_graceful_shutdown()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.stop(settings.grace_s)
        await nlu_channel.close()
        await chatlog_channel.close()
        await http.aclose()
        await redis.aclose()
        await blocking_redis.aclose()
