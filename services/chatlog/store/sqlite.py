"""The embedded default store: one SQLite file, so ``make run`` needs nothing installed.

SQLite's calls block, so they run in worker threads, never on the event
loop: one writer thread (SQLite has a single writer anyway, and one thread
makes every batch one transaction without lock retries) and a few reader
threads, each with its own connection. WAL mode lets the readers run while
the writer writes. ``synchronous=FULL``: an acknowledged append survives a
power cut, because the dialogue service drops the message from its queue once
we acknowledge it.

Retention: each message stores its expiry; reads hide expired rows at once
and ``maintain`` deletes them (and fixes the summaries of their
conversations) in small transactions.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from chatbot.chatlog.v1 import chatlog_service_pb2 as pb

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
)
from services.chatlog.stats import StatsAggregator, StatsRow
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

_log = get_logger("chatlog.sqlite")
_T = TypeVar("_T")

SCHEMA_VERSION = 1
FENCE_KEEP_NS = 30 * DAY_NS  # a lease token older than this protects nothing
_PURGE_CHUNK = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    tenant_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    channel INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    direction INTEGER NOT NULL,
    create_ns INTEGER NOT NULL,
    search_text TEXT NOT NULL,
    intent TEXT NOT NULL,
    is_fallback INTEGER NOT NULL,
    processing_ns INTEGER,
    train_intent TEXT,              -- NULL: not a training example
    train_confidence REAL,
    expire_ns INTEGER,              -- NULL: kept until deleted
    payload BLOB NOT NULL,          -- the ChatMessage as first appended
    PRIMARY KEY (tenant_id, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_conversation
    ON messages (tenant_id, conversation_id, create_ns, message_id);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (tenant_id, create_ns, message_id);
CREATE INDEX IF NOT EXISTS messages_by_user ON messages (tenant_id, user_id);
CREATE INDEX IF NOT EXISTS messages_for_training
    ON messages (tenant_id, train_confidence, message_id) WHERE train_intent IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages (expire_ns) WHERE expire_ns IS NOT NULL;

CREATE TABLE IF NOT EXISTS conversations (
    tenant_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    channel INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL,
    last_message_id TEXT NOT NULL,
    message_count INTEGER NOT NULL,
    last_preview TEXT NOT NULL,
    last_direction INTEGER NOT NULL,
    last_intent TEXT NOT NULL,
    last_intent_confidence REAL NOT NULL,
    last_intent_ns INTEGER NOT NULL,
    last_intent_message_id TEXT NOT NULL,
    has_fallback INTEGER NOT NULL,
    handed_off INTEGER NOT NULL,
    intents TEXT NOT NULL,          -- JSON array of the inbound messages' intents
    expire_ns INTEGER,
    PRIMARY KEY (tenant_id, conversation_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversations_by_activity
    ON conversations (tenant_id, last_ns DESC, conversation_id DESC);
CREATE INDEX IF NOT EXISTS conversations_by_user ON conversations (tenant_id, user_id);

CREATE TABLE IF NOT EXISTS fences (
    tenant_id TEXT NOT NULL,
    channel INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    fencing_token INTEGER NOT NULL,
    update_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, channel, user_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS receipts (
    tenant_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    channel INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    delivered_ns INTEGER NOT NULL,  -- 0: none yet
    read_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, conversation_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS receipts_by_user ON receipts (tenant_id, user_id);

CREATE TABLE IF NOT EXISTS retention_policies (
    tenant_id TEXT PRIMARY KEY,
    message_ttl_seconds INTEGER NOT NULL,  -- seconds and nanos: up to 10000 years, as
    message_ttl_nanos INTEGER NOT NULL,    -- a Duration allows, overflow int64 nanoseconds
    update_ns INTEGER NOT NULL
);
"""

_SUMMARY_COLUMNS = (
    "tenant_id, conversation_id, channel, user_id, first_ns, last_ns, last_message_id, "
    "message_count, last_preview, last_direction, last_intent, last_intent_confidence, "
    "last_intent_ns, last_intent_message_id, has_fallback, handed_off, intents, expire_ns"
)
_NOT_EXPIRED = "(expire_ns IS NULL OR expire_ns > :now)"


