"""Messenger's Handover Protocol through real dialogue processes, a real Redis and
the recording Graph API stand-in: the bot's hand-off passes the thread to the
tenant's hand-off app, the console's hand-off and give-back pass and take it,
thread-control events silence and resume the bot in order with the messages,
and Messenger's refusals reach the conversation's state."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from chatbot.dialogue.v1 import dialogue_service_pb2_grpc

from harness.standins import GraphApi, RecordingChatlog
from mesh.config import ConfigError, Env
from mesh.tenants import PAGE_INBOX_APP_ID, Tenant, Tenants
from services.dialogue import handover
from tests.dialogue.conftest import TENANT, Replicas, message_event, submit, wait_for

INBOX = PAGE_INBOX_APP_ID
OUR_APP = "1111"  # the stand-in's id for this bot's app
Stub = dialogue_service_pb2_grpc.DialogueServiceStub


def _ref(user_id: str) -> event_pb2.UserRef:
    return event_pb2.UserRef(tenant_id=TENANT, channel=event_pb2.CHANNEL_MESSENGER, user_id=user_id)


def _state(stub: Stub, user_id: str) -> pb.ConversationState:
    request = pb.GetConversationStateRequest(user=_ref(user_id))
    state: pb.ConversationState = stub.GetConversationState(request, timeout=10).state
    return state


def _processed(stub: Stub, user_id: str, event_id: str) -> None:
    wait_for(lambda: _state(stub, user_id).last_processed_event_id == event_id)


def _thread_event(
    user_id: str, event_id: str, action: int, *, standby: bool = False, **fields: str
) -> event_pb2.ChatEvent:
    event = event_pb2.ChatEvent(
        event_id=event_id,
        user=_ref(user_id),
        recipient_id="page-1",
        standby=standby,
        handover=event_pb2.Handover(action=action, **fields),  # type: ignore[arg-type]
    )
    now = int(time.time() * 1000)
    event.event_time.FromMilliseconds(now)
    event.receive_time.FromMilliseconds(now)
    return event


def _calls(graph_api: GraphApi, edge: str, user_id: str) -> list[dict[str, object]]:
    with graph_api.lock:
        return [
            c["body"]
            for c in graph_api.thread_calls
            if c["edge"] == edge and c["body"].get("recipient", {}).get("id") == user_id
        ]


def _replied_to(graph_api: GraphApi, user_id: str) -> list[str]:
    return graph_api.replies_by_user().get(user_id, [])


def _system_texts(chatlog: RecordingChatlog, user_id: str) -> list[str]:
    with chatlog.lock:
        records = [
            m
            for m in chatlog.messages.values()
            if m.user.user_id == user_id and m.type == chatlog_pb.MESSAGE_TYPE_SYSTEM
        ]
    return [m.text for m in sorted(records, key=lambda m: m.create_time.ToMilliseconds())]


def test_the_bots_hand_off_passes_the_thread_once_and_the_bot_stays_silent(
    replicas: Replicas, graph_api: GraphApi
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    submit(stub, message_event("h1", "m_h1_human", "I want a human"))
    _processed(stub, "h1", "m_h1_human")
    [call] = _calls(graph_api, "pass_thread_control", "h1")
    assert call["target_app_id"] == INBOX
    metadata = json.loads(str(call["metadata"]))
    assert metadata == {"reason": "intent human_handoff", "in_reply_to": "m_h1_human"}
    state = _state(stub, "h1")
    assert state.handed_off and state.thread_owner_app_id == INBOX
    assert state.thread_control_error == ""
    assert graph_api.thread_owners["h1"] == INBOX
    assert _replied_to(graph_api, "h1") == ["m_h1_human"]  # "connecting you to a person"

    # The customer writes on (on standby, as the Page Inbox owns the thread).
    standby = message_event("h1", "m_h1_later", "hello?")
    standby.standby = True
    submit(stub, standby, message_event("h1", "m_h1_again", "hello"))
    _processed(stub, "h1", "m_h1_again")
    assert _replied_to(graph_api, "h1") == ["m_h1_human"]
    assert len(_calls(graph_api, "pass_thread_control", "h1")) == 1


def test_a_pass_interrupted_by_a_crash_is_never_repeated(
    replicas: Replicas, graph_api: GraphApi
) -> None:
    arrived, release = threading.Event(), threading.Event()

    def hold(edge: str, body: dict[str, object]) -> tuple[int, dict[str, object]] | None:
        arrived.set()
        release.wait(30)
        return None

    graph_api.thread_rule = hold
    [first] = replicas.start(1, DIALOGUE_LEASE_MS="2000")
    submit(replicas.stub(), message_event("h2", "m_h2_human", "I want a human"))
    assert arrived.wait(30)
    replicas.kill(first)  # mid-call: the turn is retried by the next worker
    release.set()
    replicas.start(1, DIALOGUE_LEASE_MS="2000")
    stub = replicas.stub()
    _processed(stub, "h2", "m_h2_human")
    assert len(_calls(graph_api, "pass_thread_control", "h2")) == 1
    state = _state(stub, "h2")
    assert state.handed_off
    assert "interrupted" in state.thread_control_error


def test_thread_control_events_silence_and_resume_the_bot_in_order(
    replicas: Replicas, graph_api: GraphApi, recording_chatlog: RecordingChatlog
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    standby = message_event("h3", "m_h3_standby", "anyone?")
    standby.standby = True
    submit(
        stub,
        message_event("h3", "m_h3_1", "hello"),
        _thread_event(
            "h3", "take:h3", event_pb2.HANDOVER_ACTION_TAKE,
            previous_owner_app_id=OUR_APP, new_owner_app_id=INBOX, metadata="Ann takes it",
        ),
        message_event("h3", "m_h3_2", "hello"),
        standby,
        _thread_event(
            "h3", "pass:h3", event_pb2.HANDOVER_ACTION_PASS,
            previous_owner_app_id=INBOX, new_owner_app_id=OUR_APP,
        ),
        message_event("h3", "m_h3_3", "hello"),
    )  # fmt: skip
    _processed(stub, "h3", "m_h3_3")
    assert _replied_to(graph_api, "h3") == ["m_h3_1", "m_h3_3"]
    state = _state(stub, "h3")
    assert not state.handed_off and state.thread_owner_app_id == ""
    wait_for(lambda: len(_system_texts(recording_chatlog, "h3")) == 2)
    taken, passed = _system_texts(recording_chatlog, "h3")
    assert f"app {INBOX} took the thread from app {OUR_APP}" in taken and "Ann takes it" in taken
    assert "passed to this bot" in passed
    logged = {
        m.message_id: m for m in recording_chatlog.messages.values() if m.user.user_id == "h3"
    }
    assert logged["m_h3_2"].handed_off and logged["m_h3_standby"].handed_off
    assert not logged["m_h3_2"].reply_ids and not logged["m_h3_standby"].reply_ids
    assert not _calls(graph_api, "pass_thread_control", "h3")  # events are Meta's word, not ours


def test_a_pass_between_other_apps_on_standby_keeps_the_bot_silent(
    replicas: Replicas, graph_api: GraphApi
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    submit(
        stub,
        _thread_event(
            "h4", "pass:h4", event_pb2.HANDOVER_ACTION_PASS, standby=True,
            previous_owner_app_id="2222", new_owner_app_id=INBOX,
        ),
        message_event("h4", "m_h4_1", "hello"),
    )  # fmt: skip
    _processed(stub, "h4", "m_h4_1")
    assert _replied_to(graph_api, "h4") == []
    state = _state(stub, "h4")
    assert state.handed_off and state.thread_owner_app_id == INBOX


def test_a_request_for_the_thread_is_recorded_and_shown(
    replicas: Replicas, recording_chatlog: RecordingChatlog
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    request = _thread_event(
        "h5", "request:h5", event_pb2.HANDOVER_ACTION_REQUEST,
        requested_owner_app_id="2222", metadata="the CRM wants it",
    )  # fmt: skip
    submit(stub, request)
    _processed(stub, "h5", "request:h5")
    state = _state(stub, "h5")
    assert state.thread_control_requested_app_id == "2222" and not state.handed_off
    wait_for(lambda: len(_system_texts(recording_chatlog, "h5")) == 1)
    assert _system_texts(recording_chatlog, "h5") == [
        "app 2222 asks for the thread: the CRM wants it"
    ]


def test_a_tenant_that_grants_requests_passes_the_thread(
    replicas: Replicas, graph_api: GraphApi, tmp_path: Path
) -> None:
    tenants = tmp_path / "tenants.yml"
    tenants.write_text(
        f"tenants:\n  - id: {TENANT}\n    page_access_token: page-token-for-tests\n"
        "    handover_grant_requests: true\n",
        encoding="utf-8",
    )
    replicas.start(1, TENANTS_FILE=str(tenants))
    stub = replicas.stub()
    request = _thread_event(
        "h6", "request:h6", event_pb2.HANDOVER_ACTION_REQUEST, requested_owner_app_id="2222"
    )
    submit(stub, request, message_event("h6", "m_h6", "hello"))
    _processed(stub, "h6", "m_h6")
    [call] = _calls(graph_api, "pass_thread_control", "h6")
    assert call["target_app_id"] == "2222"
    state = _state(stub, "h6")
    assert state.handed_off and state.thread_owner_app_id == "2222"
    assert state.thread_control_requested_app_id == ""
    assert _replied_to(graph_api, "h6") == []


def test_the_consoles_hand_off_and_give_back_pass_and_take_the_thread(
    replicas: Replicas, graph_api: GraphApi, recording_chatlog: RecordingChatlog
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    off = pb.SetHandoffRequest(user=_ref("h7"), handed_off=True, reason="billing", agent_id="alice")
    state = stub.SetHandoff(off, timeout=15).state
    assert state.handed_off and state.thread_owner_app_id == INBOX
    assert state.thread_control_error == ""
    [call] = _calls(graph_api, "pass_thread_control", "h7")
    assert call["target_app_id"] == INBOX
    assert json.loads(str(call["metadata"])) == {"reason": "billing", "agent_id": "alice"}
    stub.SetHandoff(off, timeout=15)  # the same value again: nothing is called
    assert len(_calls(graph_api, "pass_thread_control", "h7")) == 1

    back = pb.SetHandoffRequest(user=_ref("h7"), handed_off=False, agent_id="alice")
    state = stub.SetHandoff(back, timeout=15).state
    assert not state.handed_off and state.thread_owner_app_id == ""
    assert len(_calls(graph_api, "take_thread_control", "h7")) == 1
    assert graph_api.thread_owners["h7"] == OUR_APP
    submit(stub, message_event("h7", "m_h7", "hello"))
    _processed(stub, "h7", "m_h7")
    assert _replied_to(graph_api, "h7") == ["m_h7"]


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("unavailable", "not available on Messenger"),
        ("window", "outside the messaging window"),
        ("owner", "another app controls this thread"),
        ("permission", "neither the thread's owner"),
    ],
)
def test_messengers_refusals_reach_the_state_and_the_bot_still_goes_silent(
    replicas: Replicas,
    graph_api: GraphApi,
    recording_chatlog: RecordingChatlog,
    setup: str,
    expected: str,
) -> None:
    user_id = f"h8-{setup}"
    if setup == "unavailable":
        graph_api.unavailable.add(user_id)
    elif setup == "window":
        graph_api.last_user_message_ms[user_id] = int(time.time() * 1000) - 30 * 3600 * 1000
    elif setup == "owner":
        graph_api.thread_owners[user_id] = "2222"
    else:

        def refuse(edge: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
            message = "(#200) Permissions error"
            return 403, {"error": {"message": message, "type": "OAuthException", "code": 200}}

        graph_api.thread_rule = refuse
    replicas.start(1)
    stub = replicas.stub()
    request = pb.SetHandoffRequest(user=_ref(user_id), handed_off=True, agent_id="alice")
    state = stub.SetHandoff(request, timeout=15).state
    assert state.handed_off and expected in state.thread_control_error
    assert state.thread_owner_app_id == ""
    assert len(_calls(graph_api, "pass_thread_control", user_id)) == 1  # final: not retried
    wait_for(lambda: len(_system_texts(recording_chatlog, user_id)) == 1)
    assert expected in _system_texts(recording_chatlog, user_id)[0]
    submit(stub, message_event(user_id, f"m_{user_id}", "hello"))
    _processed(stub, user_id, f"m_{user_id}")
    assert _replied_to(graph_api, user_id) == []


def test_a_refused_pass_of_the_bots_own_hand_off_is_shown(
    replicas: Replicas, graph_api: GraphApi
) -> None:
    graph_api.thread_owners["h9"] = "2222"
    replicas.start(1)
    stub = replicas.stub()
    submit(stub, message_event("h9", "m_h9", "I want a human"))
    _processed(stub, "h9", "m_h9")
    state = _state(stub, "h9")
    assert state.handed_off and "another app controls this thread" in state.thread_control_error


def test_the_hand_off_target_comes_from_the_tenant(tmp_path: Path) -> None:
    assert Tenants.from_env(Env({})).get("default") == Tenant(id="default")
    assert Tenant(id="x").handover_target_app_id == INBOX
    env = Env({"MESSENGER_HANDOVER_TARGET_APP_ID": "555"})
    assert next(iter(Tenants.from_env(env))).handover_target_app_id == "555"
    path = tmp_path / "tenants.yml"
    path.write_text("tenants:\n  - id: a\n    handover_target_app_id: '777'\n  - id: b\n")
    found = Tenants.from_file(path, Env({}))
    assert [t.handover_target_app_id for t in found] == ["777", INBOX]
    path.write_text("tenants:\n  - id: a\n    handover_target_app_id: inbox\n")
    with pytest.raises(ConfigError, match="handover_target_app_id"):
        Tenants.from_file(path, Env({}))


def test_thread_changes_are_pure() -> None:
    take = _thread_event("u", "t", event_pb2.HANDOVER_ACTION_TAKE, new_owner_app_id="9")
    assert handover.thread_change(take, INBOX, 5) == {
        "active": "1",
        "reason": "app 9 took the thread; the bot is silent",
        "agent_id": "",
        "time": "5",
        "owner_app_id": "9",
        "requested_app_id": "",
    }
    back = _thread_event("u", "p", event_pb2.HANDOVER_ACTION_PASS, new_owner_app_id=OUR_APP)
    assert handover.thread_change(back, INBOX, 6)["active"] == "0"
    to_inbox = _thread_event("u", "p", event_pb2.HANDOVER_ACTION_PASS, new_owner_app_id=INBOX)
    assert handover.thread_change(to_inbox, INBOX, 7)["active"] == "1"
    roles = _thread_event("u", "r", event_pb2.HANDOVER_ACTION_APP_ROLES)
    roles.handover.app_roles.add(app_id=OUR_APP, roles=["primary_receiver"])
    assert handover.thread_change(roles, INBOX, 8) == {}
    assert handover.describe(roles) == "the page's app roles changed: 1111: primary_receiver"
    assert handover.thread_change(message_event("u", "m", "hi"), INBOX, 9) == {}


def test_an_invalid_handover_request_is_invalid_argument(replicas: Replicas) -> None:
    replicas.start(1)
    request = pb.SetHandoffRequest(user=event_pb2.UserRef(tenant_id=TENANT), handed_off=True)
    with pytest.raises(grpc.RpcError) as refused:
        replicas.stub().SetHandoff(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
