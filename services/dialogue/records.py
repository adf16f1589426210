"""What the chatlog keeps of a turn: pure mappings to ``ChatMessage`` records.

One inbound record per event a person would see in a transcript (not
delivery or read receipts, not the echo of a reply we logged already), and
one outbound record per reply. Every record carries the lease's fencing
token, so the chatlog refuses a worker whose lease has passed on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.common.v1 import event_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from mesh.timestamps import timestamp_ms
from services.dialogue.handover import describe as describe_handover
from services.dialogue.keys import UserId
from services.dialogue.policy import Outcome

ATTACHMENT_MESSAGE_TYPES = {
    event_pb2.ATTACHMENT_TYPE_IMAGE: chatlog_pb.MESSAGE_TYPE_IMAGE,
    event_pb2.ATTACHMENT_TYPE_AUDIO: chatlog_pb.MESSAGE_TYPE_AUDIO,
    event_pb2.ATTACHMENT_TYPE_VIDEO: chatlog_pb.MESSAGE_TYPE_VIDEO,
    event_pb2.ATTACHMENT_TYPE_FILE: chatlog_pb.MESSAGE_TYPE_FILE,
    event_pb2.ATTACHMENT_TYPE_FALLBACK: chatlog_pb.MESSAGE_TYPE_LINK,
    event_pb2.ATTACHMENT_TYPE_TEMPLATE: chatlog_pb.MESSAGE_TYPE_TEMPLATE,
    event_pb2.ATTACHMENT_TYPE_STICKER: chatlog_pb.MESSAGE_TYPE_STICKER,
    event_pb2.ATTACHMENT_TYPE_LOCATION: chatlog_pb.MESSAGE_TYPE_LOCATION,
}

# A web address in a message's words; trailing punctuation belongs to the sentence.
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
_URL_TAIL = ".,;:!?)]}'\""

# The chatlog keeps times from 1970 to 2200; an event's own times outside that
# range (a client's mistake) give way to the time it was received or queued,
# or its record could never be written and the event would dead-letter.
LATEST_MS = 7_258_118_400_000


@dataclass(frozen=True)
class Turn:
    """What every record of one turn shares: whose, under which lease, and when."""

    user: UserId
    fencing_token: int
    handed_off: bool
    received_ms: int  # when the event reached us (or was queued)
    started_ms: int  # when its processing began
    respond_ms: int  # when its replies were decided
    # When the channel accepted each reply, by its place among the turn's
    # replies; a reply sent before a restart, or not sent at all, has none.
    sent_ms: Mapping[int, int] | None = None

    @property
    def answered_ms(self) -> int:
        """When the user had the answer: the last reply's send, else the decision."""
        return max(self.sent_ms.values()) if self.sent_ms else self.respond_ms


def user_ref(user: UserId) -> event_pb2.UserRef:
    ref = event_pb2.UserRef(tenant_id=user.tenant_id, user_id=user.user_id)
    ref.channel = user.channel  # type: ignore[assignment]
    return ref


def conversation_id(user: UserId) -> str:
    return f"{user.channel}:{user.user_id}"


def duration_ms(ms: int) -> Duration:
    """A span in ms; a negative one (clocks apart) counts as zero."""
    span = Duration()
    span.FromMilliseconds(max(0, ms))
    return span


def storable_ms(stamp: Timestamp) -> int | None:
    """The time in ms when the chatlog can keep it, else None."""
    if not 0 <= stamp.nanos < 1_000_000_000:
        return None
    ms = stamp.seconds * 1000 + stamp.nanos // 1_000_000
    return ms if 0 <= ms < LATEST_MS else None


def received_ms(event: event_pb2.ChatEvent, enqueue_ms: int) -> int:
    """When the event reached the gateway, or, without a usable time, when it was queued."""
    if event.HasField("receive_time"):
        received = storable_ms(event.receive_time)
        if received is not None:
            return received
    return enqueue_ms


