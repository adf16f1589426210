"""Runs the dialogue service: the gRPC API, this replica's workers, or both
(``DIALOGUE_ROLE``, see ``settings``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2, dialogue_service_pb2_grpc
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from mesh import get_logger
from mesh.channels import open_channel
from mesh.metrics import serve_metrics
from mesh.redis_options import redis_options
from mesh.server import MeshServer
from mesh.tenants import Tenants
from services.dialogue.actions import ActionRunner
from services.dialogue.channels import MessengerChannel, OutboundChannel
from services.dialogue.clients import ChatlogOutbox, GrpcNlu
from services.dialogue.domain import load_domains
from services.dialogue.http import HttpClient
from services.dialogue.processor import Processor
from services.dialogue.servicer import DialogueServicer
from services.dialogue.settings import DialogueSettings
from services.dialogue.store import DialogueStore, RedisClient
from services.dialogue.worker import Workers

_log = get_logger("dialogue.server")
SERVICE_NAME = dialogue_service_pb2.DESCRIPTOR.services_by_name["DialogueService"].full_name


async def connect_redis(url: str, *, blocking: bool = False) -> RedisClient:
    """A client for ``url``: a cluster client when the server is a cluster node.

    ``blocking`` clients serve blocking pops, so they have no read time-out;
    the others fail fast (5 s) when Redis stops answering. Credentials and
    TLS come from ``REDIS_*`` (``mesh.redis_options``).
    """
    timeout = None if blocking else 5.0
    secured = redis_options(url)
    # A bounded pool that waits for a free connection instead of failing.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=1000 if blocking else 128,
        timeout=5,
        socket_connect_timeout=2,
        socket_timeout=timeout,
        **secured,
    )
    single = Redis.from_pool(pool)  # closing the client closes the pool
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
            **secured,
        )
    return single


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
    """Serves this process's role: the API, the workers, or both."""
    domains = load_domains(tenants)
    redis = await connect_redis(settings.redis_url)
    blocking_redis = await connect_redis(settings.redis_url, blocking=True)
    store = DialogueStore(redis, settings.store, blocking=blocking_redis)
    chatlog_channel = open_channel(settings.chatlog_address)
    chatlog = ChatlogOutbox(
        chatlog_channel,
        redis,
        settings.store.holder,
        timeout_s=settings.chatlog_timeout_s,
        blocking=blocking_redis,
        shards=settings.store.shards,
        max_entries=settings.store.outbox_max,
    )
    server = MeshServer(
        "dialogue",
        host=settings.host,
        port=settings.port,
        service_names=[SERVICE_NAME] if settings.serves_api else [],
    )
    if settings.serves_api:
        dialogue_service_pb2_grpc.add_DialogueServiceServicer_to_server(
            DialogueServicer(store, tenants, chatlog, settings.page_token_secret), server.grpc
        )
    serve_metrics(settings.metrics_port)
    port = await server.start()
    print(f"dialogue service ({settings.role}) listening on {settings.host}:{port}", flush=True)
    tasks = [asyncio.create_task(_watch_health(server, store))]
    closers: list[Callable[[], Awaitable[None]]] = []
    if settings.runs_workers:
        nlu_channel = open_channel(settings.nlu_address)
        http = HttpClient(max_connections=200)
        closers += [nlu_channel.close, http.aclose]
        channels: dict[int, OutboundChannel] = {
            event_pb2.CHANNEL_MESSENGER: MessengerChannel(http, settings.graph_api_url)
        }
        processor = Processor(
            store, tenants, domains, GrpcNlu(nlu_channel, settings.nlu_timeout_s), chatlog,
            channels, ActionRunner(http),
        )  # fmt: skip
        tasks += [
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
        for close in closers:
            await close()
        await chatlog_channel.close()
        await redis.aclose()
        await blocking_redis.aclose()
