"""What the stores keep, independent of the backend.

A ``MessageRecord`` is one ChatMessage as appended (its serialized ``payload``,
returned verbatim by every read) plus the fields the queries filter and sort
on, pulled out once here so both backends index exactly the same values.

A ``ConversationSummary`` is the row of the conversation list. Both backends
maintain it on write with ``ConversationSummary.apply``, so they agree on what
"latest message", "has fallback" and the other summary fields mean.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.common.v1 import event_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

NS = 1_000_000_000
DAY_NS = 86_400 * NS
# Rasa's name for "below the threshold"; the NLU service reports it as its fallback intent.
FALLBACK_INTENT = "nlu_fallback"
PREVIEW_CHARS = 200
MAX_RETENTION_NS = 630_720_000 * NS  # 20 years: Cassandra's longest TTL
MAX_PROCESSING_NS = 100 * 365 * DAY_NS

# (create_ns, message_id): the order of transcripts and search results.
MessageKey = tuple[int, str]
# (last_ns, conversation_id): the order of the conversation list (descending).
ConversationKey = tuple[int, str]

_TYPE_OF_ATTACHMENT = {
    event_pb2.ATTACHMENT_TYPE_IMAGE: pb.MESSAGE_TYPE_IMAGE,
    event_pb2.ATTACHMENT_TYPE_AUDIO: pb.MESSAGE_TYPE_AUDIO,
    event_pb2.ATTACHMENT_TYPE_VIDEO: pb.MESSAGE_TYPE_VIDEO,
    event_pb2.ATTACHMENT_TYPE_FILE: pb.MESSAGE_TYPE_FILE,
    event_pb2.ATTACHMENT_TYPE_FALLBACK: pb.MESSAGE_TYPE_LINK,
    event_pb2.ATTACHMENT_TYPE_TEMPLATE: pb.MESSAGE_TYPE_TEMPLATE,
    event_pb2.ATTACHMENT_TYPE_STICKER: pb.MESSAGE_TYPE_STICKER,
    event_pb2.ATTACHMENT_TYPE_LOCATION: pb.MESSAGE_TYPE_LOCATION,
}
_LABELS = {
    pb.MESSAGE_TYPE_TEXT: "[text]",
    pb.MESSAGE_TYPE_IMAGE: "[image]",
    pb.MESSAGE_TYPE_AUDIO: "[audio]",
    pb.MESSAGE_TYPE_VIDEO: "[video]",
    pb.MESSAGE_TYPE_FILE: "[file]",
    pb.MESSAGE_TYPE_LINK: "[link]",
    pb.MESSAGE_TYPE_STICKER: "[sticker]",
    pb.MESSAGE_TYPE_LOCATION: "[location]",
    pb.MESSAGE_TYPE_TEMPLATE: "[template]",
    pb.MESSAGE_TYPE_POSTBACK: "[postback]",
    pb.MESSAGE_TYPE_QUICK_REPLY: "[quick reply]",
    pb.MESSAGE_TYPE_REACTION: "[reaction]",
    pb.MESSAGE_TYPE_SYSTEM: "[event]",
}


def timestamp_ns(ts: Timestamp) -> int:
    return ts.seconds * NS + ts.nanos


def ns_timestamp(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.seconds, ts.nanos = divmod(ns, NS)
    return ts


def duration_ns(duration: Duration) -> int:
    return duration.seconds * NS + duration.nanos


def ns_duration(ns: int) -> Duration:
    duration = Duration()
    duration.seconds, duration.nanos = divmod(ns, NS)
    return duration


def day_of(ns: int) -> int:
    """Days since 1970-01-01 (UTC): the bucket of the per-day tables."""
    return ns // DAY_NS


def month_of(ns: int) -> int:
    """``year * 12 + month - 1`` (UTC): the bucket of the per-month tables."""
    date = dt.date(1970, 1, 1) + dt.timedelta(days=day_of(ns))
    return date.year * 12 + date.month - 1


def month_start_ns(month: int) -> int:
    year, index = divmod(month, 12)
    days = (dt.date(year, index + 1, 1) - dt.date(1970, 1, 1)).days
    return days * DAY_NS


def months_between(first_ns: int, last_ns: int) -> list[int]:
    return list(range(month_of(first_ns), month_of(last_ns) + 1))


def effective_type(message: pb.ChatMessage) -> pb.MessageType.ValueType:
    """The message's type, derived from its content when the writer left it unset."""
    if message.type != pb.MESSAGE_TYPE_UNSPECIFIED:
        return message.type
    if message.attachments:
        return _TYPE_OF_ATTACHMENT.get(message.attachments[0].type, pb.MESSAGE_TYPE_FILE)
    return pb.MESSAGE_TYPE_TEXT


