"""ListConversations: latest activity first, paged, every filter of the contract."""

from __future__ import annotations

import grpc
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.chatlog.v1 import chatlog_service_pb2_grpc
from chatbot.common.v1 import event_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from harness.cassandra import CassandraNode
from tests.chatlog.conftest import (
    API,
    OUT,
    Chatlog,
    cassandra_config,
    code_of,
    fresh_tenant,
    rpc_error,
    settings,
    ts,
)
from tests.chatlog.harness import Harness

DAY = 86_400
EVERY = ["e", "d", "c", "g", "f", "b", "a"]  # by latest message, then id, descending


def scene(chatlog: Chatlog) -> None:
    m = chatlog.message
    sticker = event_pb2.Attachment(type=event_pb2.ATTACHMENT_TYPE_STICKER, sticker_id=369)
    chatlog.append(
        m("a", "a1", at=0, user="ua", text="hello", intent="greet"),
        m("a", "a2", at=10, user="ua", text="hi! how can I help?", direction=OUT),
        m("b", "b1", at=100, user="ub", channel=API, text="blorb", intent="nlu_fallback",
          fallback=True, confidence=0.3),
        m("b", "b2", at=110, user="ub", channel=API, text="Sorry, I did not get that.",
          direction=OUT),
        m("c", "c1", at=DAY, user="ua", text="bye", intent="bye", handed_off=True),
        m("d", "d1", at=-2 * DAY, user="ud", text="hey", intent="greet"),
        m("d", "d2", at=3 * DAY, user="ud", text="thanks", intent="thanks"),
        m("e", "e1", at=5 * DAY, user="ue", attachments=[sticker]),
        m("f", "f1", at=200, user="uf", text="same time"),
        m("g", "g1", at=200, user="ug", text="same time too"),
    )  # fmt: skip


def test_latest_activity_first_with_every_page_size(chatlog: Chatlog) -> None:
    scene(chatlog)
    assert chatlog.conversations() == EVERY
    for size in (1, 2, 3, 7):
        assert chatlog.conversations(page_size=size) == EVERY


def test_the_summary_of_a_conversation(chatlog: Chatlog) -> None:
    scene(chatlog)
    reply = chatlog.stub.ListConversations(pb.ListConversationsRequest(tenant_id=chatlog.tenant))
    by_id = {c.conversation_id: c for c in reply.conversations}
    b = by_id["b"]
    assert (b.user.tenant_id, b.user.channel, b.user.user_id) == (chatlog.tenant, API, "ub")
    assert (b.first_message_time, b.last_message_time) == (ts(100), ts(110))
    assert b.message_count == 2
    assert b.last_message_preview == "Sorry, I did not get that."
    assert b.last_message_direction == OUT
    assert b.last_intent.name == "nlu_fallback"
    assert b.last_intent.confidence == pytest.approx(0.3)
    assert b.has_fallback and not b.handed_off
    assert by_id["c"].handed_off
    assert by_id["e"].last_message_preview == "[sticker]"
    assert not by_id["e"].HasField("last_intent")
    assert by_id["d"].last_intent.name == "thanks"
    assert (by_id["d"].first_message_time, by_id["d"].message_count) == (ts(-2 * DAY), 2)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"channel": API}, ["b"]),
        ({"channel": event_pb2.CHANNEL_MESSENGER}, ["e", "d", "c", "g", "f", "a"]),
        ({"start_time": ts(DAY)}, ["e", "d", "c"]),
        ({"end_time": ts(50)}, ["d", "a"]),
        ({"start_time": ts(100), "end_time": ts(DAY)}, ["d", "g", "f", "b"]),
        ({"intent": "greet"}, ["d", "a"]),
        ({"intent": "nope"}, []),
        ({"has_fallback": True}, ["b"]),
        ({"has_fallback": False}, ["e", "d", "c", "g", "f", "a"]),
        ({"handed_off": True}, ["c"]),
        ({"handed_off": False}, ["e", "d", "g", "f", "b", "a"]),
        ({"user_id": "ua"}, ["c", "a"]),
        ({"user_id": "ua", "channel": API}, []),
        ({"user_id": "ua", "intent": "bye"}, ["c"]),
        ({"intent": "greet", "start_time": ts(0)}, ["d", "a"]),
    ],
)
def test_filters(chatlog: Chatlog, fields: dict[str, object], expected: list[str]) -> None:
    scene(chatlog)
    assert chatlog.conversations(**fields) == expected
    assert chatlog.conversations(page_size=1, **fields) == expected