def _summary(row: Sequence[Any]) -> ConversationSummary:
    return ConversationSummary(
        tenant_id=row[0],
        conversation_id=row[1],
        channel=row[2],
        user_id=row[3],
        first_ns=row[4],
        last_ns=row[5],
        last_message_id=row[6],
        message_count=row[7],
        last_preview=row[8],
        last_direction=row[9],
        last_intent=row[10],
        last_intent_confidence=row[11],
        last_intent_ns=row[12],
        last_intent_message_id=row[13],
        has_fallback=bool(row[14]),
        handed_off=bool(row[15]),
        intents=frozenset(json.loads(row[16])),
        expire_ns=row[17],
    )


def _summary_values(s: ConversationSummary) -> tuple[Any, ...]:
    return (
        s.tenant_id,
        s.conversation_id,
        s.channel,
        s.user_id,
        s.first_ns,
        s.last_ns,
        s.last_message_id,
        s.message_count,
        s.last_preview,
        s.last_direction,
        s.last_intent,
        s.last_intent_confidence,
        s.last_intent_ns,
        s.last_intent_message_id,
        int(s.has_fallback),
        int(s.handed_off),
        json.dumps(sorted(s.intents)),
        s.expire_ns,
    )


@contextmanager
def _transaction(con: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front: a read-then-write transaction
    # can then never fail half-way with SQLITE_BUSY.
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


class SqliteStore:
    name = "sqlite"

    def __init__(self, path: Path, *, busy_timeout: float = 5.0, readers: int = 2) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="chatlog-sqlite-writer")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="chatlog-sqlite-reader")

    # ------------------------------------------------------------------ plumbing

    def _connection(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # transactions are explicit (_transaction)
                check_same_thread=False,  # only to close it from close(); used by one thread
            )
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            self._local.con = con
            with self._lock:
                self._connections.append(con)
        return con

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def call() -> _T:
            try:
                return fn(self._connection())
            except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
                raise  # our bugs, not an unavailable store
            except sqlite3.Error as exc:  # locked past the busy timeout, I/O error, disk full
                raise StoreUnavailable(f"SQLite at {self.path}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._run(self._writer, fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._run(self._readers, fn)

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {self.path.parent}: {exc}") from exc

        def create(con: sqlite3.Connection) -> None:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"{self.path} has schema version {version}; this server knows "
                    f"{SCHEMA_VERSION}: run a newer chatlog"
                )
            con.executescript(_SCHEMA)
            con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

        await self._write(create)
        _log.info("sqlite store open", extra={"path": str(self.path)})

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._writer.shutdown)
        await loop.run_in_executor(None, self._readers.shutdown)
        with self._lock:
            for con in self._connections:
                con.close()
            self._connections.clear()

    async def ping(self) -> None:
        await self._read(lambda con: con.execute("SELECT count(*) FROM retention_policies"))

    # ------------------------------------------------------------------ writes

    async def append(self, records: Sequence[MessageRecord]) -> list[bool]:
        return await self._write(lambda con: self._append(con, records))

    def _append(self, con: sqlite3.Connection, records: Sequence[MessageRecord]) -> list[bool]:
        # One transaction for the batch: an error rolls all of it back, which
        # the contract allows ("some messages may be stored") and retries need.
        created: list[bool] = []
        with _transaction(con):
            for index, record in enumerate(records):
                self._check_fence(con, index, record)
                cursor = con.execute(
                    "INSERT OR IGNORE INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        record.tenant_id,
                        record.message_id,
                        record.conversation_id,
                        record.channel,
                        record.user_id,
                        record.direction,
                        record.create_ns,
                        record.search_text,
                        record.intent,
                        int(record.is_fallback),
                        record.processing_ns,
                        record.training.intent if record.training else None,
                        record.training.confidence if record.training else None,
                        record.expire_ns,
                        record.payload,
                    ),
                )
                is_new = cursor.rowcount == 1
                created.append(is_new)
                if is_new:
                    self._add_to_summary(con, index, record)
        return created

    async def record_receipts(self, receipts: Sequence[ReceiptRecord]) -> None:
        def put(con: sqlite3.Connection) -> None:
            with _transaction(con):
                con.executemany(
                    "INSERT INTO receipts VALUES (?,?,?,?,?,?) "
                    "ON CONFLICT (tenant_id, conversation_id) DO UPDATE SET "
                    "delivered_ns=max(delivered_ns, excluded.delivered_ns), "
                    "read_ns=max(read_ns, excluded.read_ns)",
                    [
                        (r.tenant_id, r.conversation_id, r.channel, r.user_id,
                         0 if r.read else r.watermark_ns, r.watermark_ns if r.read else 0)
                        for r in receipts
                    ],
                )  # fmt: skip

        await self._write(put)

    async def watermarks(self, tenant_id: str, conversation_id: str) -> Watermarks:
        def get(con: sqlite3.Connection) -> Watermarks:
            row = con.execute(
                "SELECT delivered_ns, read_ns FROM receipts "
                "WHERE tenant_id=? AND conversation_id=?",
                (tenant_id, conversation_id),
            ).fetchone()
            return Watermarks(row[0], row[1]) if row else Watermarks()

        return await self._read(get)

    @staticmethod
    def _check_fence(con: sqlite3.Connection, index: int, record: MessageRecord) -> None:
        token = record.fencing_token
        if not token:
            return
        key = (record.tenant_id, record.channel, record.user_id)
        row = con.execute(
            "SELECT fencing_token FROM fences WHERE tenant_id=? AND channel=? AND user_id=?", key
        ).fetchone()
        if row is not None and row[0] > token:
            raise StaleFencingToken(
                f"messages[{index}].fencing_token {token} is lower than {row[0]}, already "
                "stored for this user: the writer's lease has passed to another worker"
            )
        if row is None or row[0] < token:
            con.execute(
                "INSERT OR REPLACE INTO fences VALUES (?,?,?,?,?)",
                (*key, token, time.time_ns()),
            )

    @staticmethod
    def _load_summary(
        con: sqlite3.Connection, tenant_id: str, conversation_id: str
    ) -> ConversationSummary | None:
        row = con.execute(
            f"SELECT {_SUMMARY_COLUMNS} FROM conversations WHERE tenant_id=? AND conversation_id=?",
            (tenant_id, conversation_id),
        ).fetchone()
        return _summary(row) if row else None

    @staticmethod
    def _save_summary(con: sqlite3.Connection, summary: ConversationSummary) -> None:
        con.execute(
            f"INSERT OR REPLACE INTO conversations ({_SUMMARY_COLUMNS}) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            _summary_values(summary),
        )

    def _add_to_summary(self, con: sqlite3.Connection, index: int, record: MessageRecord) -> None:
        summary = self._load_summary(con, record.tenant_id, record.conversation_id)
        if summary is None:
            summary = ConversationSummary.new(record)
        elif (summary.channel, summary.user_id) != (record.channel, record.user_id):
            raise InvalidArgument(
                f"messages[{index}].conversation_id {record.conversation_id!r} belongs to "
                "another user (a conversation's messages all have the same user)"
            )
        self._save_summary(con, summary.apply(record, count=True))

    async def delete_user(
        self, tenant_id: str, user_id: str, channel: int, now_ns: int
    ) -> DeleteResult:
        def delete(con: sqlite3.Connection) -> DeleteResult:
            where = "tenant_id=? AND user_id=?" + (" AND channel=?" if channel else "")
            args: tuple[Any, ...] = (tenant_id, user_id, *((channel,) if channel else ()))
            with _transaction(con):
                gone = con.execute(
                    f"DELETE FROM messages WHERE {where} RETURNING expire_ns", args
                ).fetchall()
                conversations = con.execute(
                    f"DELETE FROM conversations WHERE {where} RETURNING expire_ns", args
                ).fetchall()
                con.execute(f"DELETE FROM fences WHERE {where}", args)
                con.execute(f"DELETE FROM receipts WHERE {where}", args)

            # Expired rows not purged yet were already invisible: not counted.
            def live(rows: list[Any]) -> int:
                return sum(1 for (expire,) in rows if expire is None or expire > now_ns)

            return DeleteResult(live(gone), live(conversations))

        return await self._write(delete)

    async def get_retention(self, tenant_id: str) -> RetentionRecord | None:
        def get(con: sqlite3.Connection) -> RetentionRecord | None:
            row = con.execute(
                "SELECT message_ttl_seconds, message_ttl_nanos, update_ns FROM retention_policies "
                "WHERE tenant_id=?",
                (tenant_id,),
            ).fetchone()
            return RetentionRecord(tenant_id, row[0] * NS + row[1], row[2]) if row else None

        return await self._read(get)

    async def set_retention(self, policy: RetentionRecord) -> None:
        def put(con: sqlite3.Connection) -> None:
            con.execute(
                "INSERT OR REPLACE INTO retention_policies VALUES (?,?,?,?)",
                (policy.tenant_id, *divmod(policy.message_ttl_ns, NS), policy.update_ns or 0),
            )

        await self._write(put)

    async def maintain(self, now_ns: int) -> None:
        while await self._write(lambda con: self._purge_some(con, now_ns)):
            pass  # small transactions: appends get the lock between them

    def _purge_some(self, con: sqlite3.Connection, now_ns: int) -> bool:
        with _transaction(con):
            gone = con.execute(
                "DELETE FROM messages WHERE (tenant_id, message_id) IN ("
                "  SELECT tenant_id, message_id FROM messages"
                "  WHERE expire_ns IS NOT NULL AND expire_ns <= ? LIMIT ?)"
                " RETURNING tenant_id, conversation_id",
                (now_ns, _PURGE_CHUNK),
            ).fetchall()
            for tenant_id, conversation_id in set(gone):
                self._rebuild_summary(con, tenant_id, conversation_id)
            con.execute(
                "DELETE FROM conversations WHERE expire_ns IS NOT NULL AND expire_ns <= ?",
                (now_ns,),
            )
            con.execute("DELETE FROM fences WHERE update_ns < ?", (now_ns - FENCE_KEEP_NS,))
        if gone:
            _log.info("purged expired messages", extra={"count": len(gone)})
        return len(gone) == _PURGE_CHUNK

    def _rebuild_summary(
        self, con: sqlite3.Connection, tenant_id: str, conversation_id: str
    ) -> None:
        summary: ConversationSummary | None = None
        rows = con.execute(
            "SELECT payload, expire_ns FROM messages WHERE tenant_id=? AND conversation_id=? "
            "ORDER BY create_ns, message_id",
            (tenant_id, conversation_id),
        )
        for payload, expire_ns in rows:
            record = MessageRecord.from_payload(payload, expire_ns)
            summary = (summary or ConversationSummary.new(record)).apply(record, count=True)
        if summary is None:
            con.execute(
                "DELETE FROM conversations WHERE tenant_id=? AND conversation_id=?",
                (tenant_id, conversation_id),
            )
        else:
            self._save_summary(con, summary)

    # ------------------------------------------------------------------ reads

    async def list_conversations(self, query: ConversationQuery) -> ConversationPage:
        def run(con: sqlite3.Connection) -> ConversationPage:
            where = ["tenant_id = :tenant", _NOT_EXPIRED]
            args: dict[str, Any] = {"tenant": query.tenant_id, "now": query.now_ns}
            if query.after is not None:
                where.append("(last_ns, conversation_id) < (:after_ns, :after_id)")
                args.update(after_ns=query.after[0], after_id=query.after[1])
            if query.channel:
                where.append("channel = :channel")
                args["channel"] = query.channel
            if query.start_ns is not None:
                where.append("last_ns >= :start")
                args["start"] = query.start_ns
            if query.end_ns is not None:
                where.append("first_ns < :end")
                args["end"] = query.end_ns
            if query.intent:
                where.append("EXISTS (SELECT 1 FROM json_each(intents) WHERE value = :intent)")
                args["intent"] = query.intent
            if query.has_fallback is not None:
                where.append("has_fallback = :fallback")
                args["fallback"] = int(query.has_fallback)
            if query.handed_off is not None:
                where.append("handed_off = :handed_off")
                args["handed_off"] = int(query.handed_off)
            if query.user_id:
                where.append("user_id = :user")
                args["user"] = query.user_id
            args["limit"] = query.limit + 1
            rows = con.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM conversations WHERE {' AND '.join(where)} "
                "ORDER BY last_ns DESC, conversation_id DESC LIMIT :limit",
                args,
            ).fetchall()
            found = [_summary(row) for row in rows[: query.limit]]
            more = len(rows) > query.limit
            return ConversationPage(found, found[-1].key if more and found else None)

        return await self._read(run)

    async def scan_transcript(self, query: TranscriptQuery) -> TranscriptScan:
        def run(con: sqlite3.Connection) -> TranscriptScan:
            sign, order = (">", "ASC") if query.ascending else ("<", "DESC")
            where = ["tenant_id = :tenant", "conversation_id = :conversation", _NOT_EXPIRED]
            args: dict[str, Any] = {
                "tenant": query.tenant_id,
                "conversation": query.conversation_id,
                "now": query.now_ns,
                "limit": query.limit + 1,
            }
            if query.after is not None:
                where.append(f"(create_ns, message_id) {sign} (:after_ns, :after_id)")
                args.update(after_ns=query.after[0], after_id=query.after[1])
            rows = con.execute(
                f"SELECT create_ns, message_id, payload FROM messages WHERE {' AND '.join(where)} "
                f"ORDER BY create_ns {order}, message_id {order} LIMIT :limit",
                args,
            ).fetchall()
            found = [StoredMessage((ns, mid), payload) for ns, mid, payload in rows]
            return TranscriptScan(found[: query.limit], len(found) > query.limit)

        return await self._read(run)

    async def search(self, query: SearchQuery) -> SearchPage:
        def run(con: sqlite3.Connection) -> SearchPage:
            where = [
                "tenant_id = :tenant",
                "create_ns >= :start",
                "create_ns < :end",
                _NOT_EXPIRED,
            ]
            args: dict[str, Any] = {
                "tenant": query.tenant_id,
                "start": query.start_ns,
                "end": query.end_ns,
                "now": query.now_ns,
                "limit": query.limit + 1,
            }
            for i, word in enumerate(query.words):
                where.append(f"instr(search_text, :w{i}) > 0")
                args[f"w{i}"] = word
            if query.after is not None:
                where.append("(create_ns, message_id) < (:after_ns, :after_id)")
                args.update(after_ns=query.after[0], after_id=query.after[1])
            if query.direction:
                where.append("direction = :direction")
                args["direction"] = query.direction
            if query.channel:
                where.append("channel = :channel")
                args["channel"] = query.channel
            rows = con.execute(
                f"SELECT create_ns, message_id, payload FROM messages "
                f"INDEXED BY messages_by_time WHERE {' AND '.join(where)} "
                "ORDER BY create_ns DESC, message_id DESC LIMIT :limit",
                args,
            ).fetchall()
            found = [StoredMessage((ns, mid), payload) for ns, mid, payload in rows]
            page = found[: query.limit]
            return SearchPage(page, page[-1].key if len(found) > query.limit else None)

        return await self._read(run)

    async def stats(self, query: StatsQuery, into: StatsAggregator) -> None:
        def run(con: sqlite3.Connection) -> None:
            where = ["tenant_id = :tenant", "create_ns >= :start", "create_ns < :end", _NOT_EXPIRED]
            args: dict[str, Any] = {
                "tenant": query.tenant_id,
                "start": query.start_ns,
                "end": query.end_ns,
                "now": query.now_ns,
            }
            if query.channel:
                where.append("channel = :channel")
                args["channel"] = query.channel
            rows = con.execute(
                "SELECT create_ns, direction, conversation_id, channel, user_id, intent, "
                f"is_fallback, processing_ns FROM messages INDEXED BY messages_by_time "
                f"WHERE {' AND '.join(where)}",
                args,
            )
            for row in rows:
                into.add(
                    StatsRow(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7])
                )

        await self._read(run)

    async def export(self, query: ExportQuery) -> ExportResult:
        def run(con: sqlite3.Connection) -> ExportResult:
            where = ["tenant_id = :tenant", "train_intent IS NOT NULL", _NOT_EXPIRED]
            args: dict[str, Any] = {
                "tenant": query.tenant_id,
                "now": query.now_ns,
                "limit": query.limit + 1,
            }
            if query.intents:
                names = sorted(query.intents)
                where.append(f"train_intent IN ({','.join(f':i{n}' for n in range(len(names)))})")
                args.update({f"i{n}": name for n, name in enumerate(names)})
            if query.min_confidence is not None:
                where.append("train_confidence >= :min")
                args["min"] = query.min_confidence
            if query.max_confidence is not None:
                where.append("train_confidence <= :max")
                args["max"] = query.max_confidence
            if query.start_ns is not None:
                where.append("create_ns >= :start")
                args["start"] = query.start_ns
            if query.end_ns is not None:
                where.append("create_ns < :end")
                args["end"] = query.end_ns
            rows = con.execute(
                "SELECT message_id, conversation_id, create_ns, train_intent, train_confidence, "
                f"payload FROM messages WHERE {' AND '.join(where)} "
                "ORDER BY train_confidence ASC, message_id ASC LIMIT :limit",
                args,
            ).fetchall()
            result = []
            for message_id, conversation_id, create_ns, intent, confidence, payload in rows:
                message = pb.ChatMessage.FromString(payload)
                result.append(
                    ExportRow(
                        message_id=message_id,
                        conversation_id=conversation_id,
                        create_ns=create_ns,
                        text=message.text,
                        intent=intent,
                        confidence=confidence,
                        entities=tuple(message.entities),
                        is_fallback=message.is_fallback,
                        model_version=message.model_version,
                    )
                )
            return ExportResult(result[: query.limit], len(result) > query.limit)

        return await self._read(run)
