"""SearchMessages: every word, any case, within a bounded range, newest first."""

from __future__ import annotations

import time

import grpc
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from tests.chatlog.conftest import API, OUT, T0, Chatlog, rpc_error, ts

DAY = 86_400


def scene(chatlog: Chatlog) -> None:
    m = chatlog.message
    chatlog.append(
        m("c1", "where", at=0, text="Where is my ORDER 123"),
        m("c1", "ships", at=60, text="your order ships tomorrow", direction=OUT),
        m("c2", "cancel", at=DAY, user="u2", channel=API, text="order cancelled, please refund"),
        m("c3", "hello", at=2 * DAY, user="u3", text="hello"),
        m("c3", "strasse", at=2 * DAY + 5, user="u3", text="Ich wohne in der Straße 5"),
        m("c4", "late", at=40 * DAY, user="u4", text="Ordering pizza"),
    )


def search(chatlog: Chatlog, query: str, **fields: object) -> list[str]:
    fields.setdefault("start_time", ts(-DAY))
    fields.setdefault("end_time", ts(3 * DAY))
    found: list[str] = []
    token = ""
    while True:
        reply = chatlog.stub.SearchMessages(
            pb.SearchMessagesRequest(
                tenant_id=chatlog.tenant,
                query=query,
                page_token=token,
                **fields,  # type: ignore[arg-type]
            )
        )
        found += [m.message_id for m in reply.messages]
        token = reply.next_page_token
        if not token:
            return found


def test_every_word_any_case_newest_first(chatlog: Chatlog) -> None:
    scene(chatlog)
    assert search(chatlog, "order") == ["cancel", "ships", "where"]
    assert search(chatlog, "ORDER please") == ["cancel"]
    assert search(chatlog, "my order 123") == ["where"]
    assert search(chatlog, "strasse") == ["strasse"]  # case-folded: ß is ss
    assert search(chatlog, "nothing like this") == []
    assert search(chatlog, "order", page_size=1) == ["cancel", "ships", "where"]


def test_range_direction_and_channel(chatlog: Chatlog) -> None:
    scene(chatlog)
    assert search(chatlog, "order", direction=OUT) == ["ships"]
    assert search(chatlog, "order", channel=API) == ["cancel"]
    assert search(chatlog, "order", start_time=ts(30), end_time=ts(DAY)) == ["ships"]
    assert search(chatlog, "order", start_time=ts(30 * DAY), end_time=ts(41 * DAY)) == ["late"]


def test_results_are_whole_messages(chatlog: Chatlog) -> None:
    scene(chatlog)
    reply = chatlog.stub.SearchMessages(
        pb.SearchMessagesRequest(
            tenant_id=chatlog.tenant, query="refund", start_time=ts(0), end_time=ts(2 * DAY)
        )
    )
    [message] = reply.messages
    assert (message.conversation_id, message.user.user_id, message.user.channel) == (
        "c2",
        "u2",
        API,
    )
    assert message.create_time == ts(DAY)


def test_end_time_defaults_to_now(chatlog: Chatlog) -> None:
    now = time.time()
    chatlog.append(chatlog.message("c9", "fresh", at=now - T0.timestamp() - 60, text="new order"))
    start = Timestamp(seconds=int(now) - DAY)
    reply = chatlog.stub.SearchMessages(
        pb.SearchMessagesRequest(tenant_id=chatlog.tenant, query="order", start_time=start)
    )
    assert [m.message_id for m in reply.messages] == ["fresh"]
    # From T0 to now is more than 31 days.
    error = rpc_error(
        chatlog.stub.SearchMessages,
        pb.SearchMessagesRequest(tenant_id=chatlog.tenant, query="order", start_time=ts(0)),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "31 days" in error.details()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"query": "   "}, "query"),
        ({"query": " ".join(f"w{n}" for n in range(40))}, "query"),
        ({"start_time": None}, "start_time"),
        ({"end_time": ts(0)}, "end_time"),
        ({"end_time": ts(32 * DAY)}, "31 days"),
        ({"page_size": 1001}, "page_size"),
        ({"tenant_id": "nobody"}, "tenant_id"),
        ({"direction": 9}, "direction"),
        ({"channel": 42}, "channel"),
        ({"page_token": "abc"}, "page_token"),
    ],
)
def test_bad_requests(chatlog: Chatlog, fields: dict[str, object], named: str) -> None:
    request: dict[str, object] = {
        "tenant_id": chatlog.tenant,
        "query": "order",
        "start_time": ts(0),
        "end_time": ts(DAY),
    }
    request.update(fields)
    if request["start_time"] is None:
        del request["start_time"]
    error = rpc_error(chatlog.stub.SearchMessages, pb.SearchMessagesRequest(**request))  # type: ignore[arg-type]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in error.details()
