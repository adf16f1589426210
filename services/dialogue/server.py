"""Runs the dialogue service: the gRPC API, this replica's workers, or both
(``DIALOGUE_ROLE``, see ``settings``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2, dialogue_service_pb2_grpc
from redis.exceptions import RedisError

from mesh import get_logger
from mesh.channels import open_channel
from mesh.metrics import serve_metrics
from mesh.redis_client import connect
from mesh.server import MeshServer
from mesh.tenants import Tenants
from services.dialogue.actions import ActionRunner
from services.dialogue.channels import MessengerChannel, OutboundChannel
from services.dialogue.clients import ChatlogOutbox, GrpcNlu
from services.dialogue.domain import load_domains
from services.dialogue.handover import ThreadControl
from services.dialogue.http import HttpClient
from services.dialogue.processor import Processor
from services.dialogue.servicer import DialogueServicer
from services.dialogue.settings import DialogueSettings
from services.dialogue.store import DialogueStore
from services.dialogue.worker import Workers

_log = get_logger("dialogue.server")
SERVICE_NAME = dialogue_service_pb2.DESCRIPTOR.services_by_name["DialogueService"].full_name


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
    # Bounded pools: a burst waits for a free connection instead of failing.
    redis = await connect(settings.redis_url, max_connections=128)
    # Blocking pops wait as long as they are told to: no read time-out.
    blocking_redis = await connect(settings.redis_url, timeout=None, max_connections=1000)
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
    closers: list[Callable[[], Awaitable[None]]] = []
    if settings.serves_api:
        # The console's hand-off and give-back call Messenger's thread control.
        thread_http = HttpClient(max_connections=20)
        closers.append(thread_http.aclose)
        threads = ThreadControl(thread_http, settings.graph_api_url)
        servicer = DialogueServicer(store, tenants, chatlog, settings.page_token_secret, threads)
        dialogue_service_pb2_grpc.add_DialogueServiceServicer_to_server(servicer, server.grpc)
    serve_metrics(settings.metrics_port)
    port = await server.start()
    print(f"dialogue service ({settings.role}) listening on {settings.host}:{port}", flush=True)
    tasks = [asyncio.create_task(_watch_health(server, store))]
    if settings.runs_workers:
        nlu_channel = open_channel(settings.nlu_address)
        http = HttpClient(max_connections=200)
        closers += [nlu_channel.close, http.aclose]
        channels: dict[int, OutboundChannel] = {
            event_pb2.CHANNEL_MESSENGER: MessengerChannel(http, settings.graph_api_url)
        }
        processor = Processor(
            store, tenants, domains, GrpcNlu(nlu_channel, settings.nlu_timeout_s), chatlog,
            channels, ActionRunner(http), ThreadControl(http, settings.graph_api_url),
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
