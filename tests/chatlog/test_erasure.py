"""DeleteUserData: everything about one user goes; deleting again deletes nothing."""

from __future__ import annotations

import grpc
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb

from tests.chatlog.conftest import API, MESSENGER, OUT, Chatlog, code_of, rpc_error, ts

DAY = 86_400


def scene(chatlog: Chatlog) -> None:
    m = chatlog.message
    chatlog.append(
        m("c1", "a1", at=0, user="u1", text="secret address one", intent="greet"),
        m("c1", "a2", at=1, user="u1", text="reply one", direction=OUT),
        m("c1", "a3", at=40 * DAY, user="u1", text="secret two months later", intent="bye"),
        m("c2", "b1", at=5, user="u1", channel=API, text="secret via api", intent="greet"),
        m("c2", "b2", at=6, user="u1", channel=API, text="api reply", direction=OUT),
        m("c3", "k1", at=7, user="u2", text="not a secret", intent="greet"),
    )


def delete(chatlog: Chatlog, user: str, channel: int = 0) -> tuple[int, int]:
    reply = chatlog.stub.DeleteUserData(
        pb.DeleteUserDataRequest(tenant_id=chatlog.tenant, user_id=user, channel=channel)  # type: ignore[arg-type]
    )
    return reply.deleted_message_count, reply.deleted_conversation_count


def search(chatlog: Chatlog, query: str, start: int = 0) -> list[str]:
    reply = chatlog.stub.SearchMessages(
        pb.SearchMessagesRequest(
            tenant_id=chatlog.tenant,
            query=query,
            start_time=ts(start - 1),
            end_time=ts(start + 30 * DAY),
        )
    )
    return [m.message_id for m in reply.messages]


def test_a_users_data_goes_and_nobody_elses(chatlog: Chatlog) -> None:
    scene(chatlog)
    assert delete(chatlog, "u1", API) == (2, 1)
    assert chatlog.conversations() == ["c1", "c3"]
    assert delete(chatlog, "u1") == (3, 1)
    assert chatlog.conversations() == ["c3"]
    for conversation in ("c1", "c2"):
        request = pb.ListMessagesRequest(tenant_id=chatlog.tenant, conversation_id=conversation)
        assert code_of(chatlog.stub.ListMessages, request) == grpc.StatusCode.NOT_FOUND
    assert search(chatlog, "secret") == ["k1"]
    assert search(chatlog, "secret", start=35 * DAY) == []
    stats = chatlog.stub.GetStats(
        pb.GetStatsRequest(tenant_id=chatlog.tenant, start_time=ts(0), end_time=ts(60 * DAY))
    )
    assert (stats.total.inbound_message_count, stats.total.user_count) == (1, 1)
    export = chatlog.stub.ExportTrainingData(pb.ExportTrainingDataRequest(tenant_id=chatlog.tenant))
    assert [e.message_id for e in export.examples] == ["k1"]
    # Again: nothing left to delete, and that is fine.
    assert delete(chatlog, "u1") == (0, 0)
    assert delete(chatlog, "never-seen") == (0, 0)


def test_messages_appended_after_the_call_are_kept(chatlog: Chatlog) -> None:
    scene(chatlog)
    delete(chatlog, "u1")
    # A retry of a deleted message is a new message now; so is anything later.
    chatlog.append(
        chatlog.message("c1", "a1", at=0, user="u1", text="hello again"),
        chatlog.message("c1", "a9", at=50 * DAY, user="u1", text="and later", channel=MESSENGER),
    )
    assert chatlog.transcript("c1") == ["a1", "a9"]
    reply = chatlog.stub.ListConversations(
        pb.ListConversationsRequest(tenant_id=chatlog.tenant, user_id="u1")
    )
    assert [(c.conversation_id, c.message_count) for c in reply.conversations] == [("c1", 2)]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"user_id": ""}, "user_id"),
        ({"tenant_id": ""}, "tenant_id"),
        ({"tenant_id": "nobody"}, "tenant_id"),
        ({"channel": 17}, "channel"),
    ],
)
def test_bad_requests(chatlog: Chatlog, fields: dict[str, object], named: str) -> None:
    request: dict[str, object] = {"tenant_id": chatlog.tenant, "user_id": "u1", **fields}
    error = rpc_error(chatlog.stub.DeleteUserData, pb.DeleteUserDataRequest(**request))  # type: ignore[arg-type]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in error.details()
