"""Request checks, exactly as the contract's comments list them.

Every failure is an ``InvalidArgument`` whose message names the field (and,
in a batch, the message's index), so a client can fix its request without
reading our code. Values a client can send but proto cannot stop (unknown
enum numbers, out-of-range timestamps, NaN) are checked here too: client
input never reaches a store unchecked, and never ends as UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.common.v1 import event_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from mesh.tenants import Tenants
from services.chatlog.errors import InvalidArgument
from services.chatlog.records import NS, duration_ns, timestamp_ns

# What protobuf's well-known types allow (0001-01-01 to 9999-12-31; +-10000 years).
_TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)
_DURATION_SECONDS = 315_576_000_000
# Stored times must fit the stores' int64 nanoseconds with room for a TTL on top.
MIN_STORED_NS = 0  # 1970-01-01
MAX_STORED_NS = 7_258_118_400 * NS  # 2200-01-01
MAX_FENCING_TOKEN = 2**63 - 1

_CHANNELS = frozenset(event_pb2.Channel.values())
_DIRECTIONS = frozenset(pb.Direction.values())
_TYPES = frozenset(pb.MessageType.values())
_AUTHORS = frozenset(pb.Author.values())
_ORDERS = frozenset(pb.MessageOrder.values())


@dataclass(frozen=True)
class Limits:
    """The server's maxima, from the contract (the defaults) or the settings."""

    default_page_size: int = 50
    max_page_size: int = 1000
    max_batch: int = 500
    max_search_days: int = 31
    max_stats_days: int = 366
    default_export_limit: int = 1000
    max_export_limit: int = 10000
    max_id_length: int = 512  # ids are keys: a megabyte "id" is a bug, not a message
    max_query_words: int = 32
    max_intents: int = 100


def tenant(tenants: Tenants, tenant_id: str, name: str = "tenant_id") -> str:
    if not tenant_id:
        raise InvalidArgument(f"{name} is required")
    if tenants.get(tenant_id) is None:
        raise InvalidArgument(f"{name} {tenant_id!r} is not a known tenant")
    return tenant_id


def page_size(value: int, limits: Limits, name: str = "page_size") -> int:
    if value < 0:
        raise InvalidArgument(f"{name} must not be negative, got {value}")
    if value > limits.max_page_size:
        raise InvalidArgument(f"{name} {value} is over the maximum {limits.max_page_size}")
    return value or limits.default_page_size


def timestamp(ts: Timestamp, name: str) -> int:
    """A valid Timestamp in nanoseconds, clamped to the range stores can hold."""
    if not _TIMESTAMP_SECONDS[0] <= ts.seconds <= _TIMESTAMP_SECONDS[1] or not (0 <= ts.nanos < NS):
        raise InvalidArgument(f"{name} is not a valid timestamp")
    return min(max(timestamp_ns(ts), MIN_STORED_NS), MAX_STORED_NS)


def duration(value: Duration, name: str) -> int:
    if abs(value.seconds) > _DURATION_SECONDS or abs(value.nanos) >= NS:
        raise InvalidArgument(f"{name} is not a valid duration")
    if (value.seconds > 0 and value.nanos < 0) or (value.seconds < 0 and value.nanos > 0):
        raise InvalidArgument(f"{name} is not a valid duration (mixed signs)")
    return duration_ns(value)


def channel(value: int, name: str = "channel", *, required: bool = False) -> int:
    if value not in _CHANNELS:
        raise InvalidArgument(f"{name} {value} is not a known channel")
    if required and value == event_pb2.CHANNEL_UNSPECIFIED:
        raise InvalidArgument(f"{name} is required")
    return value


def direction(value: int, name: str = "direction") -> int:
    if value not in _DIRECTIONS:
        raise InvalidArgument(f"{name} {value} is not a known direction")
    return value


def order(value: int) -> int:
    if value not in _ORDERS:
        raise InvalidArgument(f"order {value} is not a known message order")
    return value


def time_range(
    start: int | None,
    end: int | None,
    *,
    start_name: str = "start_time",
    end_name: str = "end_time",
) -> None:
    if start is not None and end is not None and end <= start:
        raise InvalidArgument(f"{end_name} must be after {start_name}")


def identifier(value: str, name: str, limits: Limits) -> str:
    if not value:
        raise InvalidArgument(f"{name} is required")
    if len(value) > limits.max_id_length:
        raise InvalidArgument(f"{name} is longer than {limits.max_id_length} characters")
    return value


def confidence(value: float, name: str) -> float:
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InvalidArgument(f"{name} must be between 0 and 1, got {value}")
    return value


def _conversation(
    msg: pb.ChatMessage | pb.Receipt, where: str, tenants: Tenants, limits: Limits
) -> None:
    """The user (tenant, channel, id) and the conversation a record names."""
    if not msg.HasField("user"):
        raise InvalidArgument(f"{where}user is required")
    tenant(tenants, msg.user.tenant_id, f"{where}user.tenant_id")
    channel(msg.user.channel, f"{where}user.channel", required=True)
    identifier(msg.user.user_id, f"{where}user.user_id", limits)
    identifier(msg.conversation_id, f"{where}conversation_id", limits)


