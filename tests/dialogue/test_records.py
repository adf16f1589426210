"""What the chatlog keeps of a turn, mapped with no Redis, NLU or chatlog."""

from __future__ import annotations

import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.common.v1 import event_pb2, nlu_result_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.dialogue import records
from services.dialogue.clients import Understanding
from services.dialogue.keys import UserId
from services.dialogue.policy import SILENT, Outcome
from services.dialogue.records import Turn

USER = UserId("acme", event_pb2.CHANNEL_MESSENGER, "u1")
RECEIVED = 1_700_000_000_000
TURN = Turn(
    user=USER,
    fencing_token=7,
    handed_off=False,
    received_ms=RECEIVED,
    started_ms=RECEIVED + 30,
    respond_ms=RECEIVED + 80,
)


def _stamp(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def _event(**kind: object) -> event_pb2.ChatEvent:
    event = event_pb2.ChatEvent(
        event_id="m_1",
        user=event_pb2.UserRef(tenant_id="acme", channel=event_pb2.CHANNEL_MESSENGER, user_id="u1"),
        **kind,  # type: ignore[arg-type]
    )
    return event


def _one(event: event_pb2.ChatEvent, outcome: Outcome = SILENT) -> chatlog_pb.ChatMessage:
    (record,) = records.inbound_records(TURN, event, outcome)
    return record


def _reply(reply_id: str, text: str = "", image: str = "") -> event_pb2.Reply:
    reply = event_pb2.Reply(reply_id=reply_id, text=text)
    if image:
        reply.attachments.append(
            event_pb2.Attachment(type=event_pb2.ATTACHMENT_TYPE_IMAGE, url=image)
        )
    return reply


# ---- times ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [
        (0, 0, 0),
        (1_700_000_000, 123_456_789, 1_700_000_000_123),
        (7_258_118_399, 999_000_000, 7_258_118_399_999),
        (7_258_118_400, 0, None),  # 2200: beyond what the chatlog keeps
        (-1, 999_000_000, None),  # before 1970
        (5, 1_000_000_000, None),  # not a valid timestamp
        (5, -1, None),
    ],
)
def test_storable_ms(seconds: int, nanos: int, expected: int | None) -> None:
    assert records.storable_ms(Timestamp(seconds=seconds, nanos=nanos)) == expected


@pytest.mark.parametrize(
    ("receive_time", "expected"),
    [
        (None, 42),
        (Timestamp(seconds=1_700_000_001), 1_700_000_001_000),
        (Timestamp(seconds=9_999_999_999), 42),
    ],
)
def test_received_ms(receive_time: Timestamp | None, expected: int) -> None:
    event = event_pb2.ChatEvent(event_id="e")
    if receive_time is not None:
        event.receive_time.CopyFrom(receive_time)
    assert records.received_ms(event, enqueue_ms=42) == expected


def test_inbound_times() -> None:
    event = _event(event_time=_stamp(RECEIVED - 500), message=event_pb2.Message(text="hi"))
    record = _one(event)
    assert record.create_time.ToMilliseconds() == RECEIVED - 500
    assert record.received_time.ToMilliseconds() == RECEIVED
    assert record.respond_time.ToMilliseconds() == RECEIVED + 80
    assert record.processing_duration.ToMilliseconds() == 80
    assert record.queue_duration.ToMilliseconds() == 30


@pytest.mark.parametrize(
    "event_time", [None, Timestamp(seconds=7_258_118_400), Timestamp(seconds=-10)]
)
def test_an_event_time_the_chatlog_cannot_keep_gives_way_to_the_received_time(
    event_time: Timestamp | None,
) -> None:
    event = _event(message=event_pb2.Message(text="hi"))
    if event_time is not None:
        event.event_time.CopyFrom(event_time)
    assert _one(event).create_time.ToMilliseconds() == RECEIVED


def test_durations_never_go_negative() -> None:
    early = Turn(USER, 7, False, received_ms=1000, started_ms=400, respond_ms=900)
    (record,) = records.inbound_records(early, _event(message=event_pb2.Message(text="hi")), SILENT)
    assert record.queue_duration.ToMilliseconds() == 0
    assert record.processing_duration.ToMilliseconds() == 0


# ---- inbound records --------------------------------------------------------


