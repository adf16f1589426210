"""Cases the fuzzing found, kept as plain tests so every run checks them."""

from __future__ import annotations

import base64
import itertools

import grpc
from chatbot.chatlog.v1 import chatlog_service_pb2
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from tests.chatlog.harness import Harness
from tests.fuzz.calls import OK, RawMethods, check_call
from tests.fuzz.dialogue_checks import DialogueUnderFuzz

CHATLOG = chatlog_service_pb2.DESCRIPTOR.services_by_name["ChatlogService"]


def _user(user_id: str, channel: int = event_pb2.CHANNEL_API) -> event_pb2.UserRef:
    return event_pb2.UserRef(tenant_id="default", channel=channel, user_id=user_id)  # type: ignore[arg-type]


def test_undecodable_request_bytes_are_invalid_argument(
    fuzz_dialogue: DialogueUnderFuzz, fuzz_chatlog: Harness
) -> None:
    # grpc.aio answered these UNKNOWN.
    bodies = (b"\xff\xff\xff", b"\x0a\x02\xff\xfe")
    with grpc.insecure_channel(fuzz_chatlog.address) as channel:
        chatlog = RawMethods(channel, CHATLOG)
        for method, body in itertools.product(("SubmitEvents", "ListDeadLetters"), bodies):
            code, _ = check_call(fuzz_dialogue.raw[method], body)
            assert code is grpc.StatusCode.INVALID_ARGUMENT, (method, body)
        for body in bodies:
            code, _ = check_call(chatlog["ListMessages"], body)
            assert code is grpc.StatusCode.INVALID_ARGUMENT, body


def test_events_with_times_the_chatlog_cannot_keep_are_still_answered(
    fuzz_dialogue: DialogueUnderFuzz,
) -> None:
    # They were accepted, refused by the chatlog five times, then dead-lettered.
    for seconds, nanos in ((-62_135_596_800, 0), (7_258_118_400, 0), (2**62, -5), (0, 10**9)):
        event = event_pb2.ChatEvent(
            event_id=f"odd-time-{seconds}-{nanos}",
            user=_user(f"odd-time-{seconds}-{nanos}"),
            message=event_pb2.Message(text="hello"),
            event_time=Timestamp(seconds=seconds, nanos=nanos),
            receive_time=Timestamp(seconds=seconds, nanos=nanos),
        )
        reply = fuzz_dialogue.stub.Converse(pb.ConverseRequest(event=event), timeout=30)
        assert reply.replies, (seconds, nanos)


def test_ids_at_the_limit_are_answered_or_refused(fuzz_dialogue: DialogueUnderFuzz) -> None:
    # Ids the dialogue took (up to 512 characters) made derived ids the chatlog
    # refuses ("<channel>:<user_id>", "<event_id>:r0", "agent:<request_id>").
    stub = fuzz_dialogue.stub
    for length in (480, 481, 510, 512):
        user = _user("u" * length, event_pb2.CHANNEL_MESSENGER)
        request = pb.ConverseRequest(user=user, text="hello", event_id="e" * length)
        code, reply = check_call(stub.Converse, request)
        assert code is (OK if length <= 480 else grpc.StatusCode.INVALID_ARGUMENT), length
        if reply is not None:
            assert reply.replies
        user = _user(f"agent-limit-{length}", event_pb2.CHANNEL_MESSENGER)
        stub.SetHandoff(pb.SetHandoffRequest(user=user, handed_off=True), timeout=10)
        agent = pb.SendAgentMessageRequest(
            user=user, agent_id="ann", request_id="r" * length, text="hi"
        )
        code, _ = check_call(stub.SendAgentMessage, agent)
        assert code is (OK if length <= 480 else grpc.StatusCode.INVALID_ARGUMENT), length


def test_a_forged_deeply_nested_page_token_is_invalid_argument(
    fuzz_dialogue: DialogueUnderFuzz,
) -> None:
    # The body was parsed before its MAC was checked: RecursionError, UNKNOWN.
    for body in (b"[" * 100_000, b'{"o":' * 5000):
        token = base64.urlsafe_b64encode(b"0" * 16 + body).decode()
        request = pb.ListDeadLettersRequest(tenant_id="default", page_token=token)
        code, _ = check_call(fuzz_dialogue.stub.ListDeadLetters, request)
        assert code is grpc.StatusCode.INVALID_ARGUMENT


def test_requests_over_the_message_limit_are_resource_exhausted(
    fuzz_dialogue: DialogueUnderFuzz,
) -> None:
    # Kept out of the fuzzed values: Hypothesis would hold every such string in memory.
    event = event_pb2.ChatEvent(
        event_id="too-big",
        user=_user("too-big"),
        message=event_pb2.Message(text="x" * (8 * 1024 * 1024 + 1)),
    )
    code, _ = check_call(fuzz_dialogue.stub.SubmitEvents, pb.SubmitEventsRequest(events=[event]))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_long_referenced_message_ids_are_refused(fuzz_dialogue: DialogueUnderFuzz) -> None:
    # Accepted, then refused by the chatlog (referenced_message_id over 512): dead letters.
    for length in (480, 481, 513):
        for kind in ("message", "reaction"):
            event = event_pb2.ChatEvent(
                event_id=f"long-ref-{kind}-{length}", user=_user(f"long-ref-{kind}")
            )
            if kind == "message":
                event.message.CopyFrom(event_pb2.Message(text="hello", reply_to_mid="m" * length))
            else:
                event.reaction.CopyFrom(event_pb2.Reaction(mid="m" * length, reaction="like"))
            code, _ = check_call(fuzz_dialogue.stub.Converse, pb.ConverseRequest(event=event))
            assert code is (OK if length <= 480 else grpc.StatusCode.INVALID_ARGUMENT)