def turn_records(
    turn: Turn, event: event_pb2.ChatEvent, outcome: Outcome
) -> list[chatlog_pb.ChatMessage]:
    """The inbound record (if any) and one record per reply, in that order."""
    records = inbound_records(turn, event, outcome)
    sent = turn.sent_ms or {}
    for index, reply in enumerate(outcome.replies):
        record = outbound_record(turn, reply, in_reply_to=event.event_id)
        if index in sent:
            record.sent_time.CopyFrom(timestamp_ms(sent[index]))
        records.append(record)
    return records


def links(text: str) -> list[str]:
    """The web addresses in a text, in order, each once."""
    found = (match.group(0).rstrip(_URL_TAIL) for match in _URL.finditer(text))
    return list(dict.fromkeys(url for url in found if "." in url.split("//")[-1]))


def _add_links(record: chatlog_pb.ChatMessage) -> None:
    """Web addresses in the words become link attachments too (the text stays as it is)."""
    known = {attachment.url for attachment in record.attachments}
    for url in links(record.text):
        if url not in known:
            record.attachments.append(
                event_pb2.Attachment(type=event_pb2.ATTACHMENT_TYPE_FALLBACK, url=url)
            )


def content_type(record: chatlog_pb.ChatMessage) -> chatlog_pb.MessageType.ValueType:
    """The type of a message by what it carries: its first attachment's kind, else text."""
    if record.attachments:
        return ATTACHMENT_MESSAGE_TYPES.get(
            record.attachments[0].type, chatlog_pb.MESSAGE_TYPE_FILE
        )
    return chatlog_pb.MESSAGE_TYPE_TEXT


def receipt_of(event: event_pb2.ChatEvent) -> chatlog_pb.Receipt | None:
    """A delivery or read receipt as the chatlog records it on the conversation;
    None for any other event, or for a receipt without a usable time."""
    kind = event.WhichOneof("kind")
    if kind == "read":
        stamp, receipt_kind = event.read.watermark_time, chatlog_pb.RECEIPT_KIND_READ
    elif kind == "delivery":
        # Without a watermark, the listed mids were delivered by the event's time.
        has_mark = event.delivery.HasField("watermark_time")
        stamp = event.delivery.watermark_time if has_mark else event.event_time
        receipt_kind = chatlog_pb.RECEIPT_KIND_DELIVERED
    else:
        return None
    ms = storable_ms(stamp)
    if not ms:
        return None
    user = UserId(event.user.tenant_id, int(event.user.channel), event.user.user_id)
    return chatlog_pb.Receipt(
        user=event.user,
        conversation_id=conversation_id(user),
        kind=receipt_kind,
        watermark_time=timestamp_ms(ms),
    )


def inbound_records(
    turn: Turn, event: event_pb2.ChatEvent, outcome: Outcome
) -> list[chatlog_pb.ChatMessage]:
    kind = event.WhichOneof("kind")
    if kind in ("delivery", "read"):
        return []  # receipts: counted, not shown in transcripts
    if kind == "message" and event.message.is_echo and "in_reply_to" in event.message.metadata:
        return []  # the echo of one of our own replies, already logged as outbound
    record = chatlog_pb.ChatMessage(
        user=event.user,
        conversation_id=conversation_id(turn.user),
        message_id=event.event_id,
        direction=chatlog_pb.DIRECTION_INBOUND,
        author=chatlog_pb.AUTHOR_USER,
        handed_off=turn.handed_off,
        fencing_token=turn.fencing_token,
        raw_event=event,
    )
    _stamp_inbound(record, turn, event)
    _describe(record, event)
    _understood(record, outcome)
    record.reply_ids.extend(reply.reply_id for reply in outcome.replies)
    return [record]


