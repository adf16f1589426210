"""Cassandra stopped for 30 s under the chatlog service while many users talk.

Replies keep flowing: the dialogue's chatlog writes go to its Redis outbox
while the chatlog cannot take them, and are replayed once Cassandra is back.
Afterwards every inbound message and every reply is in the transcript of its
conversation exactly once.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.chatlog.v1 import chatlog_service_pb2_grpc
from chatbot.common.v1 import event_pb2
from grpc_health.v1 import health_pb2

from harness.cassandra import CassandraNode
from harness.support import ServiceProcess, free_port, health_status
from tests.dialogue.conftest import Replicas
from tests.faults.conftest import submitter
from tests.faults.load import Load, wait_for
from tests.faults.system import PYTHONPATH, TENANT, FaultRedis, GraphApi
from tests.faults.tally import check, report, tally

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.cassandra]

SERVING = health_pb2.HealthCheckResponse.SERVING
DOWN_S = 30.0


@pytest.fixture
def cassandra_chatlog(faults_cassandra: CassandraNode, tmp_path: Path) -> Iterator[ServiceProcess]:
    """The real chatlog service, as its own process, on the session's Cassandra node."""
    port = free_port()
    server = ServiceProcess(
        [sys.executable, "-m", "services.chatlog", "serve"],
        {
            "PYTHONPATH": PYTHONPATH,
            "CHATLOG_PORT": str(port),
            "METRICS_PORT": "0",
            "TENANT_ID": TENANT,
            "CHATLOG_BACKEND": "cassandra",
            "CASSANDRA_PORT": str(faults_cassandra.port),
            "CASSANDRA_KEYSPACE": "faults",
            "CHATLOG_HEALTH_INTERVAL_SECONDS": "0.5",
            "LOG_LEVEL": "INFO",
        },
        tmp_path / "chatlog.log",
        port,
    )
    try:
        server.wait_for_status(SERVING, timeout=60)
        yield server
    finally:
        server.stop()


def outbox_length(redis: Any) -> int:
    """Entries waiting in every shard of the chatlog outbox."""
    return sum(int(redis.xlen(key)) for key in redis.scan_iter(match="dlg:*:chatlog"))


def transcript(stub: chatlog_service_pb2_grpc.ChatlogServiceStub, conversation: str) -> list[str]:
    """Every message id of a conversation, following next_page_token."""
    ids: list[str] = []
    token = ""
    while True:
        reply = stub.ListMessages(
            chatlog_pb.ListMessagesRequest(
                tenant_id=TENANT, conversation_id=conversation, page_size=200, page_token=token
            ),
            timeout=30,
        )
        ids += [m.message_id for m in reply.messages]
        token = reply.next_page_token
        if not token:
            return ids


def test_cassandra_down_30s_replies_flow_and_the_chatlog_catches_up(
    replicas: Replicas,
    graph_api: GraphApi,
    fault_redis: FaultRedis,
    faults_cassandra: CassandraNode,
    cassandra_chatlog: ServiceProcess,
    record_property: Callable[[str, object], None],
) -> None:
    address = f"127.0.0.1:{cassandra_chatlog.port}"
    replicas.start(3, CHATLOG_ADDRESS=address)  # three outbox replayers
    # Users of this run only: the node (and this keyspace) live for the whole session.
    prefix = f"c{int(time.time()) % 100_000}_"
    load = Load(16, 16, submitter(replicas), span_s=32, clients=4, prefix=prefix).start()
    redis = fault_redis.client()
    outbox_peak = 0
    try:
        load.sleep_until(3.0)
        at_fault = [load.snapshot(graph_api.replies_by_user())]
        stopped = time.monotonic()
        faults_cassandra.stop()
        stop_s = time.monotonic() - stopped
        replies_at_stop = len(graph_api.sent)
        while time.monotonic() - stopped < DOWN_S:
            outbox_peak = max(outbox_peak, outbox_length(redis))
            time.sleep(0.5)
        replies_while_down = len(graph_api.sent) - replies_at_stop
    finally:
        started = time.monotonic()
        faults_cassandra.start()  # idempotent: the node is up for whoever comes next
        start_s = time.monotonic() - started
    load.join(timeout=60)
    load.during(at_fault)
    assert replies_while_down > 0, "replies stopped while Cassandra was down"
    assert outbox_peak > 0, "no chatlog write went to the outbox: did the outage bite?"

    def answered() -> bool:
        return tally(load.expected, graph_api.replies_by_user()).complete

    wait_for(answered, timeout=60, interval=0.25)
    # The chatlog notices the node is back, and the outbox drains into it.
    wait_for(lambda: health_status(cassandra_chatlog.port) == SERVING, timeout=60)
    replayed_s = wait_for(lambda: outbox_length(redis) == 0, timeout=60, interval=0.25)
    redis.close()
    time.sleep(1.0)
    result = tally(load.expected, graph_api.replies_by_user())

    # Every inbound message and its one reply, each exactly once in its transcript.
    lost, duplicated, unexpected = 0, 0, 0
    with grpc.insecure_channel(address) as channel:
        stub = chatlog_service_pb2_grpc.ChatlogServiceStub(channel)
        for user, mids in load.expected.items():
            ids = Counter(transcript(stub, f"{event_pb2.CHANNEL_MESSENGER}:{user}"))
            wanted = set(mids) | {f"{mid}:r0" for mid in mids}
            lost += len(wanted - set(ids))
            duplicated += sum(n - 1 for n in ids.values())
            unexpected += len(set(ids) - wanted)
    report(
        f"cassandra down {DOWN_S:.0f}s",
        result,
        0,
        record_property,
        replies_while_down=replies_while_down,
        outbox_peak=outbox_peak,
        chatlog_lost=lost,
        chatlog_duplicated=duplicated,
        chatlog_unexpected=unexpected,
        node_stop_s=round(stop_s, 1),
        node_start_s=round(start_s, 1),
        outbox_drained_after_s=round(replayed_s, 1),
    )
    # No process crashes here: not a single repeated reply is allowed.
    check(result, 0, per_user=0)
    assert (lost, duplicated, unexpected) == (0, 0, 0)
