"""The dialogue service's view of the NLU and chatlog services.

The chatlog is written through an outbox, Redis streams (one per shard)
that a writer in every worker process drains in merged batches. On a single Redis a finished
item's records enter it in the same atomic step that completes the item,
while the lease is still current; otherwise the records are appended
directly and go to the outbox only when the chatlog cannot take them (down,
slow). Either way a chatlog outage delays no user and loses no message.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.chatlog.v1 import chatlog_service_pb2_grpc
from chatbot.common.v1 import nlu_result_pb2
from chatbot.nlu.v1 import nlu_service_pb2 as nlu_pb
from chatbot.nlu.v1 import nlu_service_pb2_grpc
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from mesh import get_logger, tracing
from services.dialogue import metrics
from services.dialogue.keys import ShardKeys, UserId, all_shards, shard_of
from services.dialogue.store import Fenced, RedisClient

_log = get_logger("dialogue.clients")

_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
}


class NluUnavailable(Exception):
    pass


@dataclass(frozen=True)
class Understanding:
    intent: nlu_result_pb2.Intent
    ranking: list[nlu_result_pb2.Intent] = field(default_factory=list)
    entities: list[nlu_result_pb2.Entity] = field(default_factory=list)
    model_version: str = ""
    is_fallback: bool = False


class Nlu(Protocol):
    async def parse(self, text: str, tenant_id: str) -> Understanding: ...


class GrpcNlu:
    def __init__(self, channel: grpc.aio.Channel, timeout_s: float = 3.0) -> None:
        self._stub = nlu_service_pb2_grpc.NluServiceStub(channel)
        self._timeout_s = timeout_s

    async def parse(self, text: str, tenant_id: str) -> Understanding:
        try:
            reply = await self._stub.Parse(
                nlu_pb.ParseRequest(text=text[:2000], tenant_id=tenant_id), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise NluUnavailable(f"NLU: {exc.code().name}: {exc.details()}") from exc
        return Understanding(
            intent=reply.intent,
            ranking=list(reply.intent_ranking),
            entities=list(reply.entities),
            model_version=reply.model_version,
            is_fallback=reply.is_fallback,
        )


class Chatlog(Protocol):
    async def append(self, messages: list[chatlog_pb.ChatMessage]) -> None: ...


# Messages per merged replay call (the chatlog takes up to 500).
REPLAY_BATCH = 200

# An outbox entry as read: (stream, entry id, fields).
_Entry = tuple[str, bytes, dict[bytes, bytes]]


class ChatlogOutbox:
    """Appends to the chatlog, or to the Redis outbox when it cannot."""

    GROUP = "replayers"

    def __init__(
        self,
        channel: grpc.aio.Channel,
        redis: RedisClient,
        consumer: str,
        timeout_s: float = 2.0,
        *,
        blocking: RedisClient | None = None,
        shards: int = 1,
        max_entries: int = 1_000_000,
    ) -> None:
        self._stub = chatlog_service_pb2_grpc.ChatlogServiceStub(channel)
        self._redis: Any = redis
        self._blocking: Any = blocking or redis
        self._consumer = consumer
        self._timeout_s = timeout_s
        self._shards = all_shards(max(1, shards))
        self.streams = [shard.outbox for shard in self._shards]
        self._cap = max(1, max_entries // len(self._shards))
        # One read waits on every stream of a single Redis; under Redis Cluster
        # (streams on different slots) each stream has its own reader.
        if isinstance(redis, RedisCluster):
            self._groups = [[stream] for stream in self.streams]
        else:
            self._groups = [self.streams]

    def _shard_for(self, messages: list[chatlog_pb.ChatMessage]) -> ShardKeys:
        first = messages[0]
        user = UserId(first.user.tenant_id, int(first.user.channel), first.user.user_id)
        return self._shards[shard_of(user.member(), len(self._shards))]

    async def append(self, messages: list[chatlog_pb.ChatMessage]) -> None:
        request = chatlog_pb.AppendMessagesRequest(messages=messages)
        try:
            await self._stub.AppendMessages(request, timeout=self._timeout_s)
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise Fenced(f"chatlog refused a stale fencing token: {exc.details()}") from exc
            if exc.code() not in _TRANSIENT:
                raise
            _log.warning(
                "chatlog unavailable: writing to the outbox", extra={"code": exc.code().name}
            )
        # Checked under the lease already; replays are not fenced again.
        for message in request.messages:
            message.fencing_token = 0
        shard = self._shard_for(messages)
        # A full outbox (a long outage) drops and counts rather than filling Redis.
        if int(await self._redis.xlen(shard.outbox)) >= self._cap:
            await self._redis.incr(shard.outbox_dropped)
            _log.error("chatlog outbox full: records dropped", extra={"records": len(messages)})
            return
        await self._redis.xadd(shard.outbox, {"r": request.SerializeToString()})

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self._redis.xgroup_create(stream, self.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def replay_forever(self, block_ms: int = 30_000) -> None:
        """Delivers buffered writes; blocks on the streams while there are none."""
        await asyncio.gather(*(self._replay(group, block_ms) for group in self._groups))

    async def _replay(self, streams: list[str], block_ms: int) -> None:
        backoff = 0.5
        ready = False
        while True:
            try:
                if not ready:
                    for stream in streams:
                        await self._ensure_group(stream)
                    ready = True
                entries = await self._read(streams, block_ms)
                await self._deliver_many(entries)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("outbox replay waiting for the chatlog", extra={"error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _read(self, streams: list[str], block_ms: int) -> list[_Entry]:
        # Ours first (delivered, not yet acknowledged), then a dead replayer's,
        # then new ones, waiting for them without cost.
        mine = await self._redis.xreadgroup(
            self.GROUP, self._consumer, dict.fromkeys(streams, "0"), count=100
        )
        entries = _entries(mine)
        if entries:
            return entries
        for stream in streams:
            claimed = await self._redis.xautoclaim(
                stream, self.GROUP, self._consumer, min_idle_time=60_000, count=100
            )
            entries += [(stream, entry_id, fields) for entry_id, fields in claimed[1]]
        if entries:
            return entries
        fresh = await self._blocking.xreadgroup(
            self.GROUP, self._consumer, dict.fromkeys(streams, ">"), count=100, block=block_ms
        )
        return _entries(fresh)

    async def _deliver_many(self, entries: list[_Entry]) -> None:
        """Catches up in few calls: entries are merged into requests of up to
        ``REPLAY_BATCH`` messages (appends are idempotent by message id)."""
        start = 0
        while start < len(entries):
            merged = chatlog_pb.AppendMessagesRequest()
            end = start
            while end < len(entries):
                raw = entries[end][2].get(b"r")
                request = chatlog_pb.AppendMessagesRequest.FromString(raw) if raw else None
                count = len(request.messages) if request else 0
                if end > start and len(merged.messages) + count > REPLAY_BATCH:
                    break
                if request:
                    merged.messages.extend(request.messages)
                end += 1
            chunk = entries[start:end]
            # A merged write shows in the trace of its first message.
            first = chunk[0][2].get(b"t", b"").decode()
            try:
                if merged.messages:
                    with tracing.span(
                        "chatlog.outbox.write",
                        parent={"traceparent": first} if first else None,
                        kind="producer",
                        attributes={"chatbot.records": len(merged.messages)},
                    ):
                        await self._stub.AppendMessages(merged, timeout=self._timeout_s * 5)
                    metrics.CHATLOG_BATCH.observe(len(merged.messages))
                    metrics.CHATLOG_WRITTEN.inc(len(merged.messages))
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _TRANSIENT:
                    raise
                # One bad entry must not hold back the others: one by one.
                for entry in chunk:
                    await self._deliver(*entry)
            else:
                await self._done(chunk)
            start = end

    async def _done(self, entries: list[_Entry]) -> None:
        by_stream: dict[str, list[bytes]] = {}
        for stream, entry_id, _ in entries:
            by_stream.setdefault(stream, []).append(entry_id)
        for stream, ids in by_stream.items():
            await self._redis.xack(stream, self.GROUP, *ids)
            await self._redis.xdel(stream, *ids)

    async def _deliver(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        raw = fields.get(b"r")
        if raw is not None:
            request = chatlog_pb.AppendMessagesRequest.FromString(raw)
            try:
                try:
                    await self._stub.AppendMessages(request, timeout=self._timeout_s * 5)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                        raise
                    # Entries enter the outbox only under a current lease, so a
                    # refusal means a later turn's records were delivered first
                    # (another writer): these are not stale, keep them unfenced.
                    for message in request.messages:
                        message.fencing_token = 0
                    await self._stub.AppendMessages(request, timeout=self._timeout_s * 5)
                metrics.CHATLOG_WRITTEN.inc(len(request.messages))
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _TRANSIENT:
                    raise
                # Anything else will never succeed: keep the record in the log, move on.
                _log.error(
                    "outbox entry refused by the chatlog",
                    extra={"code": exc.code().name, "details": exc.details()},
                )
        await self._done([(stream, entry_id, fields)])

    async def pending(self) -> int:
        return sum([int(await self._redis.xlen(stream)) for stream in self.streams])


def _entries(reply: Any) -> list[_Entry]:
    """XREADGROUP's reply, flattened; stream names as text."""
    out: list[_Entry] = []
    for stream, batch in reply or []:
        name = stream.decode() if isinstance(stream, bytes) else str(stream)
        out += [(name, entry_id, fields) for entry_id, fields in batch]
    return out
