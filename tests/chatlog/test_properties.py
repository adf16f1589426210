"""Hypothesis against the real servers: whatever a client sends, the answer is a
status the contract names (never UNKNOWN or INTERNAL), and what is stored reads back."""

from __future__ import annotations

import itertools
from typing import Any, TypeVar

import grpc
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.common.v1 import event_pb2, nlu_result_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.chatlog.records import Watermarks, normalized
from tests.chatlog.conftest import Chatlog, code_of

_M = TypeVar("_M", bound=Message)
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
_runs = itertools.count()

checks = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

texts = st.text(max_size=40)
small_ints = st.integers(min_value=-5, max_value=20)
timestamps = st.builds(
    Timestamp,
    seconds=st.one_of(
        st.integers(min_value=1_700_000_000, max_value=1_900_000_000),
        st.integers(min_value=-(2**40), max_value=2**40),
    ),
    nanos=st.one_of(st.just(0), st.integers(min_value=-10, max_value=2 * 10**9)),
)
maybe_timestamps = st.one_of(st.none(), timestamps)
page_sizes = st.integers(min_value=-10, max_value=1200)
tokens = st.one_of(st.just(""), texts)


def _tenant(chatlog: Chatlog) -> st.SearchStrategy[str]:
    return st.sampled_from([chatlog.tenant, chatlog.tenant, "", "nobody", "default"])


def _with_times(request: _M, **times: Any) -> _M:
    for name, value in times.items():
        if value is not None:
            getattr(request, name).CopyFrom(value)
    return request


@checks
@given(data=st.data())
def test_list_and_search_requests_get_contract_codes(chatlog: Chatlog, data: st.DataObject) -> None:
    tenant = data.draw(_tenant(chatlog))
    conversations = _with_times(
        pb.ListConversationsRequest(
            tenant_id=tenant,
            page_size=data.draw(page_sizes),
            page_token=data.draw(tokens),
            channel=data.draw(small_ints),  # type: ignore[arg-type]
            intent=data.draw(texts),
            user_id=data.draw(texts),
            has_fallback=data.draw(st.booleans()),
        ),
        start_time=data.draw(maybe_timestamps),
        end_time=data.draw(maybe_timestamps),
    )
    assert code_of(chatlog.stub.ListConversations, conversations) in (OK, INVALID)
    messages = pb.ListMessagesRequest(
        tenant_id=tenant,
        conversation_id=data.draw(texts),
        page_size=data.draw(page_sizes),
        page_token=data.draw(tokens),
        order=data.draw(small_ints),  # type: ignore[arg-type]
    )
    assert code_of(chatlog.stub.ListMessages, messages) in (OK, INVALID, grpc.StatusCode.NOT_FOUND)
    search = _with_times(
        pb.SearchMessagesRequest(
            tenant_id=tenant,
            query=data.draw(texts),
            page_size=data.draw(page_sizes),
            page_token=data.draw(tokens),
            direction=data.draw(small_ints),  # type: ignore[arg-type]
            channel=data.draw(small_ints),  # type: ignore[arg-type]
        ),
        start_time=data.draw(maybe_timestamps),
        end_time=data.draw(maybe_timestamps),
    )
    assert code_of(chatlog.stub.SearchMessages, search) in (OK, INVALID)


@checks
@given(data=st.data())
def test_stats_export_and_admin_requests_get_contract_codes(
    chatlog: Chatlog, data: st.DataObject
) -> None:
    tenant = data.draw(_tenant(chatlog))
    stats = _with_times(
        pb.GetStatsRequest(tenant_id=tenant, channel=data.draw(small_ints)),  # type: ignore[arg-type]
        start_time=data.draw(maybe_timestamps),
        end_time=data.draw(maybe_timestamps),
    )
    assert code_of(chatlog.stub.GetStats, stats) in (OK, INVALID)
    confidences = st.one_of(st.none(), st.floats(width=32, allow_nan=True))
    export = _with_times(
        pb.ExportTrainingDataRequest(
            tenant_id=tenant,
            intents=data.draw(st.lists(texts, max_size=3)),
            min_confidence=data.draw(confidences),
            max_confidence=data.draw(confidences),
            limit=data.draw(st.integers(min_value=-5, max_value=10_005)),
        ),
        start_time=data.draw(maybe_timestamps),
        end_time=data.draw(maybe_timestamps),
    )
    assert code_of(chatlog.stub.ExportTrainingData, export) in (OK, INVALID)
    delete = pb.DeleteUserDataRequest(
        tenant_id=tenant,
        user_id=data.draw(texts),
        channel=data.draw(small_ints),  # type: ignore[arg-type]
    )
    assert code_of(chatlog.stub.DeleteUserData, delete) in (OK, INVALID)
    policy = pb.SetRetentionPolicyRequest(
        policy=pb.RetentionPolicy(
            tenant_id=tenant,
            message_ttl=Duration(
                seconds=data.draw(st.integers(min_value=-(10**12), max_value=10**12)),
                nanos=data.draw(st.integers(min_value=-(10**9), max_value=10**9)),
            ),
        )
    )
    assert code_of(chatlog.stub.SetRetentionPolicy, policy) in (OK, INVALID)
    read = pb.GetRetentionPolicyRequest(tenant_id=tenant)
    assert code_of(chatlog.stub.GetRetentionPolicy, read) in (OK, INVALID)