def message(index: int, msg: pb.ChatMessage, tenants: Tenants, limits: Limits) -> None:
    """A message AppendMessages can store; the error names ``messages[index].field``."""
    where = f"messages[{index}]."
    _conversation(msg, where, tenants, limits)
    identifier(msg.message_id, f"{where}message_id", limits)
    direction(msg.direction, f"{where}direction")
    if msg.direction == pb.DIRECTION_UNSPECIFIED:
        raise InvalidArgument(f"{where}direction is required")
    if msg.type not in _TYPES:
        raise InvalidArgument(f"{where}type {msg.type} is not a known message type")
    if msg.author not in _AUTHORS:
        raise InvalidArgument(f"{where}author {msg.author} is not a known author")
    if not msg.HasField("create_time"):
        raise InvalidArgument(f"{where}create_time is required")
    ts = msg.create_time
    if not _TIMESTAMP_SECONDS[0] <= ts.seconds <= _TIMESTAMP_SECONDS[1] or not 0 <= ts.nanos < NS:
        raise InvalidArgument(f"{where}create_time is not a valid timestamp")
    if not MIN_STORED_NS <= timestamp_ns(ts) < MAX_STORED_NS:
        raise InvalidArgument(f"{where}create_time must be between 1970 and 2200")
    if msg.HasField("processing_duration"):
        duration(msg.processing_duration, f"{where}processing_duration")
    if msg.fencing_token > MAX_FENCING_TOKEN:
        # Stores keep signed 64-bit integers; Redis counters never go past them either.
        raise InvalidArgument(f"{where}fencing_token is over {MAX_FENCING_TOKEN}")
    # Confidences are sort keys of the export: NaN or infinity would scramble it.
    if not math.isfinite(msg.intent.confidence):
        raise InvalidArgument(f"{where}intent.confidence is not a number")
    for position, ranked in enumerate(msg.intent_ranking):
        if not math.isfinite(ranked.confidence):
            raise InvalidArgument(f"{where}intent_ranking[{position}].confidence is not a number")
    for name, value in (
        ("in_reply_to", msg.in_reply_to),
        ("referenced_message_id", msg.referenced_message_id),
    ):
        if len(value) > limits.max_id_length:
            raise InvalidArgument(f"{where}{name} is longer than {limits.max_id_length} characters")
    for position, reply_id in enumerate(msg.reply_ids):
        if len(reply_id) > limits.max_id_length:
            raise InvalidArgument(
                f"{where}reply_ids[{position}] is longer than {limits.max_id_length} characters"
            )


def receipt(index: int, msg: pb.Receipt, tenants: Tenants, limits: Limits) -> None:
    """A receipt AppendMessages can record; the error names ``receipts[index].field``."""
    where = f"receipts[{index}]."
    _conversation(msg, where, tenants, limits)
    if msg.kind not in (pb.RECEIPT_KIND_DELIVERED, pb.RECEIPT_KIND_READ):
        raise InvalidArgument(f"{where}kind must be RECEIPT_KIND_DELIVERED or RECEIPT_KIND_READ")
    if not msg.HasField("watermark_time"):
        raise InvalidArgument(f"{where}watermark_time is required")
    ts = msg.watermark_time
    if not 0 <= ts.nanos < NS or not MIN_STORED_NS <= timestamp_ns(ts) < MAX_STORED_NS:
        raise InvalidArgument(f"{where}watermark_time must be a time between 1970 and 2200")


def words(query: str, limits: Limits) -> tuple[str, ...]:
    """The distinct case-folded words of a search query."""
    found = tuple(dict.fromkeys(query.casefold().split()))
    if not found:
        raise InvalidArgument("query is required (at least one word)")
    if len(found) > limits.max_query_words:
        raise InvalidArgument(f"query has more than {limits.max_query_words} words")
    if any(len(word) > limits.max_id_length for word in found):
        raise InvalidArgument(f"query has a word longer than {limits.max_id_length} characters")
    return found


def intents(values: Iterable[str], limits: Limits) -> frozenset[str]:
    found = frozenset(values)
    if "" in found:
        raise InvalidArgument("intents must not contain an empty name")
    if len(found) > limits.max_intents:
        raise InvalidArgument(f"intents names more than {limits.max_intents} intents")
    for name in found:
        if len(name) > limits.max_id_length:
            raise InvalidArgument(f"intents has a name longer than {limits.max_id_length}")
    return found


def optional_text(value: str, name: str, limits: Limits) -> str:
    if len(value) > limits.max_id_length:
        raise InvalidArgument(f"{name} is longer than {limits.max_id_length} characters")
    return value
