"""The Cassandra store: tables designed per query, bounded partitions, TTLs.

services/chatlog/README.md describes the data model. In short, an append
writes the message to one table per query that reads it (by id, by
conversation and month, by tenant and day, by intent and month) and moves the
conversation's summary to the day of its latest message. Every write is
idempotent: the first copy of a message is kept by a lightweight transaction
(``IF NOT EXISTS``) on ``messages_by_id``, and a retried append rewrites the
other tables from that copy, which repairs an append cut short by a crash.

Every statement is prepared, runs at the configured consistency (LWTs at
LOCAL_SERIAL), and goes through ``_cql`` so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.query import BatchStatement, BatchType, PreparedStatement, Statement
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.common.v1 import event_pb2

from mesh import get_logger
from services.chatlog.errors import InvalidArgument, StaleFencingToken, StoreUnavailable
from services.chatlog.export import ExportRow
from services.chatlog.records import (
    DAY_NS,
    NS,
    ConversationSummary,
    MessageRecord,
    ReceiptRecord,
    RetentionRecord,
    Watermarks,
    day_of,
    month_of,
    months_between,
)
from services.chatlog.stats import StatsAggregator, StatsRow
from services.chatlog.store import _cql
from services.chatlog.store._cql import PagedQuery, Row, Stream
from services.chatlog.store.base import (
    ConversationPage,
    ConversationQuery,
    DeleteResult,
    ExportQuery,
    ExportResult,
    SearchPage,
    SearchQuery,
    StatsQuery,
    StoredMessage,
    TranscriptQuery,
    TranscriptScan,
)
from services.chatlog.store.cassandra_schema import apply_schema, read_shards

_log = get_logger("chatlog.cassandra")

MAX_TTL_SECONDS = 630_720_000  # Cassandra's limit: 20 years
FENCE_TTL_SECONDS = 30 * 86_400  # a lease token older than this protects nothing
_MAX_NS = 2**63 - 1
_MIN_NS = -(2**63)
_CONFIDENCE_BOUNDS = (-3.0e38, 3.0e38)
_WRITE_CONCURRENCY = 32  # conversations of one batch written at once
_DELETE_CONCURRENCY = 32


@dataclass(frozen=True)
class CassandraConfig:
    hosts: tuple[str, ...] = ("127.0.0.1",)
    port: int = 9042
    keyspace: str = "chatbot"
    consistency: str = "LOCAL_ONE"
    replication: str = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    local_dc: str | None = None
    username: str | None = None
    password: str | None = None
    request_timeout: float = 5.0
    connect_timeout: float = 3.0
    apply_schema: bool = True
    shards: int = 4
    scan_budget: int = 5_000  # rows one filtered ListConversations or SearchMessages call reads
    protocol_version: int = 5  # Cassandra 4.0 and later; 4 for 3.x


def consistency_level(name: str) -> int:
    value: int | None = ConsistencyLevel.name_to_value.get(name.upper())
    if value is None:
        choices = ", ".join(sorted(ConsistencyLevel.name_to_value))
        raise ValueError(f"unknown consistency level {name!r} (one of {choices})")
    return value


def ttl_seconds(expire_ns: int | None, now_ns: int) -> int:
    """The TTL to write for a row expiring at ``expire_ns``; 0 means none."""
    if expire_ns is None:
        return 0
    return min(MAX_TTL_SECONDS, max(1, math.ceil((expire_ns - now_ns) / NS)))


def _summary(tenant_id: str, row: Row) -> ConversationSummary:
    return ConversationSummary(
        tenant_id=tenant_id,
        conversation_id=row.conversation_id,
        channel=row.channel,
        user_id=row.user_id,
        first_ns=row.first_ns,
        last_ns=row.last_ns,
        last_message_id=row.last_message_id,
        message_count=row.message_count,
        last_preview=row.last_preview,
        last_direction=row.last_direction,
        last_intent=row.last_intent or "",
        last_intent_confidence=row.last_intent_confidence or 0.0,
        last_intent_ns=row.last_intent_ns or 0,
        last_intent_message_id=row.last_intent_message_id or "",
        has_fallback=bool(row.has_fallback),
        handed_off=bool(row.handed_off),
        intents=frozenset(row.intents or ()),
        expire_ns=row.expire_ns,
    )


_SUMMARY_FIELDS = (
    "channel, user_id, first_ns, last_message_id, message_count, last_preview, last_direction, "
    "last_intent, last_intent_confidence, last_intent_ns, last_intent_message_id, has_fallback, "
    "handed_off, intents, expire_ns"
)


def _summary_values(s: ConversationSummary) -> tuple[Any, ...]:
    return (
        s.channel,
        s.user_id,
        s.first_ns,
        s.last_message_id,
        s.message_count,
        s.last_preview,
        s.last_direction,
        s.last_intent,
        s.last_intent_confidence,
        s.last_intent_ns,
        s.last_intent_message_id,
        s.has_fallback,
        s.handed_off,
        set(s.intents),
        s.expire_ns,
    )


_STATEMENTS = {
    "insert_id": "INSERT INTO {ks}.messages_by_id (tenant_id, message_id, conversation_id, "
    "channel, user_id, create_ns, expire_ns, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "IF NOT EXISTS USING TTL ?",
    "get_id": "SELECT payload FROM {ks}.messages_by_id WHERE tenant_id = ? AND message_id = ?",
    "delete_id": "DELETE FROM {ks}.messages_by_id WHERE tenant_id = ? AND message_id = ?",
    "insert_transcript": "INSERT INTO {ks}.messages_by_conversation (tenant_id, conversation_id, "
    "month, create_ns, message_id, payload) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?",
    "transcript_asc": "SELECT create_ns, message_id, payload FROM {ks}.messages_by_conversation "
    "WHERE tenant_id = ? AND conversation_id = ? AND month = ? "
    "AND (create_ns, message_id) > (?, ?) ORDER BY create_ns ASC, message_id ASC LIMIT ?",
    "transcript_desc": "SELECT create_ns, message_id, payload FROM {ks}.messages_by_conversation "
    "WHERE tenant_id = ? AND conversation_id = ? AND month = ? "
    "AND (create_ns, message_id) < (?, ?) ORDER BY create_ns DESC, message_id DESC LIMIT ?",
    "transcript_all": "SELECT create_ns, message_id, payload FROM {ks}.messages_by_conversation "
    "WHERE tenant_id = ? AND conversation_id = ? AND month = ?",
    "transcript_count": "SELECT COUNT(*) FROM {ks}.messages_by_conversation "
    "WHERE tenant_id = ? AND conversation_id = ? AND month = ?",
    "delete_transcript": "DELETE FROM {ks}.messages_by_conversation WHERE tenant_id = ? "
    "AND conversation_id = ? AND month = ? AND create_ns = ? AND message_id = ?",
    "insert_day": "INSERT INTO {ks}.messages_by_day (tenant_id, day, shard, create_ns, message_id, "
    "conversation_id, channel, user_id, direction, search_text, intent, is_fallback, "
    "processing_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    "search_day": "SELECT create_ns, message_id, channel, direction, search_text "
    "FROM {ks}.messages_by_day WHERE tenant_id = ? AND day = ? AND shard = ? "
    "AND (create_ns, message_id) < (?, ?) AND (create_ns) >= (?)",
    "stats_day": "SELECT create_ns, direction, conversation_id, channel, user_id, intent, "
    "is_fallback, processing_ns FROM {ks}.messages_by_day "
    "WHERE tenant_id = ? AND day = ? AND shard = ?",
    "delete_day": "DELETE FROM {ks}.messages_by_day WHERE tenant_id = ? AND day = ? AND shard = ? "
    "AND create_ns = ? AND message_id = ?",
    "insert_intent": "INSERT INTO {ks}.messages_by_intent (tenant_id, intent, month, confidence, "
    "message_id, conversation_id, create_ns, text, entities, is_fallback, model_version) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    "export_intent": "SELECT intent, message_id, conversation_id, create_ns, confidence, text, "
    "entities, is_fallback, model_version FROM {ks}.messages_by_intent "
    "WHERE tenant_id = ? AND intent = ? AND month = ? AND confidence >= ? AND confidence <= ?",
    "delete_intent": "DELETE FROM {ks}.messages_by_intent WHERE tenant_id = ? AND intent = ? "
    "AND month = ? AND confidence = ? AND message_id = ?",
    "get_summary": "SELECT conversation_id, last_ns, " + _SUMMARY_FIELDS + " FROM "
    "{ks}.conversations WHERE tenant_id = ? AND conversation_id = ?",
    "put_summary": "INSERT INTO {ks}.conversations (tenant_id, conversation_id, last_ns, "
    + _SUMMARY_FIELDS
    + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    "delete_summary": "DELETE FROM {ks}.conversations WHERE tenant_id = ? AND conversation_id = ?",
    "put_activity": "INSERT INTO {ks}.conversations_by_activity (tenant_id, day, shard, last_ns, "
    "conversation_id, "
    + _SUMMARY_FIELDS
    + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    "delete_activity": "DELETE FROM {ks}.conversations_by_activity WHERE tenant_id = ? AND day = ? "
    "AND shard = ? AND last_ns = ? AND conversation_id = ?",
    "list_activity": "SELECT conversation_id, last_ns, " + _SUMMARY_FIELDS + " FROM "
    "{ks}.conversations_by_activity WHERE tenant_id = ? AND day = ? AND shard = ? "
    "AND (last_ns, conversation_id) < (?, ?) AND (last_ns) >= (?)",
    "put_user": "INSERT INTO {ks}.conversations_by_user (tenant_id, user_id, channel, "
    "conversation_id) VALUES (?, ?, ?, ?) USING TTL ?",
    "list_user": "SELECT channel, conversation_id FROM {ks}.conversations_by_user "
    "WHERE tenant_id = ? AND user_id = ?",
    "delete_user": "DELETE FROM {ks}.conversations_by_user WHERE tenant_id = ? AND user_id = ? "
    "AND channel = ? AND conversation_id = ?",
    "put_day": "INSERT INTO {ks}.tenant_days (tenant_id, day) VALUES (?, ?) USING TTL ?",
    "list_days": "SELECT day FROM {ks}.tenant_days WHERE tenant_id = ?",
    "put_intent_name": "INSERT INTO {ks}.tenant_intents (tenant_id, intent) VALUES (?, ?)",
    "list_intent_names": "SELECT intent FROM {ks}.tenant_intents WHERE tenant_id = ?",
    "raise_fence": "UPDATE {ks}.user_fences USING TTL ? SET fencing_token = ? WHERE tenant_id = ? "
    "AND channel = ? AND user_id = ? IF fencing_token < ?",
    "create_fence": "INSERT INTO {ks}.user_fences (tenant_id, channel, user_id, fencing_token) "
    "VALUES (?, ?, ?, ?) IF NOT EXISTS USING TTL ?",
    "get_fence": "SELECT fencing_token FROM {ks}.user_fences WHERE tenant_id = ? AND channel = ? "
    "AND user_id = ?",
    "delete_fence": "DELETE FROM {ks}.user_fences WHERE tenant_id = ? AND channel = ? "
    "AND user_id = ?",
    "get_retention": "SELECT message_ttl_seconds, message_ttl_nanos, update_ns "
    "FROM {ks}.retention_policies "
    "WHERE tenant_id = ?",
    "put_delivered": "UPDATE {ks}.receipts_by_conversation USING TIMESTAMP ? "
    "SET delivered_ns = ? WHERE tenant_id = ? AND conversation_id = ?",
    "put_read": "UPDATE {ks}.receipts_by_conversation USING TIMESTAMP ? "
    "SET read_ns = ? WHERE tenant_id = ? AND conversation_id = ?",
    "get_receipts": "SELECT delivered_ns, read_ns FROM {ks}.receipts_by_conversation "
    "WHERE tenant_id = ? AND conversation_id = ?",
    "delete_receipts": "DELETE FROM {ks}.receipts_by_conversation "
    "WHERE tenant_id = ? AND conversation_id = ?",
    "ping": "SELECT release_version FROM system.local WHERE key = 'local'",
    "put_retention": "INSERT INTO {ks}.retention_policies (tenant_id, message_ttl_seconds, "
    "message_ttl_nanos, update_ns) VALUES (?, ?, ?, ?)",
}


class CassandraStore:
    name = "cassandra"

    def __init__(self, config: CassandraConfig) -> None:
        self.config = config
        self._consistency = consistency_level(config.consistency)
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._prepared: dict[str, PreparedStatement] = {}
        self.shards = config.shards
        # (tenant, day) -> the expiry its tenant_days row was written with; (tenant, intent).
        self._days_written: dict[tuple[str, int], int | None] = {}
        self._intents_written: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ connection

    def _connect(self) -> tuple[Cluster, Session]:
        cfg = self.config
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=cfg.local_dc)),
            consistency_level=self._consistency,
            serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
            request_timeout=cfg.request_timeout,
        )
        auth = PlainTextAuthProvider(cfg.username, cfg.password or "") if cfg.username else None
        cluster = Cluster(
            contact_points=list(cfg.hosts),
            port=cfg.port,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            auth_provider=auth,
            connect_timeout=cfg.connect_timeout,
            control_connection_timeout=cfg.connect_timeout,
            # Reconnect within seconds when a node comes back (the default waits up to 10 min).
            reconnection_policy=ExponentialReconnectionPolicy(0.5, 5.0),
            # A node that hangs without closing its sockets is noticed within seconds.
            idle_heartbeat_interval=5,
            idle_heartbeat_timeout=5,
            protocol_version=cfg.protocol_version,
        )
        try:
            session = cluster.connect()
            if cfg.apply_schema:
                self.shards = apply_schema(session, cfg.keyspace, cfg.replication, cfg.shards)
            else:
                self.shards = read_shards(session, cfg.keyspace)
            self._prepared = {
                name: session.prepare(cql.format(ks=cfg.keyspace))
                for name, cql in _STATEMENTS.items()
            }
        except BaseException:
            cluster.shutdown()
            raise
        return cluster, session

    async def open(self) -> None:
        if self._session is not None:
            return
        connecting = asyncio.ensure_future(asyncio.to_thread(self._connect))
        try:
            self._cluster, self._session = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            # Stopped while connecting: close the cluster if the thread still connects it.
            connecting.add_done_callback(_shutdown_connected)
            raise
        except _cql._UNAVAILABLE as exc:
            raise _cql.unavailable(exc) from exc
        except LookupError as exc:
            raise StoreUnavailable(str(exc)) from exc
        _log.info(
            "cassandra store open",
            extra={
                "hosts": list(self.config.hosts),
                "port": self.config.port,
                "keyspace": self.config.keyspace,
                "consistency": self.config.consistency,
                "shards": self.shards,
            },
        )

    async def close(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)

    def _ready(self) -> Session:
        if self._session is None:
            raise StoreUnavailable("not connected to Cassandra yet")
        return self._session

    def _bind(self, name: str, values: Sequence[Any], fetch_size: int | None = None) -> Statement:
        statement = self._prepared[name].bind(values)
        if fetch_size is not None:
            statement.fetch_size = fetch_size
        return statement

    async def _run(self, name: str, *values: Any) -> list[Row]:
        return await _cql.execute(
            self._ready(), self._bind(name, values), timeout=self.config.request_timeout
        )

    async def _run_statement(self, statement: Statement) -> list[Row]:
        return await _cql.execute(self._ready(), statement, timeout=self.config.request_timeout)

    def _stream(self, name: str, values: Sequence[Any], fetch_size: int) -> Stream:
        query = PagedQuery(
            self._ready(), self._bind(name, values, fetch_size), timeout=self.config.request_timeout
        )
        return Stream(query)

    async def ping(self) -> None:
        session = self._ready()
        await _cql.execute(
            session, self._bind("ping", ()), timeout=min(self.config.request_timeout, 2.0)
        )

    async def maintain(self, now_ns: int) -> None:
        """Nothing to do: Cassandra expires rows by their TTL."""

    def _shard(self, conversation_id: str) -> int:
        # A conversation keeps its shard, so its rows of one day sit together.
        return zlib.crc32(conversation_id.encode()) % self.shards

    async def _days(self, tenant_id: str) -> list[int]:
        return [row.day for row in await self._run("list_days", tenant_id)]

    # ------------------------------------------------------------------ appends

    async def append(self, records: Sequence[MessageRecord]) -> list[bool]:
        created = [False] * len(records)
        groups: dict[tuple[str, str], list[int]] = {}
        for index, record in enumerate(records):
            groups.setdefault((record.tenant_id, record.conversation_id), []).append(index)
        fences: dict[tuple[str, int, str, int], asyncio.Task[int]] = {}
        slots = asyncio.Semaphore(_WRITE_CONCURRENCY)

        async def one(indices: list[int]) -> None:
            async with slots:
                await self._append_conversation(records, indices, created, fences)

        # A conversation's messages go in order; conversations go side by side.
        outcomes = await asyncio.gather(
            *(one(ix) for ix in groups.values()), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return created

    async def _append_conversation(
        self,
        records: Sequence[MessageRecord],
        indices: list[int],
        created: list[bool],
        fences: dict[tuple[str, int, str, int], asyncio.Task[int]],
    ) -> None:
        first = records[indices[0]]
        before = await self._read_summary(first.tenant_id, first.conversation_id)
        summary, repaired = before, False
        now = time.time_ns()
        try:
            for index in indices:
                record = records[index]
                if summary is not None and (summary.channel, summary.user_id) != (
                    record.channel,
                    record.user_id,
                ):
                    raise InvalidArgument(
                        f"messages[{index}].conversation_id {record.conversation_id!r} belongs "
                        "to another user (a conversation's messages all have the same user)"
                    )
                if record.fencing_token:
                    await self._check_fence(fences, index, record)
                is_new, stored = await self._insert_id(record, now)
                created[index] = is_new
                if not is_new:
                    # Rewrite the other tables from the first stored copy: if the append that
                    # stored it died half-way, this retry completes it.
                    if stored is None or stored.conversation_id != record.conversation_id:
                        continue
                    record, repaired = stored, True
                await self._write_message(record, now)
                summary = (summary or ConversationSummary.new(record)).apply(record, count=is_new)
        finally:
            if summary is not None and summary != before:
                await self._save_summary(before, summary, repaired, now)

    async def _check_fence(
        self,
        fences: dict[tuple[str, int, str, int], asyncio.Task[int]],
        index: int,
        record: MessageRecord,
    ) -> None:
        key = (record.tenant_id, record.channel, record.user_id, record.fencing_token)
        task = fences.get(key)
        if task is None:  # once per user and token in a batch
            task = fences[key] = asyncio.ensure_future(self._raise_fence(*key))
        current = await asyncio.shield(task)
        if current > record.fencing_token:
            raise StaleFencingToken(
                f"messages[{index}].fencing_token {record.fencing_token} is lower than "
                f"{current}, already stored for this user: the writer's lease has passed to "
                "another worker"
            )

    async def _raise_fence(self, tenant_id: str, channel: int, user_id: str, token: int) -> int:
        """Raises the user's fence to ``token`` (Paxos); returns the fence as it now stands."""
        # The common case, a worker writing under the lease it already announced, needs no
        # Paxos round: a plain read at the configured consistency shows the fence.
        rows = await self._run("get_fence", tenant_id, channel, user_id)
        if rows and rows[0].fencing_token >= token:
            return int(rows[0].fencing_token)
        for _ in range(10):
            rows = await self._run(
                "raise_fence", FENCE_TTL_SECONDS, token, tenant_id, channel, user_id, token
            )
            if rows[0].applied:
                return token
            current = getattr(rows[0], "fencing_token", None)
            if current is not None:
                if current >= token:
                    return int(current)
                continue  # raised by someone else meanwhile, still below: try again
            rows = await self._run(
                "create_fence", tenant_id, channel, user_id, token, FENCE_TTL_SECONDS
            )
            if rows[0].applied:
                return token
        raise StoreUnavailable("the fencing token could not be updated (contention)")

    async def _insert_id(
        self, record: MessageRecord, now_ns: int
    ) -> tuple[bool, MessageRecord | None]:
        rows = await self._run(
            "insert_id",
            record.tenant_id,
            record.message_id,
            record.conversation_id,
            record.channel,
            record.user_id,
            record.create_ns,
            record.expire_ns,
            record.payload,
            ttl_seconds(record.expire_ns, now_ns),
        )
        row = rows[0]
        if row.applied:
            return True, None
        payload = getattr(row, "payload", None)
        if payload is None:
            return False, None
        return False, MessageRecord.from_payload(payload, row.expire_ns)

    async def _write_message(self, record: MessageRecord, now_ns: int) -> None:
        ttl = ttl_seconds(record.expire_ns, now_ns)
        writes = [
            self._run(
                "insert_transcript",
                record.tenant_id,
                record.conversation_id,
                record.month,
                record.create_ns,
                record.message_id,
                record.payload,
                ttl,
            ),
            self._run(
                "insert_day",
                record.tenant_id,
                record.day,
                self._shard(record.conversation_id),
                record.create_ns,
                record.message_id,
                record.conversation_id,
                record.channel,
                record.user_id,
                record.direction,
                record.search_text,
                record.intent,
                record.is_fallback,
                record.processing_ns,
                ttl,
            ),
        ]
        training = record.training
        if training is not None:
            entities = pb.ChatMessage(entities=record.message().entities).SerializeToString()
            writes.append(
                self._run(
                    "insert_intent",
                    record.tenant_id,
                    training.intent,
                    record.month,
                    training.confidence,
                    record.message_id,
                    record.conversation_id,
                    record.create_ns,
                    training.text,
                    entities,
                    record.is_fallback,
                    training.model_version,
                    ttl,
                )
            )
            if (record.tenant_id, training.intent) not in self._intents_written:
                writes.append(self._run("put_intent_name", record.tenant_id, training.intent))
        day_key = (record.tenant_id, record.day)
        # The day's row outlives its last message by a day or more, and is rewritten only
        # when a message expiring a day later than it arrives.
        day_expiry = None if record.expire_ns is None else record.expire_ns + 2 * DAY_NS
        written = self._days_written.get(day_key, _MIN_NS)
        day_needed = day_key not in self._days_written or (
            written is not None and (day_expiry is None or day_expiry > written + DAY_NS)
        )
        if day_needed:
            writes.append(
                self._run("put_day", record.tenant_id, record.day, ttl_seconds(day_expiry, now_ns))
            )
        await asyncio.gather(*writes)
        if training is not None:
            self._intents_written.add((record.tenant_id, training.intent))
        if day_needed:
            self._days_written[day_key] = day_expiry

    async def _read_summary(
        self, tenant_id: str, conversation_id: str
    ) -> ConversationSummary | None:
        rows = await self._run("get_summary", tenant_id, conversation_id)
        return _summary(tenant_id, rows[0]) if rows else None

    async def _count(self, summary: ConversationSummary) -> int:
        counts = await asyncio.gather(
            *(
                self._run("transcript_count", summary.tenant_id, summary.conversation_id, month)
                for month in months_between(summary.first_ns, summary.last_ns)
            )
        )
        return sum(int(rows[0].count) for rows in counts)

    async def _save_summary(
        self,
        before: ConversationSummary | None,
        after: ConversationSummary,
        recount: bool,
        now_ns: int,
    ) -> None:
        if recount:  # a repaired append may or may not have been counted: count again
            after = replace(after, message_count=await self._count(after))
        ttl = ttl_seconds(after.expire_ns, now_ns)
        tenant, conversation = after.tenant_id, after.conversation_id
        shard = self._shard(conversation)
        values = _summary_values(after)
        # Logged: the summary, its place in the activity index and the user's list change
        # together or (after a coordinator crash, replayed from the batchlog) eventually.
        batch = BatchStatement(batch_type=BatchType.LOGGED, consistency_level=self._consistency)
        batch.add(
            self._prepared["put_summary"], (tenant, conversation, after.last_ns, *values, ttl)
        )
        if before is not None and before.key != after.key:
            batch.add(
                self._prepared["delete_activity"],
                (tenant, day_of(before.last_ns), shard, before.last_ns, conversation),
            )
        batch.add(
            self._prepared["put_activity"],
            (tenant, day_of(after.last_ns), shard, after.last_ns, conversation, *values, ttl),
        )
        batch.add(
            self._prepared["put_user"], (tenant, after.user_id, after.channel, conversation, ttl)
        )
        await self._run_statement(batch)

    # ------------------------------------------------------------------ conversations

    async def list_conversations(self, query: ConversationQuery) -> ConversationPage:
        if query.user_id:
            return await self._list_user_conversations(query)
        upper = query.after or (_MAX_NS, "")
        lower = _MIN_NS if query.start_ns is None else query.start_ns
        filtered = bool(
            query.channel
            or query.end_ns is not None
            or query.intent
            or query.has_fallback is not None
            or query.handed_off is not None
        )
        # Unfiltered, a page needs at most limit + 1 rows of any one shard.
        fetch = min(1000, max(query.limit + 1, 200 if filtered else 0))
        found: list[ConversationSummary] = []
        scanned = 0
        for day in await self._days(query.tenant_id):
            if day > day_of(upper[0]):
                continue
            if day < day_of(lower):
                break
            streams = [
                self._stream(
                    "list_activity", (query.tenant_id, day, shard, upper[0], upper[1], lower), fetch
                )
                for shard in range(self.shards)
            ]
            async for row in _cql.merge(
                streams, lambda r: (r.last_ns, r.conversation_id), descending=True
            ):
                summary = _summary(query.tenant_id, row)
                scanned += 1
                if query.matches(summary):
                    found.append(summary)
                    if len(found) > query.limit:
                        return ConversationPage(found[: query.limit], found[query.limit - 1].key)
                if scanned >= self.config.scan_budget:
                    # Bounded work per call: a partial page, continued by the token.
                    return ConversationPage(found, summary.key)
        return ConversationPage(found, None)

    async def _list_user_conversations(self, query: ConversationQuery) -> ConversationPage:
        # A user has few conversations: read their summaries and sort them here.
        refs = await self._run("list_user", query.tenant_id, query.user_id)
        summaries = await asyncio.gather(
            *(self._read_summary(query.tenant_id, ref.conversation_id) for ref in refs)
        )
        matching = sorted(
            (
                s
                for s in summaries
                if s is not None
                and query.matches(s)
                and (query.after is None or s.key < query.after)
            ),
            key=lambda s: s.key,
            reverse=True,
        )
        page = matching[: query.limit]
        return ConversationPage(page, page[-1].key if len(matching) > query.limit else None)

    async def scan_transcript(self, query: TranscriptQuery) -> TranscriptScan:
        summary = await self._read_summary(query.tenant_id, query.conversation_id)
        if summary is None:
            return TranscriptScan([], False)
        months = months_between(summary.first_ns, summary.last_ns)
        if query.after is not None:
            # Start at the cursor's month (a late append may lie outside the summary's span).
            at = month_of(query.after[0])
            months = [
                m
                for m in range(min(months[0], at), max(months[-1], at) + 1)
                if (m >= at if query.ascending else m <= at)
            ]
        if not query.ascending:
            months.reverse()
        bound = query.after or ((_MIN_NS, "") if query.ascending else (_MAX_NS, ""))
        found: list[StoredMessage] = []
        name = "transcript_asc" if query.ascending else "transcript_desc"
        for month in months:
            need = query.limit + 1 - len(found)
            rows = await self._run(
                name, query.tenant_id, query.conversation_id, month, bound[0], bound[1], need
            )
            found.extend(StoredMessage((r.create_ns, r.message_id), r.payload) for r in rows)
            if len(found) > query.limit:
                break
        return TranscriptScan(found[: query.limit], len(found) > query.limit)

    # ------------------------------------------------------------------ search, stats, export

    async def search(self, query: SearchQuery) -> SearchPage:
        upper = query.after or (query.end_ns, "")
        hits: list[tuple[int, str]] = []
        scanned = 0
        next_after: tuple[int, str] | None = None
        first_day, last_day = day_of(query.start_ns), day_of(query.end_ns - 1)
        for day in await self._days(query.tenant_id):
            if day > min(last_day, day_of(upper[0])):
                continue
            if day < first_day:
                break
            streams = [
                self._stream(
                    "search_day",
                    (query.tenant_id, day, shard, upper[0], upper[1], query.start_ns),
                    500,
                )
                for shard in range(self.shards)
            ]
            async for row in _cql.merge(
                streams, lambda r: (r.create_ns, r.message_id), descending=True
            ):
                scanned += 1
                key = (row.create_ns, row.message_id)
                if query.matches(row.search_text, row.direction, row.channel):
                    hits.append(key)
                    if len(hits) > query.limit:
                        next_after = hits[query.limit - 1]
                        break
                if scanned >= self.config.scan_budget:
                    next_after = key  # a partial page, continued by the token
                    break
            if next_after is not None:
                break
        page = hits[: query.limit]
        payloads = await asyncio.gather(
            *(self._run("get_id", query.tenant_id, message_id) for _, message_id in page)
        )
        messages = [
            StoredMessage(key, rows[0].payload)
            for key, rows in zip(page, payloads, strict=True)
            if rows
        ]
        return SearchPage(messages, next_after)

    async def stats(self, query: StatsQuery, into: StatsAggregator) -> None:
        days = [
            d
            for d in await self._days(query.tenant_id)
            if day_of(query.start_ns) <= d < day_of(query.end_ns)
        ]
        slots = asyncio.Semaphore(8)

        async def read(day: int, shard: int) -> None:
            async with slots:
                stream = PagedQuery(
                    self._ready(),
                    self._bind("stats_day", (query.tenant_id, day, shard), 5000),
                    timeout=self.config.request_timeout,
                )
                while not stream.exhausted:
                    for row in await stream.next_page():
                        if query.channel and row.channel != query.channel:
                            continue
                        into.add(
                            StatsRow(
                                row.create_ns,
                                row.direction,
                                row.conversation_id,
                                row.channel,
                                row.user_id,
                                row.intent or "",
                                bool(row.is_fallback),
                                row.processing_ns,
                            )
                        )

        await asyncio.gather(*(read(d, s) for d in days for s in range(self.shards)))

    async def export(self, query: ExportQuery) -> ExportResult:
        first = None if query.start_ns is None else month_of(query.start_ns)
        last = None if query.end_ns is None else month_of(query.end_ns - 1)
        months = sorted(
            {
                month_of(day * DAY_NS)
                for day in await self._days(query.tenant_id)
                if (first is None or month_of(day * DAY_NS) >= first)
                and (last is None or month_of(day * DAY_NS) <= last)
            }
        )
        if query.intents:
            intents = sorted(query.intents)
        else:
            intents = [row.intent for row in await self._run("list_intent_names", query.tenant_id)]
        low = _CONFIDENCE_BOUNDS[0] if query.min_confidence is None else query.min_confidence
        high = _CONFIDENCE_BOUNDS[1] if query.max_confidence is None else query.max_confidence
        fetch = min(1000, query.limit + 1)
        streams = [
            self._stream("export_intent", (query.tenant_id, intent, month, low, high), fetch)
            for intent in intents
            for month in months
        ]
        rows: list[ExportRow] = []
        async for row in _cql.merge(streams, lambda r: (r.confidence, r.message_id)):
            if not query.in_range(row.create_ns):
                continue
            rows.append(
                ExportRow(
                    message_id=row.message_id,
                    conversation_id=row.conversation_id,
                    create_ns=row.create_ns,
                    text=row.text,
                    intent=row.intent,
                    confidence=row.confidence,
                    entities=tuple(pb.ChatMessage.FromString(row.entities or b"").entities),
                    is_fallback=bool(row.is_fallback),
                    model_version=row.model_version or "",
                )
            )
            if len(rows) > query.limit:
                break
        return ExportResult(rows[: query.limit], len(rows) > query.limit)

    # ------------------------------------------------------------------ erasure, retention

    async def delete_user(
        self, tenant_id: str, user_id: str, channel: int, now_ns: int
    ) -> DeleteResult:
        refs = [
            ref
            for ref in await self._run("list_user", tenant_id, user_id)
            if not channel or ref.channel == channel
        ]
        slots = asyncio.Semaphore(_DELETE_CONCURRENCY)

        async def delete(statement: str, *values: Any) -> None:
            async with slots:
                await self._run(statement, *values)

        messages = conversations = 0
        for ref in refs:
            summary = await self._read_summary(tenant_id, ref.conversation_id)
            deletes = []
            if summary is not None:
                shard = self._shard(ref.conversation_id)
                for month in months_between(summary.first_ns, summary.last_ns):
                    stream = PagedQuery(
                        self._ready(),
                        self._bind("transcript_all", (tenant_id, ref.conversation_id, month), 1000),
                        timeout=self.config.request_timeout,
                    )
                    while not stream.exhausted:
                        for row in await stream.next_page():
                            messages += 1
                            record = MessageRecord.from_payload(row.payload, None)
                            deletes += [
                                delete("delete_id", tenant_id, row.message_id),
                                delete(
                                    "delete_transcript",
                                    tenant_id,
                                    ref.conversation_id,
                                    month,
                                    row.create_ns,
                                    row.message_id,
                                ),
                                delete(
                                    "delete_day",
                                    tenant_id,
                                    day_of(row.create_ns),
                                    shard,
                                    row.create_ns,
                                    row.message_id,
                                ),
                            ]
                            if record.training is not None:
                                deletes.append(
                                    delete(
                                        "delete_intent",
                                        tenant_id,
                                        record.training.intent,
                                        month,
                                        record.training.confidence,
                                        row.message_id,
                                    )
                                )
                conversations += 1
                deletes += [
                    delete("delete_summary", tenant_id, ref.conversation_id),
                    delete(
                        "delete_activity",
                        tenant_id,
                        day_of(summary.last_ns),
                        shard,
                        summary.last_ns,
                        ref.conversation_id,
                    ),
                ]
            deletes += [
                delete("delete_receipts", tenant_id, ref.conversation_id),
                delete("delete_user", tenant_id, user_id, ref.channel, ref.conversation_id),
            ]
            await asyncio.gather(*deletes)
        channels = [channel] if channel else [c for c in event_pb2.Channel.values() if c]
        await asyncio.gather(*(delete("delete_fence", tenant_id, c, user_id) for c in channels))
        return DeleteResult(messages, conversations)

    async def record_receipts(self, receipts: Sequence[ReceiptRecord]) -> None:
        # The write time is the watermark (microseconds), so a later receipt
        # always wins and a late or repeated one changes nothing.
        await asyncio.gather(
            *(
                self._run(
                    "put_read" if r.read else "put_delivered",
                    r.watermark_ns // 1000,
                    r.watermark_ns,
                    r.tenant_id,
                    r.conversation_id,
                )
                for r in receipts
            )
        )

    async def watermarks(self, tenant_id: str, conversation_id: str) -> Watermarks:
        rows = await self._run("get_receipts", tenant_id, conversation_id)
        if not rows:
            return Watermarks()
        return Watermarks(rows[0].delivered_ns or 0, rows[0].read_ns or 0)

    async def get_retention(self, tenant_id: str) -> RetentionRecord | None:
        rows = await self._run("get_retention", tenant_id)
        if not rows:
            return None
        row = rows[0]
        return RetentionRecord(
            tenant_id, row.message_ttl_seconds * NS + row.message_ttl_nanos, row.update_ns
        )

    async def set_retention(self, policy: RetentionRecord) -> None:
        seconds, nanos = divmod(policy.message_ttl_ns, NS)
        await self._run("put_retention", policy.tenant_id, seconds, nanos, policy.update_ns)


def _shutdown_connected(connecting: asyncio.Future[tuple[Cluster, Session]]) -> None:
    if not connecting.cancelled() and connecting.exception() is None:
        cluster = connecting.result()[0]
        threading.Thread(target=cluster.shutdown, name="chatlog-cassandra-close").start()
