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
import time
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
    """Parses through the NLU service. Parses asked for in the same turn of the
    event loop (the turns a dispatcher starts together) go as one
    ``ParseBatch``; a parse alone goes as ``Parse``, with no wait for company."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float = 3.0) -> None:
        self._stub = nlu_service_pb2_grpc.NluServiceStub(channel)
        self._timeout_s = timeout_s
        self._waiting: list[tuple[nlu_pb.ParseRequest, asyncio.Future[nlu_pb.ParseResponse]]] = []
        self._batches = True  # until the server says it has no ParseBatch
        self._flushes: set[asyncio.Task[None]] = set()

    async def parse(self, text: str, tenant_id: str) -> Understanding:
        request = nlu_pb.ParseRequest(text=text[:2000], tenant_id=tenant_id)
        future: asyncio.Future[nlu_pb.ParseResponse] = asyncio.get_running_loop().create_future()
        if not self._waiting:
            asyncio.get_running_loop().call_soon(self._flush)
        self._waiting.append((request, future))
        reply = await future
        return Understanding(
            intent=reply.intent,
            ranking=list(reply.intent_ranking),
            entities=list(reply.entities),
            model_version=reply.model_version,
            is_fallback=reply.is_fallback,
        )

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._send(waiting))
        self._flushes.add(task)

        def settled(task: asyncio.Task[None]) -> None:
            self._flushes.discard(task)
            # Whatever happened to the call, no caller is left waiting.
            error = None if task.cancelled() else task.exception()
            for _, future in waiting:
                if not future.done():
                    future.set_exception(NluUnavailable(f"NLU: {error!r}"))

        task.add_done_callback(settled)

    async def _send(
        self, waiting: list[tuple[nlu_pb.ParseRequest, asyncio.Future[nlu_pb.ParseResponse]]]
    ) -> None:
        if len(waiting) > 1 and self._batches:
            batch = nlu_pb.ParseBatchRequest(requests=[request for request, _ in waiting])
            try:
                replies = await self._stub.ParseBatch(batch, timeout=self._timeout_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self._batches = False
                if exc.code() not in _BATCH_REFUSALS:
                    _fail(waiting, exc)
                    return
                # One text the batch could not take: each alone, so only it fails.
            else:
                for (_, future), reply in zip(waiting, replies.responses, strict=True):
                    if not future.done():
                        future.set_result(reply)
                return
        await asyncio.gather(*(self._one(request, future) for request, future in waiting))

    async def _one(
        self, request: nlu_pb.ParseRequest, future: asyncio.Future[nlu_pb.ParseResponse]
    ) -> None:
        try:
            reply = await self._stub.Parse(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            _fail([(request, future)], exc)
        else:
            if not future.done():
                future.set_result(reply)


# A batch refused for one of its texts (or not served): the texts go one by one.
_BATCH_REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _fail(
    waiting: list[tuple[nlu_pb.ParseRequest, asyncio.Future[nlu_pb.ParseResponse]]],
    exc: grpc.aio.AioRpcError,
) -> None:
    error = NluUnavailable(f"NLU: {exc.code().name}: {exc.details()}")
    for _, future in waiting:
        if not future.done():
            future.set_exception(error)


class Chatlog(Protocol):
    async def append(self, messages: list[chatlog_pb.ChatMessage]) -> None: ...

    async def defer(self, receipts: list[chatlog_pb.Receipt]) -> None:
        """Hands receipts to the outbox's writer: durable on return, written later."""


# Messages per merged replay call (the chatlog takes up to 500).
REPLAY_BATCH = 200
# How often a writer looks for entries a dead writer left unacknowledged.
CLAIM_INTERVAL_S = 15.0

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
        self._dropped = {shard.outbox: shard.outbox_dropped for shard in self._shards}
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

    async def defer(self, receipts: list[chatlog_pb.Receipt]) -> None:
        by_shard: dict[str, list[chatlog_pb.Receipt]] = {}
        for receipt in receipts:
            user = UserId(receipt.user.tenant_id, int(receipt.user.channel), receipt.user.user_id)
            shard = self._shards[shard_of(user.member(), len(self._shards))]
            by_shard.setdefault(shard.outbox, []).append(receipt)
        if not by_shard:
            return
        pipe = self._redis.pipeline(transaction=False)
        for stream in by_shard:
            pipe.xlen(stream)
        lengths = await pipe.execute()
        pipe = self._redis.pipeline(transaction=False)
        for (stream, batch), length in zip(by_shard.items(), lengths, strict=True):
            if int(length) >= self._cap:
                # Full (a long chatlog outage): receipts are the first thing to give up.
                pipe.incr(self._dropped[stream])
                continue
            request = chatlog_pb.AppendMessagesRequest(receipts=batch)
            pipe.xadd(stream, {"r": request.SerializeToString()})
        await pipe.execute()

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
        # Entries this consumer was given but has not acknowledged exist only
        # after a start or a failure: only then are they looked for.
        recovering = True
        next_claim = 0.0
        while True:
            try:
                if not ready:
                    for stream in streams:
                        await self._ensure_group(stream)
                    ready = True
                entries: list[_Entry] = []
                if recovering:
                    entries = _entries(
                        await self._redis.xreadgroup(
                            self.GROUP, self._consumer, dict.fromkeys(streams, "0"), count=100
                        )
                    )
                    recovering = bool(entries)
                if not entries and time.monotonic() >= next_claim:
                    # A dead writer's entries, now and then (they wait 60 s anyway).
                    next_claim = time.monotonic() + CLAIM_INTERVAL_S
                    entries = await self._claim(streams)
                if not entries:
                    # New ones, waited for without cost.
                    entries = _entries(
                        await self._blocking.xreadgroup(
                            self.GROUP,
                            self._consumer,
                            dict.fromkeys(streams, ">"),
                            count=100,
                            block=block_ms,
                        )
                    )
                await self._deliver_many(entries)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                recovering = True
                _log.warning("outbox replay waiting for the chatlog", extra={"error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _claim(self, streams: list[str]) -> list[_Entry]:
        entries: list[_Entry] = []
        for stream in streams:
            claimed = await self._redis.xautoclaim(
                stream, self.GROUP, self._consumer, min_idle_time=60_000, count=100
            )
            entries += [(stream, entry_id, fields) for entry_id, fields in claimed[1]]
        return entries

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
                count = len(request.messages) + len(request.receipts) if request else 0
                merged_count = len(merged.messages) + len(merged.receipts)
                if end > start and merged_count + count > REPLAY_BATCH:
                    break
                if request:
                    merged.messages.extend(request.messages)
                    merged.receipts.extend(request.receipts)
                end += 1
            chunk = entries[start:end]
            # A merged write shows in the trace of its first message.
            first = chunk[0][2].get(b"t", b"").decode()
            try:
                if merged.messages or merged.receipts:
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
        pipe = self._redis.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, self.GROUP, *ids)
            pipe.xdel(stream, *ids)
        await pipe.execute()

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
