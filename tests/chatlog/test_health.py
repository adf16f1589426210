"""A store that cannot be reached: UNAVAILABLE at once, NOT_SERVING, and recovery by itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.chatlog.v1 import chatlog_service_pb2_grpc
from chatbot.common.v1 import event_pb2
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2

from harness.cassandra import CassandraNode
from harness.support import free_port, health_status
from services.chatlog.store.cassandra import CassandraConfig
from tests.chatlog.conftest import Chatlog, code_of, fresh_tenant, settings, ts
from tests.chatlog.harness import Harness

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "chatbot.chatlog.v1.ChatlogService"


def every_rpc(
    stub: chatlog_service_pb2_grpc.ChatlogServiceStub, tenant: str
) -> list[tuple[Callable[..., Any], Any]]:
    """One valid request per RPC (valid, so only the store can make it fail)."""
    message = pb.ChatMessage(
        conversation_id="c1", message_id="down-1", direction=pb.DIRECTION_INBOUND, create_time=ts(0)
    )
    message.user.tenant_id, message.user.user_id = tenant, "u1"
    message.user.channel = event_pb2.CHANNEL_MESSENGER
    return [
        (stub.AppendMessages, pb.AppendMessagesRequest(messages=[message])),
        (stub.ListConversations, pb.ListConversationsRequest(tenant_id=tenant)),
        (stub.ListMessages, pb.ListMessagesRequest(tenant_id=tenant, conversation_id="c1")),
        (
            stub.SearchMessages,
            pb.SearchMessagesRequest(
                tenant_id=tenant, query="x", start_time=ts(0), end_time=ts(3600)
            ),
        ),
        (
            stub.GetStats,
            pb.GetStatsRequest(tenant_id=tenant, start_time=ts(0), end_time=ts(3600)),
        ),
        (stub.ExportTrainingData, pb.ExportTrainingDataRequest(tenant_id=tenant)),
        (stub.DeleteUserData, pb.DeleteUserDataRequest(tenant_id=tenant, user_id="u9")),
        (stub.GetRetentionPolicy, pb.GetRetentionPolicyRequest(tenant_id=tenant)),
        (
            stub.SetRetentionPolicy,
            pb.SetRetentionPolicyRequest(
                policy=pb.RetentionPolicy(tenant_id=tenant, message_ttl=Duration(seconds=0))
            ),
        ),
    ]


def assert_unavailable_fast(harness: Harness, tenant: str, within: float) -> None:
    with grpc.insecure_channel(harness.address) as channel:
        stub = chatlog_service_pb2_grpc.ChatlogServiceStub(channel)
        for call, request in every_rpc(stub, tenant):
            started = time.monotonic()
            assert code_of(call, request) == grpc.StatusCode.UNAVAILABLE, call
            assert time.monotonic() - started < within, call


def wait_for_health(port: int, status: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if health_status(port, SERVICE) == status and health_status(port) == status:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"health did not become {status} within {timeout}s")


def test_sqlite_that_cannot_be_opened(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    harness = Harness(settings(backend="sqlite", sqlite_path=blocker / "chatlog.sqlite3"))
    try:
        wait_for_health(harness.port, NOT_SERVING, 10)
        assert_unavailable_fast(harness, fresh_tenant(), within=2)
    finally:
        harness.stop()


def test_server_starts_before_cassandra_and_answers_unavailable() -> None:
    config = CassandraConfig(port=free_port(), keyspace="chatlog_test", connect_timeout=1.0)
    harness = Harness(settings(backend="cassandra", cassandra=config))
    try:
        wait_for_health(harness.port, NOT_SERVING, 10)
        assert_unavailable_fast(harness, fresh_tenant(), within=2)
    finally:
        harness.stop()


@pytest.mark.slow
@pytest.mark.cassandra
def test_cassandra_outage_and_recovery(
    cassandra_node: CassandraNode, cassandra_chatlog: Chatlog
) -> None:
    chatlog = cassandra_chatlog
    port = chatlog.harness.port
    chatlog.append(chatlog.message("c1", "before", at=0, text="before the outage"))
    assert health_status(port, SERVICE) == SERVING
    cassandra_node.stop()
    try:
        # Every RPC fails fast, and health reports it within a probe interval.
        assert_unavailable_fast(chatlog.harness, chatlog.tenant, within=6)
        wait_for_health(port, NOT_SERVING, 10)
    finally:
        cassandra_node.start()
    # Nobody restarts the chatlog: it notices the node is back by itself.
    waited = wait_for_health(port, SERVING, 60)
    assert waited < 60
    chatlog.append(chatlog.message("c1", "after", at=1, text="after the outage"))
    assert chatlog.transcript("c1") == ["before", "after"]
