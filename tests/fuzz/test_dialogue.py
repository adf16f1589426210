"""Fuzzing the real DialogueService: every RPC, well-formed requests and raw bytes.

Each call ends OK or with a client error (tests/fuzz/calls.py); after each
run the queues drain, every accepted event is processed, and a new user is
still answered (tests/fuzz/dialogue_checks.py).
"""

from __future__ import annotations

import base64
from typing import Any

import grpc
import pytest
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from hypothesis import strategies as st

from tests.fuzz.budget import LONG_TIMEOUT_S, long_examples, run
from tests.fuzz.calls import OK, check_call, decoded
from tests.fuzz.dialogue_checks import DialogueUnderFuzz
from tests.fuzz.events import (
    CHANNELS,
    attachments,
    chat_events,
    quick_replies,
    user_refs,
)
from tests.fuzz.values import INT32, copies, enums, ids, raw_bodies, texts, usually

KNOWN = ["default"]
WAITS = {grpc.StatusCode.DEADLINE_EXCEEDED}  # documented: the item stays queued
CONVERSE_USERS = [f"fzc{n}" for n in range(8)]
AGENT_USERS = [f"fza{n}" for n in range(8)]


def _batch(event: Any, size: int) -> pb.SubmitEventsRequest:
    return pb.SubmitEventsRequest(events=copies(event, size))


submit_requests = usually(
    st.builds(pb.SubmitEventsRequest, events=st.lists(chat_events(KNOWN), min_size=1, max_size=4)),
    st.builds(pb.SubmitEventsRequest, events=st.lists(chat_events(KNOWN), max_size=12))
    | st.builds(_batch, chat_events(KNOWN), st.sampled_from([999, 1000, 1001])),
)


@st.composite
def converse_requests(draw: st.DrawFn) -> pb.ConverseRequest:
    request = pb.ConverseRequest(event_id=draw(usually(st.just(""), ids)))
    user = draw(user_refs(KNOWN, CONVERSE_USERS))
    which = draw(usually(st.sampled_from(["text", "event"]), st.none()))
    if which == "event":
        event = draw(chat_events(KNOWN, CONVERSE_USERS))
        request.event.CopyFrom(event)
        if draw(st.booleans()):  # the same user as the event's, or now and then another
            request.user.CopyFrom(event.user if draw(st.integers(0, 9)) else user)
    else:
        request.user.CopyFrom(user)
        if which == "text":
            request.text = draw(
                usually(st.sampled_from(["hello", "my order 12345", "weather in Rome"]), texts)
            )
    return request


# Page tokens: as issued, random, and signed-looking (16 bytes of MAC, then a body).
page_tokens = usually(
    st.just(""),
    texts
    | st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode())
    | st.builds(
        lambda mac, body: base64.urlsafe_b64encode(mac + body).decode(),
        st.binary(min_size=16, max_size=16),
        st.sampled_from([b"{}", b'{"o": 1}', b"[" * 100_000, b"{" * 3000]) | st.binary(),
    ),
)
state_requests = st.builds(pb.GetConversationStateRequest, user=user_refs(KNOWN))
handoff_requests = st.builds(
    pb.SetHandoffRequest,
    user=user_refs(KNOWN),
    handed_off=st.booleans(),
    reason=texts,
    agent_id=ids,
)
list_dead_requests = st.builds(
    pb.ListDeadLettersRequest,
    tenant_id=usually(st.just("default"), texts),
    page_size=usually(st.integers(0, 1000), INT32),
    page_token=page_tokens,
    channel=enums(CHANNELS),
    user_id=usually(st.just(""), ids),
)
replay_requests = st.builds(
    pb.ReplayDeadLetterRequest, tenant_id=usually(st.just("default"), texts), dead_letter_id=ids
)
other_requests = st.one_of(
    state_requests.map(lambda r: ("GetConversationState", r)),
    handoff_requests.map(lambda r: ("SetHandoff", r)),
    list_dead_requests.map(lambda r: ("ListDeadLetters", r)),
    replay_requests.map(lambda r: ("ReplayDeadLetter", r)),
)
agent_requests = st.tuples(
    st.booleans(),
    st.builds(
        pb.SendAgentMessageRequest,
        user=user_refs(KNOWN, AGENT_USERS),
        agent_id=ids,
        request_id=ids,
        text=usually(st.sampled_from(["Hi, I am Ann from support", "Done!"]), texts),
        quick_replies=st.lists(quick_replies, max_size=2),
        attachments=usually(st.just([]), st.lists(attachments, max_size=2)),
    ),
)
requests_by_method: dict[str, st.SearchStrategy[Any]] = {
    "SubmitEvents": submit_requests,
    "Converse": converse_requests(),
    "GetConversationState": state_requests,
    "ListDeadLetters": list_dead_requests,
    "ReplayDeadLetter": replay_requests,
    "SetHandoff": handoff_requests,
    "SendAgentMessage": agent_requests.map(lambda p: p[1]),
}
raw_requests = st.sampled_from(sorted(requests_by_method)).flatmap(
    lambda name: st.tuples(st.just(name), raw_bodies(requests_by_method[name]))
)


