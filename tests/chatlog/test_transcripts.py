"""ListMessages: a transcript paged both ways, in both orders, with tamper-checked tokens."""

from __future__ import annotations

import base64

import grpc
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb

from tests.chatlog.conftest import OUT, Chatlog, code_of, rpc_error

OLDEST, NEWEST = pb.MESSAGE_ORDER_OLDEST_FIRST, pb.MESSAGE_ORDER_NEWEST_FIRST


def fill(chatlog: Chatlog, conversation: str = "c1", count: int = 25) -> list[str]:
    """``count`` messages, oldest first; m10 and m11 share a time (ordered by id)."""
    messages = []
    for n in range(count):
        at = 10 if n in (10, 11) else n
        messages.append(
            chatlog.message(
                conversation,
                f"m{n:02d}",
                at=at,
                text=f"message {n}",
                direction=OUT if n % 2 else pb.DIRECTION_INBOUND,
            )
        )
    chatlog.append(*messages)
    return [m.message_id for m in messages]


def page(
    chatlog: Chatlog, order: int, token: str = "", size: int = 10, conversation: str = "c1"
) -> pb.ListMessagesResponse:
    return chatlog.stub.ListMessages(
        pb.ListMessagesRequest(
            tenant_id=chatlog.tenant,
            conversation_id=conversation,
            order=order,  # type: ignore[arg-type]
            page_size=size,
            page_token=token,
        )
    )


def ids(response: pb.ListMessagesResponse) -> list[str]:
    return [m.message_id for m in response.messages]


def test_oldest_first_pages_forwards_and_back(chatlog: Chatlog) -> None:
    every = fill(chatlog)
    first = page(chatlog, OLDEST)
    assert ids(first) == every[:10]
    second = page(chatlog, OLDEST, first.next_page_token)
    assert ids(second) == every[10:20]
    third = page(chatlog, OLDEST, second.next_page_token)
    assert ids(third) == every[20:]
    assert third.next_page_token == ""  # no more that way
    # Back from the last page: the pages before it, each still oldest first.
    back = page(chatlog, OLDEST, third.previous_page_token)
    assert ids(back) == every[10:20]
    back = page(chatlog, OLDEST, back.previous_page_token)
    assert ids(back) == every[:10]
    assert ids(page(chatlog, OLDEST, back.previous_page_token)) == []
    # And forwards again from a page reached backwards.
    assert ids(page(chatlog, OLDEST, back.next_page_token)) == every[10:20]


def test_newest_first_pages_and_polls_for_new_messages(chatlog: Chatlog) -> None:
    every = fill(chatlog)
    newest = list(reversed(every))
    first = page(chatlog, NEWEST)
    assert ids(first) == newest[:10]
    second = page(chatlog, NEWEST, first.next_page_token)
    assert ids(second) == newest[10:20]
    last = page(chatlog, NEWEST, second.next_page_token)
    assert ids(last) == newest[20:]
    assert not last.next_page_token
    assert ids(page(chatlog, NEWEST, last.previous_page_token)) == newest[10:20]
    # The page before the first one is what arrives later: a live transcript polls it.
    poll = page(chatlog, NEWEST, first.previous_page_token)
    assert ids(poll) == [] and not poll.previous_page_token and not poll.next_page_token
    chatlog.append(
        chatlog.message("c1", "m90", at=100, text="later"),
        chatlog.message("c1", "m91", at=101, text="later still", direction=OUT),
    )
    poll = page(chatlog, NEWEST, first.previous_page_token)
    assert ids(poll) == ["m91", "m90"]
    assert ids(page(chatlog, NEWEST, poll.previous_page_token)) == []


def test_page_sizes(chatlog: Chatlog) -> None:
    fill(chatlog, count=60)
    assert len(page(chatlog, OLDEST, size=0).messages) == 50  # the default
    assert len(page(chatlog, OLDEST, size=1000).messages) == 60
    for size in (-1, 1001):
        error = rpc_error(
            chatlog.stub.ListMessages,
            pb.ListMessagesRequest(tenant_id=chatlog.tenant, conversation_id="c1", page_size=size),
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_size" in error.details()
    # The page size may change between pages.
    first = page(chatlog, OLDEST, size=7)
    assert len(page(chatlog, OLDEST, first.next_page_token, size=20).messages) == 20


def test_a_conversation_without_messages_is_not_found(chatlog: Chatlog) -> None:
    error = rpc_error(
        chatlog.stub.ListMessages,
        pb.ListMessagesRequest(tenant_id=chatlog.tenant, conversation_id="nope"),
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    fill(chatlog, "c1", 3)
    # Another tenant's conversation of the same id is not this tenant's.
    other = pb.ListMessagesRequest(tenant_id="default", conversation_id=f"c1-{chatlog.tenant}")
    assert code_of(chatlog.stub.ListMessages, other) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "request_fields",
    [
        {"tenant_id": ""},
        {"tenant_id": "nobody"},
        {"conversation_id": ""},
        {"order": 7},
    ],
)
def test_bad_requests(chatlog: Chatlog, request_fields: dict[str, object]) -> None:
    fields: dict[str, object] = {"tenant_id": chatlog.tenant, "conversation_id": "c1"}
    fields.update(request_fields)
    error = rpc_error(chatlog.stub.ListMessages, pb.ListMessagesRequest(**fields))  # type: ignore[arg-type]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert next(iter(request_fields)) in error.details()


def _tampered(token: str) -> list[str]:
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    flipped = [
        base64.urlsafe_b64encode(raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1 :]).decode().rstrip("=")
        for i in (0, len(raw) // 2, len(raw) - 1)
    ]
    return [*flipped, token[:-2], token + "AA", "garbage", "!!!", "x" * 5000]


def test_tampered_or_foreign_page_tokens_are_invalid(chatlog: Chatlog) -> None:
    fill(chatlog, "c1", 15)
    fill(chatlog, "c2", 15)
    token = page(chatlog, OLDEST).next_page_token
    assert token
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    for bad in _tampered(token):
        error = rpc_error(
            chatlog.stub.ListMessages,
            pb.ListMessagesRequest(tenant_id=chatlog.tenant, conversation_id="c1", page_token=bad),
        )
        assert error.code() == invalid
        assert "page_token" in error.details()
    # A good token, but issued for another conversation, order, tenant or RPC.
    for request in (
        pb.ListMessagesRequest(tenant_id=chatlog.tenant, conversation_id="c2", page_token=token),
        pb.ListMessagesRequest(
            tenant_id=chatlog.tenant, conversation_id="c1", page_token=token, order=NEWEST
        ),
        pb.ListMessagesRequest(tenant_id="default", conversation_id="c1", page_token=token),
    ):
        assert code_of(chatlog.stub.ListMessages, request) == invalid
    assert (
        code_of(
            chatlog.stub.ListConversations,
            pb.ListConversationsRequest(tenant_id=chatlog.tenant, page_token=token),
        )
        == invalid
    )
    # OLDEST_FIRST and UNSPECIFIED are the same order but not the same request.
    unspecified = pb.ListMessagesRequest(
        tenant_id=chatlog.tenant,
        conversation_id="c1",
        page_token=token,
        order=pb.MESSAGE_ORDER_UNSPECIFIED,
    )
    assert code_of(chatlog.stub.ListMessages, unspecified) == invalid