def _messages(chatlog: Chatlog, run: int) -> st.SearchStrategy[pb.ChatMessage]:
    ids = st.text(min_size=1, max_size=12)

    def message(
        user: str,
        conversation: str,
        message_id: str,
        direction: int,
        kind: int,
        text: str,
        at: Timestamp,
        intent: nlu_result_pb2.Intent,
        fallback: bool,
        token: int,
        took: Duration | None,
    ) -> pb.ChatMessage:
        return _with_times(
            pb.ChatMessage(
                user=event_pb2.UserRef(
                    tenant_id=chatlog.tenant, channel=event_pb2.CHANNEL_MESSENGER, user_id=user
                ),
                conversation_id=f"{run}/{conversation}",
                message_id=f"{run}/{message_id}",
                direction=direction,  # type: ignore[arg-type]
                type=kind,  # type: ignore[arg-type]
                text=text,
                intent=intent,
                is_fallback=fallback,
                fencing_token=token,
            ),
            create_time=at,
            processing_duration=took,
        )

    return st.builds(
        message,
        st.sampled_from(["u1", "u2"]),
        ids,
        ids,
        st.sampled_from([pb.DIRECTION_INBOUND, pb.DIRECTION_OUTBOUND]),
        st.sampled_from(list(pb.MessageType.values())),
        st.text(max_size=200),
        st.builds(
            Timestamp,
            seconds=st.integers(1_700_000_000, 1_800_000_000),
            nanos=st.integers(0, 10**9 - 1),
        ),
        st.one_of(
            st.builds(nlu_result_pb2.Intent),
            st.builds(nlu_result_pb2.Intent, name=texts, confidence=st.floats(0, 1, width=32)),
            st.builds(nlu_result_pb2.Intent, name=texts, confidence=st.floats(width=32)),
        ),
        st.booleans(),
        st.one_of(st.integers(min_value=0, max_value=3), st.integers(0, 2**64 - 1)),
        st.one_of(
            st.none(),
            st.builds(
                Duration,
                seconds=st.integers(-(10**12), 10**12),
                nanos=st.integers(-(10**9), 10**9),
            ),
        ),
    )


@checks
@given(data=st.data())
def test_appends_get_contract_codes_and_read_back_as_sent(
    chatlog: Chatlog, data: st.DataObject
) -> None:
    run = next(_runs)
    batch = data.draw(st.lists(_messages(chatlog, run), min_size=1, max_size=8))
    code = code_of(chatlog.stub.AppendMessages, pb.AppendMessagesRequest(messages=batch))
    # A conversation id drawn twice for two users, or a token going down: both are refused.
    assert code in (OK, INVALID, grpc.StatusCode.FAILED_PRECONDITION)
    if code != OK:
        return
    first: dict[str, pb.ChatMessage] = {}
    for message in batch:
        first.setdefault(message.message_id, normalized(message))
    for conversation in {m.conversation_id for m in first.values()}:
        stored = chatlog.stub.ListMessages(
            pb.ListMessagesRequest(
                tenant_id=chatlog.tenant, conversation_id=conversation, page_size=1000
            )
        ).messages
        expected = sorted(
            (m for m in first.values() if m.conversation_id == conversation),
            key=lambda m: (m.create_time.seconds, m.create_time.nanos, m.message_id),
        )
        for message in expected:
            # Read back, outbound messages say how far they got: no receipt here.
            message.delivery_status = Watermarks().status(message)
        assert list(stored) == expected