def _submit(dialogue: DialogueUnderFuzz, request: pb.SubmitEventsRequest) -> None:
    code, response = check_call(dialogue.stub.SubmitEvents, request)
    if code is OK:
        dialogue.note_submitted(request, response)


def _converse(dialogue: DialogueUnderFuzz, request: pb.ConverseRequest) -> None:
    code, response = check_call(dialogue.stub.Converse, request, timeout=15, also=WAITS)
    if code is OK:
        assert response.event_id


def _other(dialogue: DialogueUnderFuzz, pair: tuple[str, Any]) -> None:
    name, request = pair
    check_call(getattr(dialogue.stub, name), request)


def _agent(dialogue: DialogueUnderFuzz, pair: tuple[bool, pb.SendAgentMessageRequest]) -> None:
    hand_off, request = pair
    if hand_off:
        check_call(
            dialogue.stub.SetHandoff, pb.SetHandoffRequest(user=request.user, handed_off=True)
        )
    check_call(dialogue.stub.SendAgentMessage, request, timeout=15, also=WAITS)


def _raw(dialogue: DialogueUnderFuzz, pair: tuple[str, bytes]) -> None:
    name, body = pair
    waits = WAITS if name in ("Converse", "SendAgentMessage") else ()
    code, response = check_call(dialogue.raw[name], body, timeout=15, also=waits)
    if code is OK and name == "SubmitEvents":
        request = decoded(pb.SubmitEventsRequest, body)
        assert request is not None, "the server took bytes that are not a request"
        dialogue.note_submitted(request, pb.SubmitEventsResponse.FromString(response))


def _drain_timeout(dialogue: DialogueUnderFuzz) -> float:
    return 60 + len(dialogue.accepted) / 20


def _submit_events(dialogue: DialogueUnderFuzz, examples: int) -> None:
    run("dialogue.submit_events", examples, submit_requests, lambda r: _submit(dialogue, r))
    dialogue.assert_drained(_drain_timeout(dialogue))


def _converse_run(dialogue: DialogueUnderFuzz, examples: int) -> None:
    run("dialogue.converse", examples, converse_requests(), lambda r: _converse(dialogue, r))
    dialogue.assert_drained(60)


def _others(dialogue: DialogueUnderFuzz, examples: int) -> None:
    run(
        "dialogue.state_handoff_dead_letters",
        examples,
        other_requests,
        lambda p: _other(dialogue, p),
    )
    dialogue.assert_healthy()


def _agents(dialogue: DialogueUnderFuzz, examples: int) -> None:
    run("dialogue.agent_messages", examples, agent_requests, lambda p: _agent(dialogue, p))
    dialogue.assert_drained(60)


def _raw_run(dialogue: DialogueUnderFuzz, examples: int) -> None:
    run("dialogue.raw_bytes", examples, raw_requests, lambda p: _raw(dialogue, p))
    dialogue.assert_drained(_drain_timeout(dialogue))


def test_submit_events(fuzz_dialogue: DialogueUnderFuzz) -> None:
    _submit_events(fuzz_dialogue, 150)


def test_converse(fuzz_dialogue: DialogueUnderFuzz) -> None:
    _converse_run(fuzz_dialogue, 40)


def test_state_handoff_and_dead_letters(fuzz_dialogue: DialogueUnderFuzz) -> None:
    _others(fuzz_dialogue, 150)


def test_agent_messages(fuzz_dialogue: DialogueUnderFuzz) -> None:
    _agents(fuzz_dialogue, 40)


def test_raw_bytes(fuzz_dialogue: DialogueUnderFuzz) -> None:
    _raw_run(fuzz_dialogue, 200)


@pytest.mark.fuzz
@pytest.mark.timeout(LONG_TIMEOUT_S)
def test_long_submit_events(fuzz_dialogue: DialogueUnderFuzz) -> None:
    _submit_events(fuzz_dialogue, long_examples("dialogue.submit_events"))


@pytest.mark.fuzz
@pytest.mark.timeout(LONG_TIMEOUT_S)
def test_long_converse(fuzz_dialogue: DialogueUnderFuzz) -> None:
    _converse_run(fuzz_dialogue, long_examples("dialogue.converse"))


@pytest.mark.fuzz
@pytest.mark.timeout(LONG_TIMEOUT_S)
def test_long_state_handoff_and_dead_letters(fuzz_dialogue: DialogueUnderFuzz) -> None:
    _others(fuzz_dialogue, long_examples("dialogue.state_handoff_dead_letters"))


@pytest.mark.fuzz
@pytest.mark.timeout(LONG_TIMEOUT_S)
def test_long_agent_messages(fuzz_dialogue: DialogueUnderFuzz) -> None:
    _agents(fuzz_dialogue, long_examples("dialogue.agent_messages"))


@pytest.mark.fuzz
@pytest.mark.timeout(LONG_TIMEOUT_S)
def test_long_raw_bytes(fuzz_dialogue: DialogueUnderFuzz) -> None:
    _raw_run(fuzz_dialogue, long_examples("dialogue.raw_bytes"))