def test_a_text_message() -> None:
    understanding = Understanding(
        intent=nlu_result_pb2.Intent(name="greet", confidence=0.93),
        ranking=[
            nlu_result_pb2.Intent(name="greet", confidence=0.93),
            nlu_result_pb2.Intent(name="goodbye", confidence=0.05),
        ],
        entities=[nlu_result_pb2.Entity(entity="city", value="Oslo")],
        model_version="m3",
    )
    outcome = Outcome(replies=(_reply("m_1:r0", "Hi!"),), understanding=understanding)
    event = _event(message=event_pb2.Message(mid="m_1", text="hello", reply_to_mid="m_0"))
    record = _one(event, outcome)
    assert record.user == event.user
    assert (record.conversation_id, record.message_id) == ("1:u1", "m_1")
    assert (record.direction, record.author) == (
        chatlog_pb.DIRECTION_INBOUND,
        chatlog_pb.AUTHOR_USER,
    )
    assert (record.type, record.text, record.payload) == (chatlog_pb.MESSAGE_TYPE_TEXT, "hello", "")
    assert record.referenced_message_id == "m_0"
    assert (record.fencing_token, record.handed_off) == (7, False)
    assert record.raw_event == event
    assert record.intent == nlu_result_pb2.Intent(name="greet", confidence=0.93)
    assert [i.name for i in record.intent_ranking] == ["greet", "goodbye"]
    assert [(e.entity, e.value) for e in record.entities] == [("city", "Oslo")]
    assert (record.model_version, record.is_fallback) == ("m3", False)
    assert list(record.reply_ids) == ["m_1:r0"]


@pytest.mark.parametrize(
    ("understanding", "has_intent", "is_fallback"),
    [
        (None, False, False),
        (Understanding(intent=nlu_result_pb2.Intent()), False, True),
        (Understanding(intent=nlu_result_pb2.Intent(name="greet"), is_fallback=True), True, True),
    ],
)
def test_what_the_nlu_made_of_it(
    understanding: Understanding | None, has_intent: bool, is_fallback: bool
) -> None:
    record = _one(
        _event(message=event_pb2.Message(text="??")), Outcome(understanding=understanding)
    )
    assert record.HasField("intent") is has_intent
    assert record.is_fallback is is_fallback


def test_a_quick_reply() -> None:
    record = _one(_event(message=event_pb2.Message(text="Weather", quick_reply_payload="/weather")))
    assert (record.type, record.text, record.payload) == (
        chatlog_pb.MESSAGE_TYPE_QUICK_REPLY,
        "Weather",
        "/weather",
    )


@pytest.mark.parametrize(
    ("attachment", "expected"),
    [
        (event_pb2.ATTACHMENT_TYPE_IMAGE, chatlog_pb.MESSAGE_TYPE_IMAGE),
        (event_pb2.ATTACHMENT_TYPE_AUDIO, chatlog_pb.MESSAGE_TYPE_AUDIO),
        (event_pb2.ATTACHMENT_TYPE_VIDEO, chatlog_pb.MESSAGE_TYPE_VIDEO),
        (event_pb2.ATTACHMENT_TYPE_FILE, chatlog_pb.MESSAGE_TYPE_FILE),
        (event_pb2.ATTACHMENT_TYPE_FALLBACK, chatlog_pb.MESSAGE_TYPE_LINK),
        (event_pb2.ATTACHMENT_TYPE_TEMPLATE, chatlog_pb.MESSAGE_TYPE_TEMPLATE),
        (event_pb2.ATTACHMENT_TYPE_STICKER, chatlog_pb.MESSAGE_TYPE_STICKER),
        (event_pb2.ATTACHMENT_TYPE_LOCATION, chatlog_pb.MESSAGE_TYPE_LOCATION),
        (event_pb2.ATTACHMENT_TYPE_UNSPECIFIED, chatlog_pb.MESSAGE_TYPE_FILE),
    ],
)
def test_attachments_by_the_type_of_the_first(
    attachment: event_pb2.AttachmentType.ValueType, expected: chatlog_pb.MessageType.ValueType
) -> None:
    first = event_pb2.Attachment(type=attachment, url="https://cdn.example/1")
    second = event_pb2.Attachment(type=event_pb2.ATTACHMENT_TYPE_AUDIO, url="https://cdn.example/2")
    record = _one(_event(message=event_pb2.Message(attachments=[first, second])))
    assert record.type == expected
    assert [a.url for a in record.attachments] == ["https://cdn.example/1", "https://cdn.example/2"]


def test_a_postback() -> None:
    record = _one(_event(postback=event_pb2.Postback(title="Get started", payload="GET_STARTED")))
    assert (record.type, record.text, record.payload) == (
        chatlog_pb.MESSAGE_TYPE_POSTBACK,
        "Get started",
        "GET_STARTED",
    )


