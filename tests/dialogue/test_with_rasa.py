"""The dialogue service with the real NLU service and its trained Rasa model."""

from __future__ import annotations

import pytest
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb

from harness.standins import GraphApi, RecordingChatlog
from harness.support import ServiceProcess
from tests.dialogue.conftest import TENANT, Replicas, message_event, submit, wait_for

pytestmark = pytest.mark.slow


def test_a_conversation_understood_by_the_rasa_model(
    replicas: Replicas,
    nlu_server: ServiceProcess,
    graph_api: GraphApi,
    recording_chatlog: RecordingChatlog,
) -> None:
    graph_api.orders["12345"] = {"status": "shipped", "eta": "Monday"}
    replicas.start(2, NLU_ADDRESS=f"127.0.0.1:{nlu_server.port}")
    user = event_pb2.UserRef(tenant_id=TENANT, channel=event_pb2.CHANNEL_API, user_id="rasa-web")
    reply = replicas.stub().Converse(
        pb.ConverseRequest(user=user, text="where is my order 12345"), timeout=30
    )
    assert reply.intent.name == "order_status"
    assert [(e.entity, e.value) for e in reply.entities] == [("order_id", "12345")]
    assert reply.model_version
    assert reply.replies[0].text == "Order 12345 is shipped. Expected delivery: Monday."

    texts = ["hello", "what's the weather in Berlin", "thanks a lot", "bye"]
    events = [message_event("rasa-fb", f"m_r{i}", text) for i, text in enumerate(texts)]
    submit(replicas.stub(1), *events)
    wait_for(lambda: len(graph_api.sent) == len(texts), timeout=60)
    assert [m.in_reply_to for m in graph_api.sent] == [e.event_id for e in events]
    assert graph_api.sent[1].text == "In Berlin it's 21°C and sunny."
    # The chatlog is written after the replies go out, by the outbox's writer.
    wait_for(lambda: len(recording_chatlog.inbound("rasa-fb")) == len(texts), timeout=30)
    logged = {m.message_id: m for m in recording_chatlog.inbound("rasa-fb")}
    assert [logged[e.event_id].intent.name for e in events] == [
        "greet",
        "weather",
        "thanks",
        "goodbye",
    ]
    assert all(logged[e.event_id].model_version == reply.model_version for e in events)
