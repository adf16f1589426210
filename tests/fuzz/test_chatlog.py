"""Fuzzing the real ChatlogService on SQLite: every RPC, well-formed requests and raw bytes.

Each call ends OK or with a client error (tests/fuzz/calls.py); the server
is still healthy after the run.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.chatlog.v1 import chatlog_service_pb2_grpc
from hypothesis import strategies as st

from harness.support import health_status
from tests.chatlog.harness import Harness
from tests.fuzz.budget import LONG_TIMEOUT_S, long_examples, run
from tests.fuzz.calls import OK, RawMethods, check_call
from tests.fuzz.events import (
    CHANNELS,
    FUZZ_USERS,
    attachments,
    chat_events,
    entities,
    intents,
    quick_replies,
    user_refs,
)
from tests.fuzz.values import (
    INT32,
    UINT64,
    copies,
    durations,
    enums,
    ids,
    raw_bodies,
    texts,
    timestamps,
    usually,
)

SERVING = 1
SERVICE = pb.DESCRIPTOR.services_by_name["ChatlogService"]
# The harness knows "default" and t000..t1999; the fuzzed ones write to a few.
KNOWN = ["t900", "t901", "t902"]
tenant_ids = usually(st.sampled_from(KNOWN), st.sampled_from(["", "default", "nope"]) | texts)
conversations = usually(st.sampled_from([f"1:{u}" for u in FUZZ_USERS[:6]]), ids)
page_sizes = usually(st.integers(0, 1000), INT32)
page_tokens = usually(
    st.just(""),
    texts | st.binary(max_size=80).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()),
)


def optional_times(draw: st.DrawFn, request: Any, *names: str) -> None:
    for name in names:
        if draw(st.booleans()):
            getattr(request, name).CopyFrom(draw(timestamps()))


@st.composite
def chat_messages(draw: st.DrawFn) -> pb.ChatMessage:
    message = pb.ChatMessage(
        user=draw(user_refs(KNOWN)),
        conversation_id=draw(conversations),
        message_id=draw(usually(st.from_regex(r"m_[a-z0-9]{1,8}", fullmatch=True), ids)),
        direction=draw(enums(list(pb.Direction.values()))),
        type=draw(enums(list(pb.MessageType.values()))),
        author=draw(enums(list(pb.Author.values()))),
        agent_id=draw(ids),
        text=draw(usually(st.sampled_from(["hello there", "order 12345 late"]), texts)),
        payload=draw(texts),
        attachments=draw(st.lists(attachments, max_size=2)),
        quick_replies=draw(st.lists(quick_replies, max_size=2)),
        intent_ranking=draw(st.lists(intents, max_size=3)),
        entities=draw(st.lists(entities, max_size=2)),
        model_version=draw(texts),
        is_fallback=draw(st.booleans()),
        handed_off=draw(st.booleans()),
        reply_ids=draw(st.lists(ids, max_size=3)),
        in_reply_to=draw(ids),
        referenced_message_id=draw(ids),
        fencing_token=draw(usually(st.integers(0, 10**6), UINT64)),
    )
    if draw(usually(st.just(True), st.booleans())):
        message.create_time.CopyFrom(draw(timestamps()))
    optional_times(draw, message, "received_time", "respond_time", "sent_time")
    for name in ("processing_duration", "queue_duration"):
        if draw(st.booleans()):
            getattr(message, name).CopyFrom(draw(durations()))
    if draw(st.booleans()):
        message.intent.CopyFrom(draw(intents))
    if draw(st.booleans()):
        message.raw_event.CopyFrom(draw(chat_events(KNOWN)))
    return message


@st.composite
def list_conversations(draw: st.DrawFn) -> pb.ListConversationsRequest:
    request = pb.ListConversationsRequest(
        tenant_id=draw(tenant_ids),
        page_size=draw(page_sizes),
        page_token=draw(page_tokens),
        channel=draw(enums(CHANNELS)),
        intent=draw(usually(st.just(""), texts)),
        user_id=draw(usually(st.just(""), ids)),
    )
    optional_times(draw, request, "start_time", "end_time")
    for name in ("has_fallback", "handed_off"):
        if draw(st.booleans()):
            setattr(request, name, draw(st.booleans()))
    return request


@st.composite
def search_messages(draw: st.DrawFn) -> pb.SearchMessagesRequest:
    request = pb.SearchMessagesRequest(
        tenant_id=draw(tenant_ids),
        query=draw(usually(st.sampled_from(["hello", "order late", "12345"]), texts)),
        page_size=draw(page_sizes),
        page_token=draw(page_tokens),
        direction=draw(enums(list(pb.Direction.values()))),
        channel=draw(enums(CHANNELS)),
    )
    optional_times(draw, request, "start_time", "end_time")
    return request


@st.composite
def stats_requests(draw: st.DrawFn) -> pb.GetStatsRequest:
    request = pb.GetStatsRequest(tenant_id=draw(tenant_ids), channel=draw(enums(CHANNELS)))
    optional_times(draw, request, "start_time", "end_time")
    return request


@st.composite
def export_requests(draw: st.DrawFn) -> pb.ExportTrainingDataRequest:
    request = pb.ExportTrainingDataRequest(
        tenant_id=draw(tenant_ids),
        intents=draw(st.lists(usually(st.sampled_from(["greet", "order_status"]), texts))),
        limit=draw(usually(st.integers(0, 10000), INT32)),
    )
    optional_times(draw, request, "start_time", "end_time")
    for name in ("min_confidence", "max_confidence"):
        if draw(st.booleans()):
            setattr(request, name, draw(usually(st.floats(0, 1, width=32), st.floats(width=32))))
    return request


requests_by_method: dict[str, st.SearchStrategy[Any]] = {
    "AppendMessages": usually(
        st.builds(
            pb.AppendMessagesRequest, messages=st.lists(chat_messages(), min_size=1, max_size=3)
        ),
        st.builds(pb.AppendMessagesRequest, messages=st.lists(chat_messages(), max_size=8))
        | st.builds(
            lambda m, n: pb.AppendMessagesRequest(messages=copies(m, n)),
            chat_messages(),
            st.sampled_from([500, 501]),
        ),
    ),
    "ListConversations": list_conversations(),
    "ListMessages": st.builds(
        pb.ListMessagesRequest,
        tenant_id=tenant_ids,
        conversation_id=conversations,
        page_size=page_sizes,
        page_token=page_tokens,
        order=enums(list(pb.MessageOrder.values())),
    ),
    "SearchMessages": search_messages(),
    "GetStats": stats_requests(),
    "ExportTrainingData": export_requests(),
    "DeleteUserData": st.builds(
        pb.DeleteUserDataRequest,
        tenant_id=tenant_ids,
        user_id=usually(st.sampled_from(FUZZ_USERS[6:12]), ids),
        channel=enums(CHANNELS),
    ),
    "GetRetentionPolicy": st.builds(pb.GetRetentionPolicyRequest, tenant_id=tenant_ids),
    "SetRetentionPolicy": st.builds(
        pb.SetRetentionPolicyRequest,
        policy=st.builds(
            pb.RetentionPolicy,
            tenant_id=tenant_ids,
            message_ttl=durations(),
            update_time=timestamps(),
        ),
    ),
}
assert set(requests_by_method) == {m.name for m in SERVICE.methods}
requests = st.sampled_from(sorted(requests_by_method)).flatmap(
    lambda name: st.tuples(st.just(name), requests_by_method[name])
)
raw_requests = st.sampled_from(sorted(requests_by_method)).flatmap(
    lambda name: st.tuples(st.just(name), raw_bodies(requests_by_method[name]))
)


class Chatlog:
    def __init__(self, harness: Harness, channel: grpc.Channel) -> None:
        self.harness = harness
        self.stub = chatlog_service_pb2_grpc.ChatlogServiceStub(channel)
        self.raw = RawMethods(channel, SERVICE)

    def call(self, pair: tuple[str, Any]) -> None:
        name, request = pair
        code, response = check_call(getattr(self.stub, name), request)
        if code is OK and name == "AppendMessages":
            assert len(response.results) == len(request.messages)

    def call_raw(self, pair: tuple[str, bytes]) -> None:
        name, body = pair
        check_call(self.raw[name], body)

    def assert_healthy(self) -> None:
        assert health_status(self.harness.port) == SERVING
        assert self.harness.app.monitor.serving


@pytest.fixture
def chatlog(fuzz_chatlog: Harness) -> Iterator[Chatlog]:
    with grpc.insecure_channel(fuzz_chatlog.address) as channel:
        yield Chatlog(fuzz_chatlog, channel)


def _requests(chatlog: Chatlog, examples: int) -> None:
    run("chatlog.requests", examples, requests, chatlog.call)
    chatlog.assert_healthy()


def _raw(chatlog: Chatlog, examples: int) -> None:
    run("chatlog.raw_bytes", examples, raw_requests, chatlog.call_raw)
    chatlog.assert_healthy()


def test_requests(chatlog: Chatlog) -> None:
    _requests(chatlog, 200)


def test_raw_bytes(chatlog: Chatlog) -> None:
    _raw(chatlog, 200)


@pytest.mark.fuzz
@pytest.mark.timeout(LONG_TIMEOUT_S)
def test_long_requests(chatlog: Chatlog) -> None:
    _requests(chatlog, long_examples("chatlog.requests"))


@pytest.mark.fuzz
@pytest.mark.timeout(LONG_TIMEOUT_S)
def test_long_raw_bytes(chatlog: Chatlog) -> None:
    _raw(chatlog, long_examples("chatlog.raw_bytes"))