def preview_of(message: pb.ChatMessage) -> str:
    text = " ".join(message.text.split())
    if text:
        return text[:PREVIEW_CHARS]
    return _LABELS.get(effective_type(message), "[message]")


def normalized(message: pb.ChatMessage) -> pb.ChatMessage:
    """The message as stored: type and author filled in where the writer left them unset."""
    stored = pb.ChatMessage()
    stored.CopyFrom(message)
    stored.type = effective_type(message)
    if stored.author == pb.AUTHOR_UNSPECIFIED:
        inbound = message.direction == pb.DIRECTION_INBOUND
        stored.author = pb.AUTHOR_USER if inbound else pb.AUTHOR_BOT
    return stored


@dataclass(frozen=True, slots=True)
class TrainingFields:
    """What ExportTrainingData needs of an inbound, parsed text message."""

    intent: str
    confidence: float
    text: str
    model_version: str


def training_fields(message: pb.ChatMessage) -> TrainingFields | None:
    """The example a message gives, or None when it gives none (see ExportTrainingDataRequest).

    A fallback is exported under the intent the model ranked highest, so a
    reviewer can confirm or correct it.
    """
    text = message.text.strip()
    if message.direction != pb.DIRECTION_INBOUND or not text or not message.intent.name:
        return None
    intent, confidence = message.intent.name, message.intent.confidence
    if message.is_fallback:
        for ranked in message.intent_ranking:
            if ranked.name and ranked.name != FALLBACK_INTENT:
                intent, confidence = ranked.name, ranked.confidence
                break
    return TrainingFields(intent, confidence, message.text, message.model_version)


@dataclass(frozen=True, slots=True)
class MessageRecord:
    tenant_id: str
    message_id: str
    conversation_id: str
    channel: int
    user_id: str
    direction: int
    create_ns: int
    search_text: str  # the text, case-folded: search matches substrings of it
    intent: str  # the chosen intent; empty when the message was not parsed
    intent_confidence: float
    is_fallback: bool
    handed_off: bool
    processing_ns: int | None  # None when unknown (outbound, or not reported)
    fencing_token: int
    training: TrainingFields | None
    preview: str
    payload: bytes = field(repr=False)
    expire_ns: int | None  # None: kept until deleted

    @property
    def key(self) -> MessageKey:
        return (self.create_ns, self.message_id)

    @property
    def inbound(self) -> bool:
        return self.direction == pb.DIRECTION_INBOUND

    @property
    def day(self) -> int:
        return day_of(self.create_ns)

    @property
    def month(self) -> int:
        return month_of(self.create_ns)

    def message(self) -> pb.ChatMessage:
        return pb.ChatMessage.FromString(self.payload)

    @classmethod
    def build(cls, message: pb.ChatMessage, expire_ns: int | None) -> MessageRecord:
        """A record of a validated message (see validation.check_message)."""
        stored = normalized(message)
        processing: int | None = None
        if message.HasField("processing_duration"):
            value = duration_ns(message.processing_duration)
            # Negative, or over a century: a writer's bug, not a statistic.
            processing = value if 0 <= value < MAX_PROCESSING_NS else None
        return cls(
            tenant_id=message.user.tenant_id,
            message_id=message.message_id,
            conversation_id=message.conversation_id,
            channel=int(message.user.channel),
            user_id=message.user.user_id,
            direction=int(message.direction),
            create_ns=timestamp_ns(message.create_time),
            search_text=message.text.casefold(),
            intent=message.intent.name,
            intent_confidence=message.intent.confidence,
            is_fallback=message.is_fallback,
            handed_off=message.handed_off,
            processing_ns=processing,
            fencing_token=message.fencing_token,
            training=training_fields(message),
            preview=preview_of(message),
            payload=stored.SerializeToString(),
            expire_ns=expire_ns,
        )

    @classmethod
    def from_payload(cls, payload: bytes, expire_ns: int | None) -> MessageRecord:
        """The record of a stored message (its payload is already normalized)."""
        return cls.build(pb.ChatMessage.FromString(payload), expire_ns)