@pytest.mark.parametrize(
    ("reaction", "text"),
    [
        (event_pb2.Reaction(mid="m_0", emoji="😍", reaction="love"), "😍"),
        (event_pb2.Reaction(mid="m_0", reaction="love"), "love"),
    ],
)
def test_a_reaction(reaction: event_pb2.Reaction, text: str) -> None:
    record = _one(_event(reaction=reaction))
    assert (record.type, record.text, record.referenced_message_id) == (
        chatlog_pb.MESSAGE_TYPE_REACTION,
        text,
        "m_0",
    )


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (_event(optin=event_pb2.Optin(ref="r")), "[optin]"),
        (_event(referral=event_pb2.Referral(ref="ad")), "[referral]"),
        (_event(unknown=event_pb2.UnknownEvent(kind="x")), "[unknown]"),
    ],
)
def test_other_events_are_system_lines(event: event_pb2.ChatEvent, text: str) -> None:
    record = _one(event)
    assert (record.type, record.text) == (chatlog_pb.MESSAGE_TYPE_SYSTEM, text)


@pytest.mark.parametrize(
    "event",
    [
        _event(delivery=event_pb2.Delivery(mids=["m_0"])),
        _event(read=event_pb2.Read()),
        _event(
            message=event_pb2.Message(text="Hi!", is_echo=True, metadata='{"in_reply_to": "m"}')
        ),
    ],
)
def test_receipts_and_echoes_of_our_replies_are_not_kept(event: event_pb2.ChatEvent) -> None:
    assert records.inbound_records(TURN, event, SILENT) == []


def test_an_echo_of_what_the_page_wrote_is_kept_as_the_page_s() -> None:
    record = _one(_event(message=event_pb2.Message(text="A person here", is_echo=True)))
    assert (record.direction, record.author, record.type) == (
        chatlog_pb.DIRECTION_OUTBOUND,
        chatlog_pb.AUTHOR_PAGE,
        chatlog_pb.MESSAGE_TYPE_TEXT,
    )


def test_a_message_while_handed_off() -> None:
    turn = Turn(USER, 9, True, RECEIVED, RECEIVED, RECEIVED)
    (record,) = records.inbound_records(turn, _event(message=event_pb2.Message(text="hi")), SILENT)
    assert (record.handed_off, record.fencing_token, list(record.reply_ids)) == (True, 9, [])


# ---- outbound records -------------------------------------------------------


def test_a_turn_is_its_message_then_its_replies() -> None:
    outcome = Outcome(
        replies=(
            _reply("m_1:r0", "Here it is"),
            _reply("m_1:r1", image="https://img.example/1.png"),
        )
    )
    inbound, text, image = records.turn_records(
        TURN, _event(message=event_pb2.Message(text="show me")), outcome
    )
    assert (inbound.message_id, list(inbound.reply_ids)) == ("m_1", ["m_1:r0", "m_1:r1"])
    for record, reply_id in ((text, "m_1:r0"), (image, "m_1:r1")):
        assert record.message_id == reply_id
        assert (record.direction, record.author) == (
            chatlog_pb.DIRECTION_OUTBOUND,
            chatlog_pb.AUTHOR_BOT,
        )
        assert (record.in_reply_to, record.fencing_token, record.handed_off) == ("m_1", 7, False)
        assert record.user == event_pb2.UserRef(
            tenant_id="acme", channel=event_pb2.CHANNEL_MESSENGER, user_id="u1"
        )
        assert record.conversation_id == "1:u1"
        assert record.create_time.ToMilliseconds() == RECEIVED + 80
        assert record.respond_time.ToMilliseconds() == RECEIVED + 80
    assert (text.type, text.text) == (chatlog_pb.MESSAGE_TYPE_TEXT, "Here it is")
    assert (image.type, [a.url for a in image.attachments]) == (
        chatlog_pb.MESSAGE_TYPE_IMAGE,
        ["https://img.example/1.png"],
    )


def test_replies_to_an_echo_of_ours_are_kept_without_an_inbound_line() -> None:
    echo = _event(
        message=event_pb2.Message(text="x", is_echo=True, metadata='{"in_reply_to": "m"}')
    )
    kept = records.turn_records(TURN, echo, Outcome(replies=(_reply("m_1:r0", "ok"),)))
    assert [r.message_id for r in kept] == ["m_1:r0"]


def test_an_agent_s_message() -> None:
    reply = event_pb2.Reply(
        reply_id="item-3",
        text="Hello, Ann here",
        quick_replies=[event_pb2.QuickReply(title="Thanks", payload="THANKS")],
    )
    record = records.agent_record(USER, 11, reply, "agent-ann", RECEIVED)
    assert (record.author, record.agent_id, record.message_id) == (
        chatlog_pb.AUTHOR_AGENT,
        "agent-ann",
        "item-3",
    )
    assert (record.direction, record.in_reply_to, record.handed_off) == (
        chatlog_pb.DIRECTION_OUTBOUND,
        "",
        True,
    )
    assert (record.fencing_token, record.type) == (11, chatlog_pb.MESSAGE_TYPE_TEXT)
    assert [q.payload for q in record.quick_replies] == ["THANKS"]
    assert record.create_time.ToMilliseconds() == RECEIVED


