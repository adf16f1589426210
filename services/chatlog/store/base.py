"""The seam between the servicer and a storage backend.

A store takes validated queries and returns records; it knows nothing of
gRPC. Both backends implement the same ``ChatlogStore`` protocol and the
same test suite runs against both.

Paging is by *keyset*: a query says "continue after this sort key", never
"skip N rows", so a page is as cheap deep in a list as at its start, a
transcript can be paged both ways, and a list that grows while it is read
neither repeats nor skips rows.

Errors: ``StoreUnavailable`` when the backend cannot answer;
``StaleFencingToken`` and ``InvalidArgument`` from ``append``; nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.chatlog.export import ExportRow
from services.chatlog.records import (
    ConversationKey,
    ConversationSummary,
    MessageKey,
    MessageRecord,
    ReceiptRecord,
    RetentionRecord,
    Watermarks,
)
from services.chatlog.stats import StatsAggregator


@dataclass(frozen=True)
class ConversationQuery:
    tenant_id: str
    limit: int
    after: ConversationKey | None  # latest activity first: keys below this one
    channel: int  # 0: every channel
    start_ns: int | None  # last message at or after
    end_ns: int | None  # first message before
    intent: str
    has_fallback: bool | None
    handed_off: bool | None
    user_id: str
    now_ns: int

    def matches(self, summary: ConversationSummary) -> bool:
        """The filters a store applies itself when its index cannot."""
        return (
            (not self.channel or summary.channel == self.channel)
            and (self.start_ns is None or summary.last_ns >= self.start_ns)
            and (self.end_ns is None or summary.first_ns < self.end_ns)
            and (not self.intent or self.intent in summary.intents)
            and (self.has_fallback is None or summary.has_fallback == self.has_fallback)
            and (self.handed_off is None or summary.handed_off == self.handed_off)
            and (not self.user_id or summary.user_id == self.user_id)
            and (summary.expire_ns is None or summary.expire_ns > self.now_ns)
        )


@dataclass(frozen=True)
class ConversationPage:
    conversations: list[ConversationSummary]
    next_after: ConversationKey | None  # None: no more


@dataclass(frozen=True)
class TranscriptQuery:
    tenant_id: str
    conversation_id: str
    limit: int
    ascending: bool  # the direction of this scan (not necessarily the requested order)
    after: MessageKey | None  # strictly beyond this key, in the scan's direction
    now_ns: int


@dataclass(frozen=True)
class StoredMessage:
    key: MessageKey
    payload: bytes


@dataclass(frozen=True)
class TranscriptScan:
    messages: list[StoredMessage]  # in the scan's direction
    has_more: bool


@dataclass(frozen=True)
class SearchQuery:
    tenant_id: str
    words: tuple[str, ...]  # case-folded; every one must occur in the text
    start_ns: int
    end_ns: int
    direction: int  # 0: both
    channel: int  # 0: every channel
    limit: int
    after: MessageKey | None  # newest first: keys below this one
    now_ns: int

    def matches(self, search_text: str, direction: int, channel: int) -> bool:
        return (
            (not self.direction or direction == self.direction)
            and (not self.channel or channel == self.channel)
            and all(word in search_text for word in self.words)
        )


@dataclass(frozen=True)
class SearchPage:
    messages: list[StoredMessage]
    next_after: MessageKey | None


@dataclass(frozen=True)
class StatsQuery:
    tenant_id: str
    start_ns: int  # 00:00 UTC
    end_ns: int  # 00:00 UTC, exclusive
    channel: int
    now_ns: int


@dataclass(frozen=True)
class ExportQuery:
    tenant_id: str
    start_ns: int | None
    end_ns: int | None
    intents: frozenset[str]  # empty: all
    min_confidence: float | None
    max_confidence: float | None
    limit: int
    now_ns: int

    def in_range(self, create_ns: int) -> bool:
        return (self.start_ns is None or create_ns >= self.start_ns) and (
            self.end_ns is None or create_ns < self.end_ns
        )


@dataclass(frozen=True)
class ExportResult:
    rows: list[ExportRow]  # lowest confidence first
    truncated: bool


@dataclass(frozen=True)
class DeleteResult:
    messages: int
    conversations: int


class ChatlogStore(Protocol):
    """What the servicer needs of a storage backend."""

    name: str

    async def open(self) -> None:
        """Connects and applies the schema; StoreUnavailable if the backend cannot be reached."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Returns if the backend answers, else raises StoreUnavailable (health checks)."""

    async def maintain(self, now_ns: int) -> None:
        """Periodic housekeeping (purging expired rows where the backend has no TTL)."""

    async def append(self, records: Sequence[MessageRecord]) -> list[bool]:
        """Stores each record unless its (tenant, message_id) is stored; True where it was new.

        Not atomic: on an error, earlier records may be stored. Raises
        StaleFencingToken for a record whose token is below its user's, and
        InvalidArgument for one whose conversation belongs to another user.
        """

    async def record_receipts(self, receipts: Sequence[ReceiptRecord]) -> None:
        """Keeps each conversation's latest delivery and read watermarks (never lowers one)."""

    async def watermarks(self, tenant_id: str, conversation_id: str) -> Watermarks:
        """A conversation's watermarks; zeros where no receipt came."""

    async def list_conversations(self, query: ConversationQuery) -> ConversationPage: ...

    async def scan_transcript(self, query: TranscriptQuery) -> TranscriptScan: ...

    async def search(self, query: SearchQuery) -> SearchPage: ...

    async def stats(self, query: StatsQuery, into: StatsAggregator) -> None: ...

    async def export(self, query: ExportQuery) -> ExportResult: ...

    async def delete_user(
        self, tenant_id: str, user_id: str, channel: int, now_ns: int
    ) -> DeleteResult: ...

    async def get_retention(self, tenant_id: str) -> RetentionRecord | None: ...

    async def set_retention(self, policy: RetentionRecord) -> None: ...