def later_expiry(a: int | None, b: int | None) -> int | None:
    """The later of two expiries, where None (never) is the latest."""
    return None if a is None or b is None else max(a, b)


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    tenant_id: str
    conversation_id: str
    channel: int
    user_id: str
    first_ns: int
    last_ns: int
    last_message_id: str
    message_count: int
    last_preview: str
    last_direction: int
    last_intent: str
    last_intent_confidence: float
    last_intent_ns: int  # the (create_ns, message_id) of the message last_intent comes from
    last_intent_message_id: str
    has_fallback: bool
    handed_off: bool
    intents: frozenset[str]  # every intent of an inbound message: the intent filter
    expire_ns: int | None  # when the last of its messages expires

    @property
    def key(self) -> ConversationKey:
        return (self.last_ns, self.conversation_id)

    @property
    def last_key(self) -> MessageKey:
        return (self.last_ns, self.last_message_id)

    @classmethod
    def new(cls, record: MessageRecord) -> ConversationSummary:
        """An empty conversation positioned at ``record``; ``apply`` it next."""
        return cls(
            tenant_id=record.tenant_id,
            conversation_id=record.conversation_id,
            channel=record.channel,
            user_id=record.user_id,
            first_ns=record.create_ns,
            last_ns=record.create_ns,
            last_message_id=record.message_id,
            message_count=0,
            last_preview=record.preview,
            last_direction=record.direction,
            last_intent="",
            last_intent_confidence=0.0,
            last_intent_ns=0,
            last_intent_message_id="",
            has_fallback=False,
            handed_off=record.handed_off,
            intents=frozenset(),
            expire_ns=record.expire_ns,
        )

    def apply(self, record: MessageRecord, *, count: bool) -> ConversationSummary:
        """The summary with ``record`` in it; ``count`` is False for a message already counted.

        Applying a message twice changes nothing but the count, so a retried
        append repairs a summary without corrupting it.
        """
        changes: dict[str, object] = {
            "first_ns": min(self.first_ns, record.create_ns),
            "message_count": self.message_count + (1 if count else 0),
            "expire_ns": later_expiry(self.expire_ns, record.expire_ns),
        }
        if record.key >= self.last_key:
            changes.update(
                last_ns=record.create_ns,
                last_message_id=record.message_id,
                last_preview=record.preview,
                last_direction=record.direction,
                handed_off=record.handed_off,
            )
        if record.inbound and record.intent:
            changes["intents"] = self.intents | {record.intent}
            if record.key >= (self.last_intent_ns, self.last_intent_message_id):
                changes.update(
                    last_intent=record.intent,
                    last_intent_confidence=record.intent_confidence,
                    last_intent_ns=record.create_ns,
                    last_intent_message_id=record.message_id,
                )
        if record.inbound and record.is_fallback:
            changes["has_fallback"] = True
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class RetentionRecord:
    tenant_id: str
    message_ttl_ns: int  # 0: kept until deleted
    update_ns: int | None  # None for the default policy


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    """A delivery or read watermark for one conversation."""

    tenant_id: str
    conversation_id: str
    channel: int
    user_id: str
    read: bool  # False: delivered
    watermark_ns: int

    @classmethod
    def build(cls, receipt: pb.Receipt, now_ns: int) -> ReceiptRecord:
        """A validated receipt's record. A watermark ahead of now (a sender's clock)
        is taken as now: it covers nothing more yet, and on Cassandra, where the
        watermark is the write time, a future one would outlive an erasure."""
        return cls(
            tenant_id=receipt.user.tenant_id,
            conversation_id=receipt.conversation_id,
            channel=int(receipt.user.channel),
            user_id=receipt.user.user_id,
            read=receipt.kind == pb.RECEIPT_KIND_READ,
            watermark_ns=min(timestamp_ns(receipt.watermark_time), now_ns),
        )


@dataclass(frozen=True, slots=True)
class Watermarks:
    """How far a conversation's receipts reach (0: no receipt of that kind)."""

    delivered_ns: int = 0
    read_ns: int = 0

    def status(self, message: pb.ChatMessage) -> pb.DeliveryStatus.ValueType:
        """An outbound message's status: covered when sent (or, unsent, created) by a watermark."""
        if message.direction != pb.DIRECTION_OUTBOUND or message.type == pb.MESSAGE_TYPE_SYSTEM:
            return pb.DELIVERY_STATUS_UNSPECIFIED
        stamp = message.sent_time if message.HasField("sent_time") else message.create_time
        at = timestamp_ns(stamp)
        if self.read_ns and at <= self.read_ns:
            return pb.DELIVERY_STATUS_READ
        # A read covers what it reads: whatever was read was delivered.
        if at <= max(self.delivered_ns, self.read_ns):
            return pb.DELIVERY_STATUS_DELIVERED
        return pb.DELIVERY_STATUS_SENT
