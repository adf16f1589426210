"""A person's answers after Messenger's 24-hour window: tagged HUMAN_AGENT within
7 days of the customer's last message, refused with a reason after that, and the
Send API's own window refusals turned into that reason, never retried. Times are
the events' own (in the past) or the stored last-message time, never waited out."""

from __future__ import annotations

import time

import grpc
import pytest
import redis
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from chatbot.dialogue.v1 import dialogue_service_pb2_grpc

from harness.redis_servers import RedisServer
from harness.standins import GraphApi, RecordingChatlog
from services.dialogue.keys import UserId, UserKeys
from tests.dialogue.conftest import TENANT, Replicas, message_event, submit, wait_for

HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS


def _ref(user_id: str) -> event_pb2.UserRef:
    return event_pb2.UserRef(tenant_id=TENANT, channel=event_pb2.CHANNEL_MESSENGER, user_id=user_id)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _handed_off(
    stub: dialogue_service_pb2_grpc.DialogueServiceStub, user_id: str, at_ms: int
) -> None:
    """The customer asks for a person at ``at_ms``; waits until the turn is done."""
    submit(stub, message_event(user_id, f"m_{user_id}_human", "I want a human", at_ms=at_ms))
    request = pb.GetConversationStateRequest(user=_ref(user_id))
    wait_for(
        lambda: (
            stub.GetConversationState(request).state.last_processed_event_id == f"m_{user_id}_human"
        )
    )
    assert stub.GetConversationState(request).state.handed_off


def _agent(
    stub: dialogue_service_pb2_grpc.DialogueServiceStub, user_id: str, request_id: str, text: str
) -> pb.SendAgentMessageResponse:
    request = pb.SendAgentMessageRequest(
        user=_ref(user_id), agent_id="alice", request_id=request_id, text=text
    )
    response: pb.SendAgentMessageResponse = stub.SendAgentMessage(request, timeout=10)
    return response


def _sent_to(graph_api: GraphApi, user_id: str, text: str) -> list[dict[str, object]]:
    with graph_api.lock:
        return [m.body for m in graph_api.sent if m.recipient == user_id and m.text == text]


def test_within_24_hours_an_agent_answers_as_a_response(
    replicas: Replicas, graph_api: GraphApi
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    graph_api.last_user_message_ms["w1"] = _now_ms() - 23 * HOUR_MS
    _handed_off(stub, "w1", _now_ms() - 23 * HOUR_MS)
    _agent(stub, "w1", "r1", "Alice here")
    [body] = _sent_to(graph_api, "w1", "Alice here")
    assert body["messaging_type"] == "RESPONSE"
    assert "tag" not in body


def test_between_24_hours_and_7_days_an_agent_answers_with_the_human_agent_tag(
    replicas: Replicas, graph_api: GraphApi
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    wrote = _now_ms() - 30 * HOUR_MS
    graph_api.last_user_message_ms["w2"] = wrote
    _handed_off(stub, "w2", wrote)
    # The bot's own answer to that old message goes untagged, and Meta refuses it once.
    with graph_api.lock:
        bot_tries = [r["body"] for r in graph_api.window_refusals]
    assert len(bot_tries) == 1
    assert bot_tries[0]["messaging_type"] == "RESPONSE" and "tag" not in bot_tries[0]
    assert _agent(stub, "w2", "r1", "Sorry for the wait").reply.text == "Sorry for the wait"
    [body] = _sent_to(graph_api, "w2", "Sorry for the wait")
    assert body["messaging_type"] == "MESSAGE_TAG"
    assert body["tag"] == "HUMAN_AGENT"
    assert len(graph_api.window_refusals) == 1


def test_past_7_days_the_agent_is_refused_and_nothing_is_sent(
    replicas: Replicas, graph_api: GraphApi, recording_chatlog: RecordingChatlog
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    _handed_off(stub, "w3", _now_ms() - 8 * DAY_MS)
    with graph_api.lock:
        before = len(graph_api.sent)
    with pytest.raises(grpc.RpcError) as refused:
        _agent(stub, "w3", "r1", "Are you still there?")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.value.details() or ""
    assert "8 days ago" in details and "7 days" in details
    assert len(graph_api.sent) == before
    assert not graph_api.window_refusals
    agent_records = [
        m
        for m in recording_chatlog.messages.values()
        if m.user.user_id == "w3" and m.text == "Are you still there?"
    ]
    assert agent_records == []
    # Once the customer writes again, the agent's answer is an ordinary response.
    submit(stub, message_event("w3", "m_w3_back", "hello again"))
    request = pb.GetConversationStateRequest(user=_ref("w3"))
    wait_for(
        lambda: stub.GetConversationState(request).state.last_processed_event_id == "m_w3_back"
    )
    _agent(stub, "w3", "r2", "Welcome back")
    [body] = _sent_to(graph_api, "w3", "Welcome back")
    assert body["messaging_type"] == "RESPONSE"


def test_the_window_counts_from_the_stored_last_message_time(
    replicas: Replicas, graph_api: GraphApi, redis_server: RedisServer
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    _handed_off(stub, "w4", _now_ms())
    # An older message processed late never moves the window back.
    submit(stub, message_event("w4", "m_w4_old", "old", at_ms=_now_ms() - 5 * DAY_MS))
    request = pb.GetConversationStateRequest(user=_ref("w4"))
    wait_for(lambda: stub.GetConversationState(request).state.last_processed_event_id == "m_w4_old")
    _agent(stub, "w4", "r1", "first")
    assert _sent_to(graph_api, "w4", "first")[0]["messaging_type"] == "RESPONSE"
    client = redis.Redis(port=redis_server.port)
    handoff_key = UserKeys(UserId(TENANT, event_pb2.CHANNEL_MESSENGER, "w4")).handoff
    client.hset(handoff_key, "user_ms", str(_now_ms() - 3 * DAY_MS))
    _agent(stub, "w4", "r2", "second")
    assert _sent_to(graph_api, "w4", "second")[0]["tag"] == "HUMAN_AGENT"
    client.hset(handoff_key, "user_ms", str(_now_ms() - 7 * DAY_MS - HOUR_MS))
    with pytest.raises(grpc.RpcError) as refused:
        _agent(stub, "w4", "r3", "third")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not _sent_to(graph_api, "w4", "third")
    client.close()


@pytest.mark.parametrize(
    ("meta_says", "reason"),
    [("window", "outside the messaging window"), ("unavailable", "not available")],
)
def test_a_window_refusal_from_the_send_api_is_shown_and_never_retried(
    replicas: Replicas, graph_api: GraphApi, meta_says: str, reason: str
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    _handed_off(stub, "w5", _now_ms())
    # Meta knows better than the stored time: the person cannot be reached now.
    if meta_says == "window":
        graph_api.last_user_message_ms["w5"] = _now_ms() - 2 * DAY_MS
    else:
        graph_api.unavailable.add("w5")
    with pytest.raises(grpc.RpcError) as refused:
        _agent(stub, "w5", "r1", "Hello from Alice")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason in (refused.value.details() or "")
    with graph_api.lock:
        tries = [r for r in graph_api.window_refusals if r["body"]["message"].get("text")]
    assert len(tries) == 1
    assert not _sent_to(graph_api, "w5", "Hello from Alice")
