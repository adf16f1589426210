"""Retention: a policy per tenant, a TTL on every row stored after it, and real expiry."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import grpc
import pytest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import RoundRobinPolicy
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.chatlog.v1.chatlog_service_pb2_grpc import ChatlogServiceStub
from google.protobuf.duration_pb2 import Duration

from harness.cassandra import CassandraNode
from tests.chatlog.conftest import T0, Chatlog, code_of, fresh_tenant, rpc_error, settings
from tests.chatlog.harness import Harness

DAY = 86_400


def set_policy(chatlog: Chatlog, seconds: int) -> pb.RetentionPolicy:
    reply = chatlog.stub.SetRetentionPolicy(
        pb.SetRetentionPolicyRequest(
            policy=pb.RetentionPolicy(
                tenant_id=chatlog.tenant, message_ttl=Duration(seconds=seconds)
            )
        )
    )
    return reply.policy


def since_t0(moment: float) -> float:
    """Seconds from T0 to a Unix time (Chatlog.message takes times relative to T0)."""
    return moment - T0.timestamp()


def test_get_and_set(chatlog: Chatlog) -> None:
    default = chatlog.stub.GetRetentionPolicy(
        pb.GetRetentionPolicyRequest(tenant_id=chatlog.tenant)
    ).policy
    assert (default.tenant_id, default.message_ttl.seconds) == (chatlog.tenant, 0)
    assert not default.HasField("update_time")
    before = time.time()
    stored = set_policy(chatlog, 2 * DAY)
    assert stored.message_ttl.seconds == 2 * DAY
    assert before - 1 <= stored.update_time.seconds <= time.time() + 1
    read = chatlog.stub.GetRetentionPolicy(pb.GetRetentionPolicyRequest(tenant_id=chatlog.tenant))
    assert read.policy == stored
    assert set_policy(chatlog, 0).message_ttl.seconds == 0  # keep until deleted


@pytest.mark.parametrize(
    ("tenant", "seconds", "nanos", "named"),
    [
        ("", DAY, 0, "policy.tenant_id"),
        ("nobody", DAY, 0, "policy.tenant_id"),
        ("own", -DAY, 0, "negative"),
        ("own", 3600, 0, "one day"),
        ("own", DAY, -1, "policy.message_ttl"),
    ],
)
def test_bad_policies(chatlog: Chatlog, tenant: str, seconds: int, nanos: int, named: str) -> None:
    policy = pb.RetentionPolicy(
        tenant_id=chatlog.tenant if tenant == "own" else tenant,
        message_ttl=Duration(seconds=seconds, nanos=nanos),
    )
    error = rpc_error(chatlog.stub.SetRetentionPolicy, pb.SetRetentionPolicyRequest(policy=policy))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in error.details()
    get = pb.GetRetentionPolicyRequest(tenant_id="")
    assert code_of(chatlog.stub.GetRetentionPolicy, get) == grpc.StatusCode.INVALID_ARGUMENT


class ManualClock:
    """The chatlog's clock (Unix ns), moved only by the test."""

    def __init__(self) -> None:
        self.now_ns = time.time_ns()

    def __call__(self) -> int:
        return self.now_ns

    @property
    def seconds(self) -> float:
        return self.now_ns / 1e9


@pytest.fixture(scope="module")
def manual_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="module")
def clocked_chatlog(
    tmp_path_factory: pytest.TempPathFactory, manual_clock: ManualClock
) -> Iterator[Chatlog]:
    """A SQLite chatlog on a clock of the test's own: what has expired is decided
    by that clock, so nothing expires while a slow machine runs the test."""
    path = tmp_path_factory.mktemp("chatlog-clocked") / "chatlog.sqlite3"
    harness = Harness(settings(backend="sqlite", sqlite_path=path), clock=manual_clock)
    try:
        harness.wait_serving()
        with grpc.insecure_channel(harness.address) as channel:
            yield Chatlog(harness, ChatlogServiceStub(channel), fresh_tenant())
    finally:
        harness.stop()


def test_messages_expire_with_the_policy_of_when_they_were_stored(
    clocked_chatlog: Chatlog, manual_clock: ManualClock
) -> None:
    chatlog, clock = clocked_chatlog, manual_clock
    kept = chatlog.message("c0", "kept", at=since_t0(clock.seconds - 2 * DAY), text="kept")
    chatlog.append(kept)  # stored under the default policy: kept until deleted
    set_policy(chatlog, DAY)
    # Created a day ago less 5 s: it expires 5 s from now; its neighbour 0.5 s later.
    soon = since_t0(clock.seconds - DAY + 5)
    chatlog.append(
        chatlog.message("c1", "m1", at=soon, text="short lived"),
        chatlog.message("c1", "m2", at=soon + 0.5, text="short lived too"),
    )
    assert chatlog.transcript("c1") == ["m1", "m2"]
    assert chatlog.conversations() == ["c1", "c0"]
    start = clock.now_ns
    clock.now_ns = start + 4_900_000_000
    assert chatlog.transcript("c1") == ["m1", "m2"]
    clock.now_ns = start + 5_200_000_000
    assert chatlog.transcript("c1") == ["m2"]
    clock.now_ns = start + 6_000_000_000
    request = pb.ListMessagesRequest(tenant_id=chatlog.tenant, conversation_id="c1")
    assert code_of(chatlog.stub.ListMessages, request) == grpc.StatusCode.NOT_FOUND
    assert chatlog.conversations() == ["c0"]
    assert chatlog.transcript("c0") == ["kept"]


