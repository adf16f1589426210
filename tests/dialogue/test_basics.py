"""One replica: the path of a message, bot logic, and the RPCs' contracts."""

from __future__ import annotations

import json
import time

import grpc
import pytest
import redis
from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from chatbot.dialogue.v1 import dialogue_service_pb2_grpc

from harness.redis_servers import RedisServer
from harness.standins import GraphApi, KeywordNlu, RecordingChatlog
from harness.support import free_port, scrape, wait_for_samples
from tests.dialogue.conftest import TENANT, Replicas, message_event, submit, wait_for

ACCEPTED = pb.SUBMIT_STATUS_ACCEPTED
DUPLICATE = pb.SUBMIT_STATUS_DUPLICATE


def user_ref(user_id: str) -> event_pb2.UserRef:
    return event_pb2.UserRef(tenant_id=TENANT, channel=event_pb2.CHANNEL_MESSENGER, user_id=user_id)


def test_a_message_is_answered_logged_and_deduplicated(
    replicas: Replicas, graph_api: GraphApi, recording_chatlog: RecordingChatlog
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    assert submit(stub, message_event("u1", "m_1", "hello there")) == [ACCEPTED]
    assert submit(stub, message_event("u1", "m_1", "hello there")) == [DUPLICATE]
    wait_for(lambda: len(graph_api.sent) == 1)
    sent = graph_api.sent[0]
    assert sent.recipient == "u1"
    assert sent.in_reply_to == "m_1"
    assert sent.body["messaging_type"] == "RESPONSE"
    assert sent.text.startswith("Hi!")
    assert next(q["payload"] for q in sent.body["message"]["quick_replies"]) == "/order_status"
    wait_for(lambda: len(recording_chatlog.inbound("u1")) == 1)
    inbound = recording_chatlog.inbound("u1")[0]
    assert inbound.intent.name == "greet"
    assert inbound.type == chatlog_pb.MESSAGE_TYPE_TEXT
    assert list(inbound.reply_ids) == ["m_1:r0"]
    assert inbound.fencing_token >= 1
    outbound = recording_chatlog.messages[(TENANT, "m_1:r0")]
    assert outbound.in_reply_to == "m_1"
    assert outbound.direction == chatlog_pb.DIRECTION_OUTBOUND

    # The reply goes out before the head is dequeued and the lease released.
    def state() -> pb.ConversationState:
        request = pb.GetConversationStateRequest(user=user_ref("u1"))
        return stub.GetConversationState(request).state

    wait_for(lambda: not state().lease_holder)
    assert state().queue_length == 0
    assert state().last_processed_event_id == "m_1"


def converse(
    stub: dialogue_service_pb2_grpc.DialogueServiceStub, request: pb.ConverseRequest
) -> tuple[pb.ConverseResponse, int]:
    """Converse as its contract tells a client to: after DEADLINE_EXCEEDED the
    event stays queued and is processed once, and a call with the same
    ``event_id`` gives its result. Returns the answer and how many calls ran
    out of time first (on a loaded machine a turn can take longer than one
    call's deadline; that is not what these tests are about)."""
    timed_out = 0
    while True:
        try:
            return stub.Converse(request, timeout=10), timed_out
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or timed_out >= 11:
                raise
            timed_out += 1


def test_converse_returns_the_replies_and_remembers_them(
    replicas: Replicas, keyword_nlu: KeywordNlu
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    user = event_pb2.UserRef(tenant_id=TENANT, channel=event_pb2.CHANNEL_API, user_id="web-1")
    request = pb.ConverseRequest(user=user, text="where is my order 12345", event_id="c1")
    first, timed_out = converse(stub, request)
    assert first.intent.name == "order_status"
    assert [(e.entity, e.value) for e in first.entities] == [("order_id", "12345")]
    assert first.replies[0].text == "I couldn't find order 12345. Could you check the number?"
    if not timed_out:
        assert not first.duplicate
    again, _ = converse(stub, request)
    assert again.duplicate
    assert again.replies[0].text == first.replies[0].text
    # However many calls it took, the message was processed once.
    assert keyword_nlu.calls.count("where is my order 12345") == 1
    state = stub.GetConversationState(pb.GetConversationStateRequest(user=user)).state
    assert state.slots["order_id"] == "12345"


def test_actions_use_slots_and_the_external_api(replicas: Replicas, graph_api: GraphApi) -> None:
    graph_api.orders["55555"] = {"status": "shipped", "eta": "tomorrow"}
    replicas.start(1)
    stub = replicas.stub()
    user = event_pb2.UserRef(tenant_id=TENANT, channel=event_pb2.CHANNEL_API, user_id="web-2")

    said = iter(range(1000))

    def say(text: str) -> str:
        request = pb.ConverseRequest(user=user, text=text, event_id=f"w2-{next(said)}")
        return converse(stub, request)[0].replies[0].text

    assert say("where is my order") == "Sure, what's your order number?"
    assert say("my order 55555 please") == "Order 55555 is shipped. Expected delivery: tomorrow."
    # The slot remembers the order number.
    assert say("and my order now?") == "Order 55555 is shipped. Expected delivery: tomorrow."
    assert say("weather in Paris") == "In Paris it's 21°C and sunny."
    graph_api.weather_status = 503
    try:
        assert (
            say("weather in Paris") == "I can't get the weather right now. Please try again later."
        )
    finally:
        graph_api.weather_status = 200


def test_postback_payloads_pick_the_intent(replicas: Replicas, graph_api: GraphApi) -> None:
    replicas.start(1)
    event = message_event("u5", "m_pb", "")
    event.ClearField("message")
    event.postback.CopyFrom(
        event_pb2.Postback(mid="m_pb", title="Get Started", payload="GET_STARTED")
    )
    submit(replicas.stub(), event)
    wait_for(lambda: len(graph_api.sent) == 1)
    assert graph_api.sent[0].text.startswith("Hi!")


def test_echoes_receipts_and_standby_are_never_answered(
    replicas: Replicas, graph_api: GraphApi, recording_chatlog: RecordingChatlog
) -> None:
    replicas.start(1)
    echo = message_event("u6", "m_echo", "from the page inbox")
    echo.message.is_echo = True
    standby = message_event("u6", "m_standby", "hello")
    standby.standby = True
    read = message_event("u6", "read-1", "")
    read.ClearField("message")
    read.read.watermark_time.FromMilliseconds(1)
    last = message_event("u6", "m_last", "bye")
    submit(replicas.stub(), echo, standby, read, last)
    wait_for(lambda: len(graph_api.sent) >= 1)
    wait_for(lambda: len(recording_chatlog.inbound("u6")) >= 2)
    assert [m.in_reply_to for m in graph_api.sent] == ["m_last"]
    logged = {m.message_id for m in recording_chatlog.messages.values() if m.user.user_id == "u6"}
    assert {"m_echo", "m_standby", "m_last"} <= logged
    assert "read-1" not in logged


def test_handoff_silences_the_bot_until_given_back(replicas: Replicas, graph_api: GraphApi) -> None:
    replicas.start(1)
    stub = replicas.stub()
    submit(stub, message_event("u7", "m_h1", "I want a human"))
    wait_for(lambda: len(graph_api.sent) == 1)
    state = stub.GetConversationState(pb.GetConversationStateRequest(user=user_ref("u7"))).state
    assert state.handed_off
    submit(stub, message_event("u7", "m_h2", "hello?"))
    wait_for(
        lambda: (
            stub.GetConversationState(
                pb.GetConversationStateRequest(user=user_ref("u7"))
            ).state.last_processed_event_id
            == "m_h2"
        )
    )
    assert len(graph_api.sent) == 1
    sent = stub.SendAgentMessage(
        pb.SendAgentMessageRequest(
            user=user_ref("u7"), agent_id="alice", request_id="a1", text="Hi, Alice here"
        ),
        timeout=10,
    )
    assert sent.reply.text == "Hi, Alice here"
    again = stub.SendAgentMessage(
        pb.SendAgentMessageRequest(
            user=user_ref("u7"), agent_id="alice", request_id="a1", text="Hi, Alice here"
        ),
        timeout=10,
    )
    assert again.duplicate
    assert [m.text for m in graph_api.sent][-1] == "Hi, Alice here"
    assert len(graph_api.sent) == 2
    stub.SetHandoff(pb.SetHandoffRequest(user=user_ref("u7"), handed_off=False, agent_id="alice"))
    with pytest.raises(grpc.RpcError) as refused:
        stub.SendAgentMessage(
            pb.SendAgentMessageRequest(
                user=user_ref("u7"), agent_id="alice", request_id="a2", text="x"
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    submit(stub, message_event("u7", "m_h3", "hello"))
    wait_for(lambda: len(graph_api.sent) == 3)


def test_graph_api_rate_limit_is_retried(replicas: Replicas, graph_api: GraphApi) -> None:
    failures = {"left": 2}

    def rate_limited(body: dict[str, object]) -> tuple[int, dict[str, object]] | None:
        if failures["left"]:
            failures["left"] -= 1
            return 400, {"error": {"message": "rate limit", "code": 613}}
        return None

    graph_api.rule = rate_limited
    replicas.start(1)
    submit(replicas.stub(), message_event("u8", "m_rl", "thanks"))
    wait_for(lambda: len(graph_api.sent) == 1)
    assert failures["left"] == 0
    assert graph_api.sent[0].in_reply_to == "m_rl"


def test_permanent_send_errors_are_not_retried(replicas: Replicas, graph_api: GraphApi) -> None:
    calls = {"n": 0}

    def outside_window(body: dict[str, object]) -> tuple[int, dict[str, object]] | None:
        calls["n"] += 1
        return 400, {"error": {"message": "outside window", "code": 10, "error_subcode": 2018278}}

    graph_api.rule = outside_window
    replicas.start(1)
    stub = replicas.stub()
    submit(stub, message_event("u9", "m_late", "thanks"))
    wait_for(
        lambda: (
            stub.GetConversationState(
                pb.GetConversationStateRequest(user=user_ref("u9"))
            ).state.last_processed_event_id
            == "m_late"
        )
    )
    assert calls["n"] == 1


def test_nlu_down_gives_the_fallback_then_recovers(
    replicas: Replicas, graph_api: GraphApi, keyword_nlu: KeywordNlu
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    keyword_nlu.up = False
    submit(stub, message_event("u10", "m_n1", "hello"))
    wait_for(lambda: len(graph_api.sent) == 1)
    assert "trouble understanding" in graph_api.sent[0].text
    keyword_nlu.up = True
    submit(stub, message_event("u10", "m_n2", "hello"))
    wait_for(lambda: len(graph_api.sent) == 2)
    assert graph_api.sent[1].text.startswith("Hi!")


def test_slow_nlu_past_its_timeout_gives_the_fallback(
    replicas: Replicas, graph_api: GraphApi, keyword_nlu: KeywordNlu
) -> None:
    keyword_nlu.delay_s = 0.6
    replicas.start(1, NLU_TIMEOUT_MS="300")
    submit(replicas.stub(), message_event("u11", "m_slow", "hello"))
    wait_for(lambda: len(graph_api.sent) == 1)
    assert "trouble understanding" in graph_api.sent[0].text


def test_poison_message_goes_to_the_dead_letters_and_the_queue_moves_on(
    replicas: Replicas, graph_api: GraphApi
) -> None:
    def poison(body: dict[str, object]) -> tuple[int, dict[str, object]] | None:
        message = body["message"]
        assert isinstance(message, dict)
        metadata = json.loads(message.get("metadata", "{}"))
        if metadata.get("in_reply_to") == "m_poison":
            return 500, {"error": {"message": "boom", "code": 1}}
        return None

    graph_api.rule = poison
    replicas.start(1, DIALOGUE_MAX_ATTEMPTS="3")
    stub = replicas.stub()
    submit(stub, message_event("u12", "m_poison", "hello"), message_event("u12", "m_after", "bye"))
    wait_for(lambda: [m.in_reply_to for m in graph_api.sent] == ["m_after"], timeout=60)
    dead = stub.ListDeadLetters(pb.ListDeadLettersRequest(tenant_id=TENANT)).dead_letters
    assert [d.event.event_id for d in dead] == ["m_poison"]
    assert dead[0].attempt_count == 3
    assert "500" in dead[0].last_error
    state = stub.GetConversationState(pb.GetConversationStateRequest(user=user_ref("u12"))).state
    assert state.dead_letter_count == 1
    graph_api.rule = None
    replay = stub.ReplayDeadLetter(
        pb.ReplayDeadLetterRequest(tenant_id=TENANT, dead_letter_id=dead[0].dead_letter_id)
    )
    assert replay.dead_letter.event.event_id == "m_poison"
    wait_for(lambda: [m.in_reply_to for m in graph_api.sent] == ["m_after", "m_poison"])
    assert not stub.ListDeadLetters(pb.ListDeadLettersRequest(tenant_id=TENANT)).dead_letters
    with pytest.raises(grpc.RpcError) as gone:
        stub.ReplayDeadLetter(
            pb.ReplayDeadLetterRequest(tenant_id=TENANT, dead_letter_id=dead[0].dead_letter_id)
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_message_that_kills_its_worker_is_dead_lettered(
    replicas: Replicas, graph_api: GraphApi, keyword_nlu: KeywordNlu
) -> None:
    """Attempts are counted when they start: a message whose processing takes
    the worker down every time ends in the dead letters, not in a loop."""
    keyword_nlu.delay_s = 5.0  # every attempt is caught inside the message
    replicas.start(1, DIALOGUE_MAX_ATTEMPTS="3", DIALOGUE_LEASE_MS="1500")
    stub = replicas.stub()
    submit(
        stub,
        message_event("u_killer", "m_killer", "this one kills"),
        message_event("u_killer", "m_next", "hello"),
    )
    kills = 0
    deadline = time.monotonic() + 90
    while not any(m.in_reply_to == "m_next" for m in graph_api.sent):
        assert time.monotonic() < deadline, f"still looping after {kills} kills"
        with keyword_nlu.lock:
            started = keyword_nlu.calls.count("this one kills")
        if started > kills:
            # The worker is inside the message: it dies there, as on a crash.
            replicas.kill(replicas.processes[0])
            kills += 1
            replicas.start(1, DIALOGUE_MAX_ATTEMPTS="3", DIALOGUE_LEASE_MS="1500")
        time.sleep(0.02)
    assert kills == 3
    stub = replicas.stub()
    dead = stub.ListDeadLetters(pb.ListDeadLettersRequest(tenant_id=TENANT)).dead_letters
    assert [(d.event.event_id, d.attempt_count) for d in dead] == [("m_killer", 3)]
    assert not any(m.in_reply_to == "m_killer" for m in graph_api.sent)


def test_chatlog_outage_is_buffered_and_replayed(
    replicas: Replicas, graph_api: GraphApi, recording_chatlog: RecordingChatlog
) -> None:
    replicas.start(1, CHATLOG_TIMEOUT_MS="300")
    recording_chatlog.up = False
    submit(replicas.stub(), message_event("u13", "m_buf", "hello"))
    wait_for(lambda: len(graph_api.sent) == 1)  # the user is answered meanwhile
    assert not recording_chatlog.inbound("u13")
    recording_chatlog.up = True
    wait_for(lambda: len(recording_chatlog.inbound("u13")) == 1, timeout=60)
    assert (TENANT, "m_buf:r0") in recording_chatlog.messages


@pytest.mark.parametrize(
    ("events", "fragment"),
    [
        ([], "events is empty"),
        ([event_pb2.ChatEvent()], "events[0].event_id is required"),
        (
            [event_pb2.ChatEvent(event_id="x", user=event_pb2.UserRef(tenant_id="nope"))],
            "not a known tenant",
        ),
        (
            [
                event_pb2.ChatEvent(
                    event_id="x", user=event_pb2.UserRef(tenant_id=TENANT, user_id="u")
                )
            ],
            "user.channel",
        ),
        (
            [
                event_pb2.ChatEvent(
                    event_id="x",
                    user=event_pb2.UserRef(
                        tenant_id=TENANT, channel=event_pb2.CHANNEL_MESSENGER, user_id="u"
                    ),
                )
            ],
            "kind is required",
        ),
    ],
)
def test_bad_submissions_are_refused_with_a_reason(
    replicas: Replicas, events: list[event_pb2.ChatEvent], fragment: str
) -> None:
    if not replicas.processes:
        replicas.start(1)
    with pytest.raises(grpc.RpcError) as caught:
        replicas.stub().SubmitEvents(pb.SubmitEventsRequest(events=events))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (caught.value.details() or "")


def test_converse_deadline_leaves_the_message_to_be_processed_once(
    replicas: Replicas, keyword_nlu: KeywordNlu
) -> None:
    keyword_nlu.delay_s = 1.0
    replicas.start(1)
    stub = replicas.stub()
    user = event_pb2.UserRef(tenant_id=TENANT, channel=event_pb2.CHANNEL_API, user_id="web-3")
    request = pb.ConverseRequest(user=user, text="hello", event_id="slow-1")
    with pytest.raises(grpc.RpcError) as caught:
        stub.Converse(request, timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    result = stub.Converse(request, timeout=10)
    assert result.duplicate
    assert result.intent.name == "greet"
    assert keyword_nlu.calls.count("hello") == 1


def test_large_fencing_tokens_keep_their_exact_value(
    replicas: Replicas, graph_api: GraphApi, redis_server: RedisServer
) -> None:
    # Lua numbers are doubles: a token must never be formatted as one.
    client = redis.Redis(port=redis_server.port)
    client.set(f"dlg:{{t:{TENANT}:1:big}}:fence", 10**15)
    client.close()
    replicas.start(1)
    stub = replicas.stub()
    submit(stub, message_event("big", "m_big", "hello"))
    wait_for(lambda: len(graph_api.sent) == 1)
    state = stub.GetConversationState(pb.GetConversationStateRequest(user=user_ref("big"))).state
    assert state.fencing_token == 10**15 + 1
    assert state.last_processed_event_id == "m_big"


def test_metrics_follow_the_traffic(replicas: Replicas, graph_api: GraphApi) -> None:
    port = free_port()
    replicas.start(1, METRICS_PORT=str(port))
    stub = replicas.stub()
    submit(stub, message_event("metered", "m_me1", "hello"))
    submit(stub, message_event("metered", "m_me1", "hello"))
    parse = (
        'grpc_client_handling_seconds_count{grpc_code="OK",grpc_method="Parse",'
        'grpc_service="chatbot.nlu.v1.NluService"}'
    )
    # Counters move as the turn goes, the lease gauge as the turn ends, the
    # queue gauge when the reaper samples it: one scrape must show them all.
    wait_for_samples(
        port,
        {
            'dialogue_events_submitted_total{outcome="accepted"}': 1,
            'dialogue_events_submitted_total{outcome="duplicate"}': 1,
            'dialogue_items_processed_total{kind="event"}': 1,
            'dialogue_send_results_total{outcome="ok"}': 1,
            'dialogue_stage_seconds_count{stage="nlu"}': 1,
            'dialogue_stage_seconds_count{stage="send"}': 1,
            parse: 1,
            # The records left with the completion; the outbox writer delivers them.
            "dialogue_chatlog_messages_written_total": 2,
            "dialogue_active_leases": 0,
            "dialogue_queued_items": 0,
        },
    )
    assert [m.in_reply_to for m in graph_api.sent] == ["m_me1"]


def test_queue_metrics_see_a_backlog(
    replicas: Replicas, graph_api: GraphApi, keyword_nlu: KeywordNlu
) -> None:
    keyword_nlu.delay_s = 0.5
    port = free_port()
    replicas.start(1, METRICS_PORT=str(port), DIALOGUE_WORKERS="1")
    stub = replicas.stub()
    submit(stub, *[message_event("backlog", f"m_b{i}", "hello") for i in range(8)])
    wait_for(lambda: scrape(port).get("dialogue_queued_items", 0) >= 3, timeout=20)
    wait_for(lambda: scrape(port).get("dialogue_oldest_queued_item_age_seconds", 0) >= 1.0)