# ---- what was sent, links, receipts ------------------------------------------


def test_send_times_stamp_the_replies_and_end_the_processing_time() -> None:
    outcome = Outcome(replies=(_reply("m_1:r0", "one"), _reply("m_1:r1", "two")))
    turn = records.Turn(**{**TURN.__dict__, "sent_ms": {0: RECEIVED + 120, 1: RECEIVED + 190}})
    inbound, first, second = records.turn_records(
        turn, _event(message=event_pb2.Message(text="hi")), outcome
    )
    assert first.sent_time.ToMilliseconds() == RECEIVED + 120
    assert second.sent_time.ToMilliseconds() == RECEIVED + 190
    assert inbound.respond_time.ToMilliseconds() == RECEIVED + 190
    assert inbound.processing_duration.ToMilliseconds() == 190
    # Never sent (no channel, or refused): no send time; processing ends at the decision.
    inbound, unsent, _ = records.turn_records(
        TURN, _event(message=event_pb2.Message(text="hi")), outcome
    )
    assert not unsent.HasField("sent_time")
    assert inbound.processing_duration.ToMilliseconds() == 80


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("see https://example.com/a?b=1.", ["https://example.com/a?b=1"]),
        (
            "(www.example.org) and http://x.io/y, twice http://x.io/y",
            ["www.example.org", "http://x.io/y"],
        ),
        ("no link here, nor in e.g. or http://", []),
    ],
)
def test_links_in_words(text: str, found: list[str]) -> None:
    assert records.links(text) == found


def test_a_message_with_a_web_address_is_a_link_and_keeps_its_words() -> None:
    record = _one(_event(message=event_pb2.Message(text="look at https://shop.example/item/7!")))
    assert record.type == chatlog_pb.MESSAGE_TYPE_LINK
    assert record.text == "look at https://shop.example/item/7!"
    assert [(a.type, a.url) for a in record.attachments] == [
        (event_pb2.ATTACHMENT_TYPE_FALLBACK, "https://shop.example/item/7")
    ]
    # Messenger's own link attachment is not doubled.
    shared = event_pb2.Attachment(type=event_pb2.ATTACHMENT_TYPE_FALLBACK, url="https://a.example/")
    record = _one(
        _event(message=event_pb2.Message(text="https://a.example/", attachments=[shared]))
    )
    assert [a.url for a in record.attachments] == ["https://a.example/"]


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (event_pb2.Reply(reply_id="r", text="hi"), chatlog_pb.MESSAGE_TYPE_TEXT),
        (
            event_pb2.Reply(reply_id="r", text="read https://docs.example/x"),
            chatlog_pb.MESSAGE_TYPE_LINK,
        ),
        (
            event_pb2.Reply(
                reply_id="r",
                attachments=[
                    event_pb2.Attachment(
                        type=event_pb2.ATTACHMENT_TYPE_VIDEO, url="https://v/1.mp4"
                    )
                ],
            ),
            chatlog_pb.MESSAGE_TYPE_VIDEO,
        ),
        (
            event_pb2.Reply(
                reply_id="r",
                text="Pick one",
                attachments=[
                    event_pb2.Attachment(type=event_pb2.ATTACHMENT_TYPE_TEMPLATE, payload_json="{}")
                ],
            ),
            chatlog_pb.MESSAGE_TYPE_TEMPLATE,
        ),
    ],
)
def test_a_reply_is_typed_by_what_was_sent(reply: event_pb2.Reply, kind: int) -> None:
    assert records.outbound_record(TURN, reply, in_reply_to="m_1").type == kind


def test_receipts_become_watermarks_of_the_conversation() -> None:
    read = records.receipt_of(_event(read=event_pb2.Read(watermark_time=_stamp(RECEIVED))))
    assert read is not None
    assert (read.kind, read.conversation_id, read.watermark_time.ToMilliseconds()) == (
        chatlog_pb.RECEIPT_KIND_READ,
        "1:u1",
        RECEIVED,
    )
    assert read.user.user_id == "u1"
    # A delivery listing mids without a watermark covers what came before its own time.
    listed = _event(delivery=event_pb2.Delivery(mids=["m_0"]), event_time=_stamp(RECEIVED + 5))
    delivered = records.receipt_of(listed)
    assert delivered is not None
    assert (delivered.kind, delivered.watermark_time.ToMilliseconds()) == (
        chatlog_pb.RECEIPT_KIND_DELIVERED,
        RECEIVED + 5,
    )
    assert records.receipt_of(_event(delivery=event_pb2.Delivery(mids=["m_0"]))) is None
    assert records.receipt_of(_event(message=event_pb2.Message(text="hi"))) is None