def test_a_conversation_moves_up_when_it_gets_a_message(chatlog: Chatlog) -> None:
    scene(chatlog)
    chatlog.append(chatlog.message("a", "a3", at=6 * DAY, user="ua", text="back again"))
    assert chatlog.conversations() == ["a", "e", "d", "c", "g", "f", "b"]
    # A late message (older than the latest) changes the count, not the order.
    chatlog.append(chatlog.message("b", "b0", at=50, user="ub", channel=API, text="early"))
    assert chatlog.conversations() == ["a", "e", "d", "c", "g", "f", "b"]
    reply = chatlog.stub.ListConversations(
        pb.ListConversationsRequest(tenant_id=chatlog.tenant, channel=API)
    )
    [b] = reply.conversations
    assert (b.message_count, b.first_message_time, b.last_message_time) == (3, ts(50), ts(110))


def test_tokens_are_bound_to_the_filters(chatlog: Chatlog) -> None:
    scene(chatlog)
    first = chatlog.stub.ListConversations(
        pb.ListConversationsRequest(tenant_id=chatlog.tenant, page_size=2, has_fallback=False)
    )
    assert first.next_page_token
    for request in (
        pb.ListConversationsRequest(tenant_id=chatlog.tenant, page_token=first.next_page_token),
        pb.ListConversationsRequest(
            tenant_id=chatlog.tenant, page_token=first.next_page_token, has_fallback=True
        ),
        pb.ListConversationsRequest(tenant_id=chatlog.tenant, page_token="bm90IGEgdG9rZW4"),
    ):
        assert code_of(chatlog.stub.ListConversations, request) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tenant_id": ""}, "tenant_id"),
        ({"tenant_id": "nobody"}, "tenant_id"),
        ({"page_size": 1001}, "page_size"),
        ({"page_size": -3}, "page_size"),
        ({"start_time": ts(10), "end_time": ts(10)}, "end_time"),
        ({"start_time": ts(10), "end_time": ts(5)}, "end_time"),
        ({"channel": 42}, "channel"),
        ({"end_time": Timestamp(seconds=10**13)}, "end_time"),
        ({"user_id": "u" * 600}, "user_id"),
    ],
)
def test_bad_requests(chatlog: Chatlog, fields: dict[str, object], named: str) -> None:
    request: dict[str, object] = {"tenant_id": chatlog.tenant, **fields}
    error = rpc_error(chatlog.stub.ListConversations, pb.ListConversationsRequest(**request))  # type: ignore[arg-type]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in error.details()


@pytest.mark.cassandra
def test_selective_filters_read_a_bounded_amount_per_call(cassandra_node: CassandraNode) -> None:
    """With a tiny scan budget a call returns a partial page and a token; following the
    tokens still finds exactly the matching conversations, in order."""
    harness = Harness(
        settings(backend="cassandra", cassandra=cassandra_config(cassandra_node, scan_budget=5))
    )
    try:
        harness.wait_serving()
        with grpc.insecure_channel(harness.address) as channel:
            chatlog = Chatlog(
                harness, chatlog_service_pb2_grpc.ChatlogServiceStub(channel), fresh_tenant()
            )
            chatlog.append(
                *(
                    chatlog.message(
                        f"c{n:02d}", f"m{n}", at=n * 3600, user=f"u{n}", text="x",
                        intent="rare" if n % 9 == 0 else "common",
                    )
                    for n in range(40)
                )
            )  # fmt: skip
            calls = 0
            found: list[str] = []
            token = ""
            while True:
                reply = chatlog.stub.ListConversations(
                    pb.ListConversationsRequest(
                        tenant_id=chatlog.tenant, intent="rare", page_token=token, page_size=2
                    )
                )
                calls += 1
                found += [c.conversation_id for c in reply.conversations]
                token = reply.next_page_token
                if not token:
                    break
            assert found == ["c36", "c27", "c18", "c09", "c00"]
            assert calls >= 40 // 5
    finally:
        harness.stop()
