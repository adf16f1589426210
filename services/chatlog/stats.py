"""GetStats' arithmetic, shared by both stores so they count alike.

The stores stream ``StatsRow``s of the range into a ``StatsAggregator``.
Processing times go into a log-scale histogram (5% wide buckets), which gives
the mean exactly and p50/p95 within a few percent in constant memory per day.
Distinct conversations and users are exact sets: their size is bounded by the
range's traffic (at most 366 days), which an admin query reads anyway.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from chatbot.chatlog.v1 import chatlog_service_pb2 as pb

from services.chatlog.records import DAY_NS, day_of, ns_duration, ns_timestamp

_FLOOR_NS = 100_000  # 0.1 ms: everything faster shares bucket 0
_GROWTH = 1.05
_LOG_GROWTH = math.log(_GROWTH)


def latency_bucket(ns: int) -> int:
    if ns < _FLOOR_NS:
        return 0
    return 1 + int(math.log(ns / _FLOOR_NS) / _LOG_GROWTH)


def bucket_bounds(bucket: int) -> tuple[float, float]:
    if bucket == 0:
        return 0.0, float(_FLOOR_NS)
    return _FLOOR_NS * _GROWTH ** (bucket - 1), _FLOOR_NS * _GROWTH**bucket


@dataclass(frozen=True, slots=True)
class StatsRow:
    create_ns: int
    direction: int
    conversation_id: str
    channel: int
    user_id: str
    intent: str
    is_fallback: bool
    processing_ns: int | None


@dataclass
class _Period:
    inbound: int = 0
    outbound: int = 0
    parsed_or_fallback: int = 0
    fallbacks: int = 0
    conversations: set[str] = field(default_factory=set)
    users: set[tuple[int, str]] = field(default_factory=set)
    intents: Counter[str] = field(default_factory=Counter)
    latency: Counter[int] = field(default_factory=Counter)
    latency_count: int = 0
    latency_sum: int = 0
    latency_min: int = 0
    latency_max: int = 0

    def add(self, row: StatsRow) -> None:
        self.conversations.add(row.conversation_id)
        self.users.add((row.channel, row.user_id))
        if row.direction != pb.DIRECTION_INBOUND:
            self.outbound += 1
            return
        self.inbound += 1
        if row.intent:
            self.intents[row.intent] += 1
        if row.intent or row.is_fallback:
            self.parsed_or_fallback += 1
        if row.is_fallback:
            self.fallbacks += 1
        if row.processing_ns is not None:
            ns = row.processing_ns
            self.latency[latency_bucket(ns)] += 1
            self.latency_min = ns if not self.latency_count else min(self.latency_min, ns)
            self.latency_max = max(self.latency_max, ns)
            self.latency_count += 1
            self.latency_sum += ns

    def merge(self, other: _Period) -> None:
        self.inbound += other.inbound
        self.outbound += other.outbound
        self.parsed_or_fallback += other.parsed_or_fallback
        self.fallbacks += other.fallbacks
        self.conversations |= other.conversations
        self.users |= other.users
        self.intents.update(other.intents)
        self.latency.update(other.latency)
        if other.latency_count:
            self.latency_min = (
                other.latency_min
                if not self.latency_count
                else min(self.latency_min, other.latency_min)
            )
            self.latency_max = max(self.latency_max, other.latency_max)
        self.latency_count += other.latency_count
        self.latency_sum += other.latency_sum

    def percentile(self, q: float) -> int:
        """The nearest-rank percentile, from the bucket's geometric middle."""
        if not self.latency_count:
            return 0
        rank = max(1, math.ceil(q * self.latency_count))
        seen = 0
        for bucket in sorted(self.latency):
            seen += self.latency[bucket]
            if seen >= rank:
                low, high = bucket_bounds(bucket)
                middle = math.sqrt(low * high) if low else high / 2
                return int(min(max(middle, self.latency_min), self.latency_max))
        return self.latency_max

    def to_proto(self, start_ns: int, end_ns: int) -> pb.StatsBucket:
        bucket = pb.StatsBucket(
            start_time=ns_timestamp(start_ns),
            end_time=ns_timestamp(end_ns),
            inbound_message_count=self.inbound,
            outbound_message_count=self.outbound,
            conversation_count=len(self.conversations),
            user_count=len(self.users),
            fallback_count=self.fallbacks,
            fallback_rate=(
                self.fallbacks / self.parsed_or_fallback if self.parsed_or_fallback else 0.0
            ),
            mean_processing_duration=ns_duration(
                self.latency_sum // self.latency_count if self.latency_count else 0
            ),
            p50_processing_duration=ns_duration(self.percentile(0.50)),
            p95_processing_duration=ns_duration(self.percentile(0.95)),
        )
        bucket.intent_counts.update(self.intents)
        return bucket


class StatsAggregator:
    """Counts per UTC day of ``[start_day, end_day)`` and over the whole range."""

    def __init__(self, start_day: int, end_day: int) -> None:
        self.start_day = start_day
        self.end_day = end_day
        self._days: dict[int, _Period] = {}

    def add(self, row: StatsRow) -> None:
        day = day_of(row.create_ns)
        if self.start_day <= day < self.end_day:
            period = self._days.get(day)
            if period is None:
                period = self._days[day] = _Period()
            period.add(row)

    def to_proto(self) -> pb.GetStatsResponse:
        response = pb.GetStatsResponse()
        total = _Period()
        for day in range(self.start_day, self.end_day):
            period = self._days.get(day) or _Period()
            response.days.append(period.to_proto(day * DAY_NS, (day + 1) * DAY_NS))
            total.merge(period)
        response.total.CopyFrom(total.to_proto(self.start_day * DAY_NS, self.end_day * DAY_NS))
        return response
