"""AppendMessages: idempotent by (tenant, message_id), fenced, and strict about its input."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.common.v1 import event_pb2

from tests.chatlog.conftest import API, IN, OUT, Chatlog, rpc_error

CREATED, EXISTS = pb.APPEND_STATUS_CREATED, pb.APPEND_STATUS_ALREADY_EXISTS


def turn(chatlog: Chatlog, conversation: str, n: int, at: float) -> list[pb.ChatMessage]:
    """A user's message and the bot's reply, as the dialogue service appends them."""
    inbound = chatlog.message(
        conversation,
        f"{conversation}-m{n}",
        at=at,
        text=f"where is my order {n}",
        intent="order_status",
        processing_ms=120,
        reply_ids=[f"{conversation}-r{n}"],
        token=7,
    )
    reply = chatlog.message(
        conversation,
        f"{conversation}-r{n}",
        at=at + 0.5,
        direction=OUT,
        text=f"order {n} ships tomorrow",
        in_reply_to=f"{conversation}-m{n}",
        token=7,
    )
    return [inbound, reply]


def test_a_transcript_appended_twice_reads_back_once(chatlog: Chatlog) -> None:
    messages = [m for n in range(3) for m in turn(chatlog, "c1", n, at=n * 10)]
    assert chatlog.append(*messages) == [CREATED] * 6
    assert chatlog.append(*messages) == [EXISTS] * 6
    expected = [m.message_id for m in messages]
    assert chatlog.transcript("c1") == expected
    [conversation] = chatlog.stub.ListConversations(
        pb.ListConversationsRequest(tenant_id=chatlog.tenant)
    ).conversations
    assert conversation.message_count == 6


def test_a_retry_keeps_the_first_version(chatlog: Chatlog) -> None:
    first = chatlog.message("c1", "m1", at=0, text="first words")
    assert chatlog.append(first) == [CREATED]
    changed = chatlog.message("c1", "m1", at=5, text="second words")
    assert chatlog.append(changed) == [EXISTS]
    [stored] = chatlog.stub.ListMessages(
        pb.ListMessagesRequest(tenant_id=chatlog.tenant, conversation_id="c1")
    ).messages
    assert stored.text == "first words"
    assert stored.create_time == first.create_time


def test_a_duplicate_within_one_batch_is_stored_once(chatlog: Chatlog) -> None:
    message = chatlog.message("c1", "m1", at=0, text="hi")
    assert chatlog.append(message, message) == [CREATED, EXISTS]
    assert chatlog.transcript("c1") == ["m1"]


def test_message_ids_are_scoped_by_tenant(chatlog: Chatlog) -> None:
    mine = chatlog.message("c1", "m1", at=0, text="mine")
    other = chatlog.message("c1", "m1", at=0, text="theirs", tenant="default")
    assert chatlog.append(mine)[0] == CREATED
    assert chatlog.append(other)[0] in (CREATED, EXISTS)  # "default" is shared by tests
    [stored] = chatlog.stub.ListMessages(
        pb.ListMessagesRequest(tenant_id=chatlog.tenant, conversation_id="c1")
    ).messages
    assert stored.text == "mine"


def test_what_is_stored_is_what_was_sent_with_type_and_author_filled_in(
    chatlog: Chatlog,
) -> None:
    image = chatlog.message(
        "c1",
        "m1",
        at=0,
        attachments=[
            event_pb2.Attachment(type=event_pb2.ATTACHMENT_TYPE_IMAGE, url="https://x/y.png")
        ],
        received_time=chatlog.message("c", "x", at=0.2).create_time,
        model_version="model-1",
    )
    reply = chatlog.message(
        "c1", "r1", at=1, direction=OUT, text="nice picture", author=pb.AUTHOR_AGENT, agent_id="a7"
    )
    chatlog.append(image, reply)
    stored = chatlog.stub.ListMessages(
        pb.ListMessagesRequest(tenant_id=chatlog.tenant, conversation_id="c1")
    ).messages
    expected_image = pb.ChatMessage()
    expected_image.CopyFrom(image)
    expected_image.type = pb.MESSAGE_TYPE_IMAGE
    expected_image.author = pb.AUTHOR_USER
    expected_reply = pb.ChatMessage()
    expected_reply.CopyFrom(reply)
    expected_reply.type = pb.MESSAGE_TYPE_TEXT
    # Read back, an outbound message says how far it got (no receipt yet).
    expected_reply.delivery_status = pb.DELIVERY_STATUS_SENT
    assert list(stored) == [expected_image, expected_reply]


def test_fencing_tokens_reject_a_stale_writer(chatlog: Chatlog) -> None:
    assert chatlog.append(chatlog.message("c1", "m1", at=0, text="a", token=5)) == [CREATED]
    error = rpc_error(
        chatlog.stub.AppendMessages,
        pb.AppendMessagesRequest(messages=[chatlog.message("c1", "m2", at=1, text="b", token=4)]),
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "messages[0].fencing_token 4" in error.details()
    assert chatlog.transcript("c1") == ["m1"]
    # The same token keeps writing; a higher one takes over; 0 is not checked.
    assert chatlog.append(chatlog.message("c1", "m3", at=2, text="c", token=5)) == [CREATED]
    assert chatlog.append(chatlog.message("c1", "m4", at=3, text="d", token=6)) == [CREATED]
    assert chatlog.append(chatlog.message("c1", "m5", at=4, text="e", token=0)) == [CREATED]
    stale = chatlog.message("c1", "m6", at=5, text="f", token=5)
    assert rpc_error(
        chatlog.stub.AppendMessages, pb.AppendMessagesRequest(messages=[stale])
    ).code() == (grpc.StatusCode.FAILED_PRECONDITION)
    # Fences are per user: another user's worker starts from its own tokens.
    other = chatlog.message("c2", "n1", at=0, user="u2", text="x", token=1)
    assert chatlog.append(other) == [CREATED]
    assert chatlog.transcript("c1") == ["m1", "m3", "m4", "m5"]


def test_a_conversation_keeps_its_user(chatlog: Chatlog) -> None:
    chatlog.append(chatlog.message("c1", "m1", at=0, text="hi", user="u1"))
    error = rpc_error(
        chatlog.stub.AppendMessages,
        pb.AppendMessagesRequest(messages=[chatlog.message("c1", "m2", at=1, user="u2")]),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages[0].conversation_id" in error.details()


def _clear(field: str) -> Callable[[pb.ChatMessage], None]:
    def change(message: pb.ChatMessage) -> None:
        message.ClearField(field)  # type: ignore[arg-type]

    return change


def _set(path: str, value: object) -> Callable[[pb.ChatMessage], None]:
    def change(message: pb.ChatMessage) -> None:
        target = message
        *parents, name = path.split(".")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)

    return change


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_clear("user"), "user"),
        (_set("user.tenant_id", ""), "user.tenant_id"),
        (_set("user.tenant_id", "nobody"), "user.tenant_id"),
        (_set("user.channel", event_pb2.CHANNEL_UNSPECIFIED), "user.channel"),
        (_set("user.channel", 42), "user.channel"),
        (_set("user.user_id", ""), "user.user_id"),
        (_set("conversation_id", ""), "conversation_id"),
        (_set("conversation_id", "c" * 600), "conversation_id"),
        (_set("message_id", ""), "message_id"),
        (_set("direction", pb.DIRECTION_UNSPECIFIED), "direction"),
        (_set("direction", 9), "direction"),
        (_set("type", 99), "type"),
        (_set("author", 99), "author"),
        (_clear("create_time"), "create_time"),
        (_set("create_time.seconds", 10**13), "create_time"),
        (_set("create_time.seconds", -10), "create_time"),
        (_set("processing_duration.nanos", 2_000_000_000), "processing_duration"),
    ],
)
def test_an_invalid_message_is_named_by_index_and_field(
    chatlog: Chatlog, change: Callable[[pb.ChatMessage], None], field: str
) -> None:
    good = chatlog.message("c1", "m1", at=0, text="fine")
    bad = chatlog.message("c1", "m2", at=1, text="broken", processing_ms=5)
    change(bad)
    error = rpc_error(chatlog.stub.AppendMessages, pb.AppendMessagesRequest(messages=[good, bad]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"messages[1].{field}" in error.details()
    # Nothing of a rejected batch is stored.
    assert rpc_error(
        chatlog.stub.ListMessages,
        pb.ListMessagesRequest(tenant_id=chatlog.tenant, conversation_id="c1"),
    ).code() == (grpc.StatusCode.NOT_FOUND)


def test_batch_size_is_bounded(chatlog: Chatlog) -> None:
    error = rpc_error(chatlog.stub.AppendMessages, pb.AppendMessagesRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages is empty" in error.details()
    many = [chatlog.message("c1", f"m{i}", at=i, text="x", channel=API) for i in range(501)]
    error = rpc_error(chatlog.stub.AppendMessages, pb.AppendMessagesRequest(messages=many))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "maximum is 500" in error.details()
    assert chatlog.append(*many[:500]) == [CREATED] * 500
    assert len(chatlog.transcript("c1", page_size=1000)) == 500


def test_a_batch_may_hold_several_tenants_users_and_conversations(chatlog: Chatlog) -> None:
    batch = [
        chatlog.message(f"c{n % 3}", f"m{n}", at=n, user=f"u{n % 3}", text=f"text {n}")
        for n in range(12)
    ]
    assert chatlog.append(*batch) == [CREATED] * 12
    for c in range(3):
        assert chatlog.transcript(f"c{c}") == [f"m{n}" for n in range(12) if n % 3 == c]
    assert sorted(chatlog.conversations()) == ["c0", "c1", "c2"]


def test_inbound_direction_is_kept(chatlog: Chatlog) -> None:
    chatlog.append(chatlog.message("c1", "m1", at=0, direction=IN, text="q"))
    [message] = chatlog.stub.ListMessages(
        pb.ListMessagesRequest(tenant_id=chatlog.tenant, conversation_id="c1")
    ).messages
    assert message.direction == IN