@pytest.mark.cassandra
def test_cassandra_expires_the_rows_by_their_ttl(cassandra_chatlog: Chatlog) -> None:
    """Cassandra expires rows by its own clock: the test waits for it to happen."""
    chatlog = cassandra_chatlog
    kept = chatlog.message("c0", "kept", at=since_t0(time.time() - 2 * DAY), text="kept")
    chatlog.append(kept)
    set_policy(chatlog, DAY)
    # Created a day ago less 2 s: the rows get what is left of the day as their TTL.
    soon = since_t0(time.time() - DAY + 2)
    created = chatlog.append(
        chatlog.message("c1", "m1", at=soon, text="short lived"),
        chatlog.message("c1", "m2", at=soon + 0.5, text="short lived too"),
    )
    assert created == [pb.APPEND_STATUS_CREATED] * 2
    request = pb.ListMessagesRequest(tenant_id=chatlog.tenant, conversation_id="c1")
    deadline = time.monotonic() + 60
    while code_of(chatlog.stub.ListMessages, request) != grpc.StatusCode.NOT_FOUND:
        assert time.monotonic() < deadline, "the rows did not expire"
        time.sleep(0.2)
    while chatlog.conversations() != ["c0"]:
        assert time.monotonic() < deadline, "the conversation did not expire"
        time.sleep(0.2)
    assert chatlog.transcript("c0") == ["kept"]


def test_sqlite_stores_the_expiry_and_purges_expired_rows(sqlite_chatlog: Chatlog) -> None:
    chatlog = sqlite_chatlog
    set_policy(chatlog, 2 * DAY)
    created = time.time() - 3600
    chatlog.append(chatlog.message("c1", "m1", at=since_t0(created), text="x"))
    path = chatlog.harness.settings.sqlite_path
    with sqlite3.connect(path) as con:
        (expire_ns,) = con.execute(
            "SELECT expire_ns FROM messages WHERE tenant_id=? AND message_id='m1'",
            (chatlog.tenant,),
        ).fetchone()
    assert expire_ns == pytest.approx((created + 2 * DAY) * 1e9, abs=1e6)
    # Once expired, maintenance deletes the row and the conversation's summary.
    chatlog.harness.call(chatlog.harness.app.store.maintain(expire_ns + 1))
    with sqlite3.connect(path) as con:
        left = con.execute(
            "SELECT (SELECT count(*) FROM messages WHERE tenant_id=?1), "
            "(SELECT count(*) FROM conversations WHERE tenant_id=?1)",
            (chatlog.tenant,),
        ).fetchone()
    assert left == (0, 0)


@pytest.fixture(scope="module")
def cql(cassandra_node: CassandraNode) -> Iterator[Session]:
    """A session of our own, to read what the server wrote."""
    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
    cluster = Cluster(
        ["127.0.0.1"],
        port=cassandra_node.port,
        protocol_version=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    session = cluster.connect("chatlog_test")
    try:
        yield session
    finally:
        cluster.shutdown()


@pytest.mark.cassandra
def test_cassandra_rows_carry_the_ttl(cassandra_chatlog: Chatlog, cql: Session) -> None:
    chatlog, session = cassandra_chatlog, cql
    set_policy(chatlog, 2 * DAY)
    created = time.time() - 3600
    chatlog.append(chatlog.message("c1", "m1", at=since_t0(created), text="hello", intent="greet"))
    expected = 2 * DAY - 3600
    key = {"t": chatlog.tenant, "c": "c1", "m": "m1"}
    checks = {
        "messages_by_id": "SELECT TTL(payload) FROM messages_by_id "
        "WHERE tenant_id=%(t)s AND message_id=%(m)s",
        "messages_by_conversation": "SELECT TTL(payload) FROM messages_by_conversation "
        "WHERE tenant_id=%(t)s AND conversation_id=%(c)s ALLOW FILTERING",
        "messages_by_day": "SELECT TTL(search_text) FROM messages_by_day "
        "WHERE tenant_id=%(t)s AND message_id=%(m)s ALLOW FILTERING",
        "messages_by_intent": "SELECT TTL(text) FROM messages_by_intent "
        "WHERE tenant_id=%(t)s AND intent='greet' AND message_id=%(m)s ALLOW FILTERING",
        "conversations": "SELECT TTL(last_preview) FROM conversations "
        "WHERE tenant_id=%(t)s AND conversation_id=%(c)s",
        "conversations_by_activity": "SELECT TTL(last_preview) FROM conversations_by_activity "
        "WHERE tenant_id=%(t)s AND conversation_id=%(c)s ALLOW FILTERING",
    }
    for table, cql in checks.items():
        rows = list(session.execute(cql, key))
        assert len(rows) == 1, table
        assert rows[0][0] == pytest.approx(expected, abs=120), table
