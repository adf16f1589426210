"""Fixtures of the chatlog suite: one server per backend (Cassandra on the
session's node), and a ``chatlog`` fixture that runs a test against both."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.chatlog.v1 import chatlog_service_pb2_grpc
from chatbot.common.v1 import event_pb2, nlu_result_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from harness.cassandra import CassandraNode
from services.chatlog.settings import ChatlogSettings
from services.chatlog.store.cassandra import CassandraConfig
from tests.chatlog.harness import TOKEN_SECRET, Harness

if TYPE_CHECKING:
    from chatbot.chatlog.v1.chatlog_service_pb2_grpc import ChatlogServiceStub

# Messages of the tests happen from here on (a Monday, 09:00 UTC).
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
IN, OUT = pb.DIRECTION_INBOUND, pb.DIRECTION_OUTBOUND
MESSENGER, API = event_pb2.CHANNEL_MESSENGER, event_pb2.CHANNEL_API
_tenants = itertools.count()


def ts(at: float | dt.datetime) -> Timestamp:
    """A Timestamp ``at`` seconds after T0 (or at a datetime)."""
    when = at if isinstance(at, dt.datetime) else T0 + dt.timedelta(seconds=at)
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def fresh_tenant() -> str:
    """A tenant no other test has used."""
    return f"t{next(_tenants):03d}"


def settings(**changes: Any) -> ChatlogSettings:
    base = ChatlogSettings(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        page_token_secret=TOKEN_SECRET,
        health_interval=0.5,
        grace=1.0,
    )
    return replace(base, **changes)


def cassandra_config(node: CassandraNode, **changes: Any) -> CassandraConfig:
    return replace(
        CassandraConfig(
            port=node.port, keyspace="chatlog_test", request_timeout=5.0, connect_timeout=2.0
        ),
        **changes,
    )


@pytest.fixture(scope="session")
def sqlite_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    path: Path = tmp_path_factory.mktemp("chatlog-sqlite") / "chatlog.sqlite3"
    harness = Harness(settings(backend="sqlite", sqlite_path=path))
    try:
        harness.wait_serving()
        yield harness
    finally:
        harness.stop()


@pytest.fixture(scope="session")
def cassandra_harness(cassandra_node: CassandraNode) -> Iterator[Harness]:
    harness = Harness(settings(backend="cassandra", cassandra=cassandra_config(cassandra_node)))
    try:
        harness.wait_serving()
        yield harness
    finally:
        harness.stop()


@dataclass
class Chatlog:
    """One backend's server, a stub to it, and a tenant of this test's own."""

    harness: Harness
    stub: ChatlogServiceStub
    tenant: str

    @property
    def backend(self) -> str:
        return self.harness.backend

    def message(
        self,
        conversation: str,
        message_id: str,
        *,
        at: float,
        user: str = "u1",
        channel: int = MESSENGER,
        direction: int = IN,
        text: str = "",
        intent: str = "",
        confidence: float = 0.9,
        ranking: Sequence[tuple[str, float]] = (),
        entities: Sequence[nlu_result_pb2.Entity] = (),
        fallback: bool = False,
        handed_off: bool = False,
        processing_ms: int | None = None,
        token: int = 0,
        tenant: str | None = None,
        **fields: Any,
    ) -> pb.ChatMessage:
        message = pb.ChatMessage(
            user=event_pb2.UserRef(
                tenant_id=tenant or self.tenant,
                channel=channel,  # type: ignore[arg-type]
                user_id=user,
            ),
            conversation_id=conversation,
            message_id=message_id,
            direction=direction,  # type: ignore[arg-type]
            text=text,
            create_time=ts(at),
            is_fallback=fallback,
            handed_off=handed_off,
            fencing_token=token,
            entities=entities,
            intent_ranking=[nlu_result_pb2.Intent(name=n, confidence=c) for n, c in ranking],
            **fields,
        )
        if intent:
            message.intent.CopyFrom(nlu_result_pb2.Intent(name=intent, confidence=confidence))
        if processing_ms is not None:
            message.processing_duration.FromMilliseconds(processing_ms)
        return message

    def append(self, *messages: pb.ChatMessage) -> list[int]:
        reply = self.stub.AppendMessages(pb.AppendMessagesRequest(messages=messages), timeout=30)
        return [int(r.status) for r in reply.results]

    def transcript(
        self, conversation: str, *, order: int = pb.MESSAGE_ORDER_OLDEST_FIRST, page_size: int = 0
    ) -> list[str]:
        """Every message id of a conversation, following next_page_token."""
        ids: list[str] = []
        token = ""
        while True:
            reply = self.stub.ListMessages(
                pb.ListMessagesRequest(
                    tenant_id=self.tenant,
                    conversation_id=conversation,
                    order=order,  # type: ignore[arg-type]
                    page_size=page_size,
                    page_token=token,
                ),
                timeout=30,
            )
            ids += [m.message_id for m in reply.messages]
            token = reply.next_page_token
            if not token:
                return ids

    def conversations(self, **fields: Any) -> list[str]:
        """Every conversation id ListConversations gives, following next_page_token."""
        ids: list[str] = []
        token = ""
        while True:
            reply = self.stub.ListConversations(
                pb.ListConversationsRequest(tenant_id=self.tenant, page_token=token, **fields),
                timeout=30,
            )
            ids += [c.conversation_id for c in reply.conversations]
            token = reply.next_page_token
            if not token:
                return ids


def _chatlog(harness: Harness) -> Iterator[Chatlog]:
    with grpc.insecure_channel(harness.address) as channel:
        yield Chatlog(harness, chatlog_service_pb2_grpc.ChatlogServiceStub(channel), fresh_tenant())


@pytest.fixture(params=["sqlite", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def chatlog(request: pytest.FixtureRequest) -> Iterator[Chatlog]:
    """The test runs twice: against the SQLite store, then against Cassandra."""
    yield from _chatlog(request.getfixturevalue(f"{request.param}_harness"))


@pytest.fixture
def sqlite_chatlog(sqlite_harness: Harness) -> Iterator[Chatlog]:
    yield from _chatlog(sqlite_harness)


@pytest.fixture
def cassandra_chatlog(cassandra_harness: Harness) -> Iterator[Chatlog]:
    yield from _chatlog(cassandra_harness)


def code_of(call: Any, request: Any) -> grpc.StatusCode:
    """The status code a call ends with (OK when it succeeds)."""
    try:
        call(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@dataclass(frozen=True)
class Failure:
    """How a call failed: its status code and message."""

    status: grpc.StatusCode
    message: str

    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str:
        return self.message


def rpc_error(call: Any, request: Any) -> Failure:
    """The failure of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    error: Any = info.value
    return Failure(error.code(), error.details() or "")
