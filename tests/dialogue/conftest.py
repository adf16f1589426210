"""Dialogue replicas as real processes, with real Redis and real stand-in servers."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from chatbot.dialogue.v1 import dialogue_service_pb2_grpc
from grpc_health.v1 import health_pb2

from harness.events import TENANT, message_event
from harness.redis_servers import RedisCluster, RedisServer
from harness.standins import GraphApi, KeywordNlu, RecordingChatlog
from harness.support import REPO, ServiceProcess, free_port

SERVING = health_pb2.HealthCheckResponse.SERVING


class Replicas:
    """Dialogue service processes sharing one Redis."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.processes: list[ServiceProcess] = []
        self._stubs: dict[int, dialogue_service_pb2_grpc.DialogueServiceStub] = {}

    def start(self, count: int = 1, **overrides: str) -> list[ServiceProcess]:
        started = []
        for _ in range(count):
            port = free_port()
            env = {
                **self.env,
                "DIALOGUE_PORT": str(port),
                "METRICS_PORT": "0",
                "PYTHONPATH": f"{REPO}:{REPO / 'build' / 'gen' / 'py'}",
                **overrides,
            }
            process = ServiceProcess(
                [sys.executable, "-m", "services.dialogue", "serve"],
                env,
                self.workdir / f"dialogue-{port}.log",
                port,
            )
            started.append(process)
            # Stopped at the end even if it never becomes healthy.
            self.processes.append(process)
        for process in started:
            process.wait_for_status(SERVING, timeout=60)
        return started

    def kill(self, process: ServiceProcess) -> None:
        process.kill()
        self.processes.remove(process)

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()
        self.processes.clear()

    def stub(self, index: int = 0) -> dialogue_service_pb2_grpc.DialogueServiceStub:
        return self.stub_for(self.processes[index])

    def stub_for(self, process: ServiceProcess) -> dialogue_service_pb2_grpc.DialogueServiceStub:
        stub = self._stubs.get(process.port)
        if stub is None:
            channel = grpc.insecure_channel(f"127.0.0.1:{process.port}")
            stub = self._stubs[process.port] = dialogue_service_pb2_grpc.DialogueServiceStub(
                channel
            )
        return stub


@pytest.fixture(scope="session")
def graph_api() -> Iterator[GraphApi]:
    api = GraphApi().start()
    yield api
    api.stop()


@pytest.fixture(scope="session")
def keyword_nlu() -> Iterator[KeywordNlu]:
    nlu = KeywordNlu()
    yield nlu
    nlu.stop()


@pytest.fixture(scope="session")
def recording_chatlog() -> Iterator[RecordingChatlog]:
    chatlog = RecordingChatlog()
    yield chatlog
    chatlog.stop()


def _flush(target: RedisServer | RedisCluster) -> None:
    nodes = target.nodes if isinstance(target, RedisCluster) else [target]
    for node in nodes:
        client = redis.Redis(port=node.port)
        client.flushall()
        client.close()


def _env(
    redis_url: str, graph: GraphApi, nlu: KeywordNlu, chatlog: RecordingChatlog
) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "NLU_ADDRESS": nlu.address,
        "CHATLOG_ADDRESS": chatlog.address,
        "MESSENGER_GRAPH_API_URL": graph.url,
        "MESSENGER_PAGE_ACCESS_TOKEN": "page-token-for-tests",
        "ORDER_API_URL": graph.url,
        "WEATHER_API_URL": graph.url,
        "TENANT_ID": TENANT,
        "DIALOGUE_PAGE_TOKEN_SECRET": "dialogue-tests-page-tokens",
        "DIALOGUE_RETRY_BACKOFF_MS": "50",
        # Quick takeover after a crash, so the fault tests stay short.
        "DIALOGUE_STALL_GRACE_SECONDS": "1",
        "DIALOGUE_SWEEP_SECONDS": "0.5",
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture
def replicas(
    redis_server: RedisServer,
    graph_api: GraphApi,
    keyword_nlu: KeywordNlu,
    recording_chatlog: RecordingChatlog,
    tmp_path: Path,
) -> Iterator[Replicas]:
    _flush(redis_server)
    graph_api.clear()
    keyword_nlu.delay_s, keyword_nlu.up = 0.0, True
    keyword_nlu.calls.clear()
    recording_chatlog.up = True
    group = Replicas(tmp_path, _env(redis_server.url, graph_api, keyword_nlu, recording_chatlog))
    yield group
    group.stop_all()


@pytest.fixture
def cluster_replicas(
    redis_cluster: RedisCluster,
    graph_api: GraphApi,
    keyword_nlu: KeywordNlu,
    recording_chatlog: RecordingChatlog,
    tmp_path: Path,
) -> Iterator[Replicas]:
    _flush(redis_cluster)
    graph_api.clear()
    keyword_nlu.delay_s, keyword_nlu.up = 0.0, True
    keyword_nlu.calls.clear()
    group = Replicas(tmp_path, _env(redis_cluster.url, graph_api, keyword_nlu, recording_chatlog))
    yield group
    group.stop_all()


def submit(
    stub: dialogue_service_pb2_grpc.DialogueServiceStub, *events: event_pb2.ChatEvent
) -> list[int]:
    reply = stub.SubmitEvents(pb.SubmitEventsRequest(events=list(events)), timeout=10)
    return [r.status for r in reply.results]


def settled(replicas: Replicas, user_ids: Iterable[str]) -> bool:
    """No user of ``user_ids`` (Messenger users of the test tenant) has an item
    queued or a lease held: none of their replies is still on its way.

    A reply is sent under its user's lease, and the lease is given up only once
    the send was answered; so after this holds, a reply that was not recorded
    will never be (a killed worker's last request aside: the Graph API stand-in
    records it within its own ``delay_s`` of the kill). The positive signal a
    negative check waits for, instead of a sleep.
    """
    stub = replicas.stub()
    for user_id in user_ids:
        user = event_pb2.UserRef(
            tenant_id=TENANT, channel=event_pb2.CHANNEL_MESSENGER, user_id=user_id
        )
        request = pb.GetConversationStateRequest(user=user)
        state = stub.GetConversationState(request, timeout=10).state
        if state.queue_length or state.lease_holder:
            return False
    return True


def wait_for(predicate: object, timeout: float = 30.0, interval: float = 0.05) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


__all__ = ["TENANT", "Replicas", "message_event", "settled", "submit", "wait_for"]