def _stamp_inbound(record: chatlog_pb.ChatMessage, turn: Turn, event: event_pb2.ChatEvent) -> None:
    storable = event.HasField("event_time") and storable_ms(event.event_time) is not None
    record.create_time.CopyFrom(event.event_time if storable else timestamp_ms(turn.received_ms))
    record.received_time.CopyFrom(timestamp_ms(turn.received_ms))
    record.respond_time.CopyFrom(timestamp_ms(turn.answered_ms))
    record.processing_duration.CopyFrom(duration_ms(turn.answered_ms - turn.received_ms))
    record.queue_duration.CopyFrom(duration_ms(turn.started_ms - turn.received_ms))


def _describe(record: chatlog_pb.ChatMessage, event: event_pb2.ChatEvent) -> None:
    """The record's type, words and references, by the kind of event."""
    kind = event.WhichOneof("kind")
    if kind == "message":
        _describe_message(record, event.message)
    elif kind == "postback":
        record.type = chatlog_pb.MESSAGE_TYPE_POSTBACK
        record.text = event.postback.title
        record.payload = event.postback.payload
    elif kind == "reaction":
        record.type = chatlog_pb.MESSAGE_TYPE_REACTION
        record.text = event.reaction.emoji or event.reaction.reaction
        record.referenced_message_id = event.reaction.mid
    elif kind == "handover":
        record.type = chatlog_pb.MESSAGE_TYPE_SYSTEM
        record.text = describe_handover(event)
    else:
        record.type = chatlog_pb.MESSAGE_TYPE_SYSTEM
        record.text = f"[{kind}]"


def _describe_message(record: chatlog_pb.ChatMessage, message: event_pb2.Message) -> None:
    record.text = message.text
    record.attachments.extend(message.attachments)
    record.referenced_message_id = message.reply_to_mid
    if message.is_echo:
        # Written by the page (a person in the inbox, or another app).
        record.direction = chatlog_pb.DIRECTION_OUTBOUND
        record.author = chatlog_pb.AUTHOR_PAGE
    _add_links(record)
    if message.quick_reply_payload:
        record.type = chatlog_pb.MESSAGE_TYPE_QUICK_REPLY
        record.payload = message.quick_reply_payload
    else:
        record.type = content_type(record)


def _understood(record: chatlog_pb.ChatMessage, outcome: Outcome) -> None:
    understanding = outcome.understanding
    if understanding is None:
        return
    if understanding.intent.name:
        record.intent.CopyFrom(understanding.intent)
    record.intent_ranking.extend(understanding.ranking)
    record.entities.extend(understanding.entities)
    record.model_version = understanding.model_version
    record.is_fallback = understanding.is_fallback or not understanding.intent.name


def outbound_record(
    turn: Turn, reply: event_pb2.Reply, *, in_reply_to: str
) -> chatlog_pb.ChatMessage:
    """A reply of the bot, stamped with the time it was decided, typed by what it carries."""
    record = chatlog_pb.ChatMessage(
        user=user_ref(turn.user),
        conversation_id=conversation_id(turn.user),
        message_id=reply.reply_id,
        direction=chatlog_pb.DIRECTION_OUTBOUND,
        author=chatlog_pb.AUTHOR_BOT,
        text=reply.text,
        attachments=reply.attachments,
        quick_replies=reply.quick_replies,
        in_reply_to=in_reply_to,
        handed_off=turn.handed_off,
        fencing_token=turn.fencing_token,
    )
    _add_links(record)
    record.type = content_type(record)
    record.create_time.CopyFrom(timestamp_ms(turn.respond_ms))
    record.respond_time.CopyFrom(timestamp_ms(turn.respond_ms))
    return record


def agent_record(
    user: UserId, fencing_token: int, reply: event_pb2.Reply, agent_id: str, now_ms: int
) -> chatlog_pb.ChatMessage:
    """A person's message to a handed-off conversation."""
    turn = Turn(user, fencing_token, True, now_ms, now_ms, now_ms)
    record = outbound_record(turn, reply, in_reply_to="")
    record.author = chatlog_pb.AUTHOR_AGENT
    record.agent_id = agent_id
    return record
