"""Everything the dialogue service keeps in Redis, behind one class.

The ordering and once-only guarantees rest here: deduplicated submission, a
per-user queue, a lease with a fencing token, and scripts that refuse any
step of a worker whose lease is no longer current.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.dialogue import scripts
from services.dialogue.keys import (
    ShardKeys,
    TenantKeys,
    UserId,
    UserKeys,
    all_shards,
    shard_of,
)

RedisClient = Redis | RedisCluster


class Fenced(Exception):
    """This worker's lease is no longer current: it must stop touching the user."""


class SubmitStatus(Enum):
    ACCEPTED = 1
    DUPLICATE = 2


@dataclass(frozen=True)
class QueueItem:
    """One entry of a user's queue: an event, or an agent's message to send."""

    item_id: str
    kind: str  # "event" or "agent"
    payload: bytes
    enqueue_ms: int
    replay: bool = False
    # The W3C trace context of the submission, so a trace covers the queue wait.
    traceparent: str = ""
    # The event's own time (ms): the queue keeps a user's items in this order.
    # 0: no time of its own (queued at the end, and nothing goes before it).
    order_ms: int = 0

    def encode(self) -> str:
        return json.dumps(
            {
                "i": self.item_id,
                "k": self.kind,
                "p": base64.b64encode(self.payload).decode(),
                "t": self.enqueue_ms,
                "r": self.replay,
                "tp": self.traceparent,
                "o": self.order_ms,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, raw: str | bytes) -> QueueItem:
        data = json.loads(raw)
        return cls(
            item_id=str(data["i"]),
            kind=str(data["k"]),
            payload=base64.b64decode(data["p"]),
            enqueue_ms=int(data["t"]),
            replay=bool(data.get("r")),
            traceparent=str(data.get("tp") or ""),
            order_ms=int(data.get("o") or 0),
        )


@dataclass(frozen=True)
class Hold:
    """Come back in ``seconds``: the head is still inside the reorder window."""

    seconds: float


@dataclass
class LeaseState:
    """What one turn changes about its lease as it goes."""

    # The next ``complete`` also gives the lease up: the turn's last item.
    release_on_complete: bool = False
    released: bool = False
    # ``time.monotonic()`` until which the lease is surely this worker's: the
    # moment before Redis last confirmed it, plus its time to live.
    valid_until: float = 0.0


@dataclass(frozen=True)
class Lease:
    user: UserId
    keys: UserKeys
    token: int
    value: str
    state: LeaseState = field(default_factory=LeaseState, compare=False)


@dataclass(frozen=True)
class Head:
    raw: str
    item: QueueItem
    # Attempts started before this one (this one is counted already).
    attempts: int
    replies_sent: int
    slots: dict[str, str]
    handoff: dict[str, str]


@dataclass(frozen=True)
class Acquired:
    """The user's lease, and the head of their queue loaded with it."""

    lease: Lease
    head: Head | None


@dataclass(frozen=True)
class DeadLetterRecord:
    dead_letter_id: str
    user: UserId
    item: QueueItem
    attempts: int
    last_error: str
    first_failure_ms: int
    last_failure_ms: int
    # Replies of the item sent before it failed: a replay sends only the rest.
    replies_sent: int = 0

    def encode(self) -> str:
        return json.dumps(
            {
                "id": self.dead_letter_id,
                "u": self.user.member(),
                "e": self.item.encode(),
                "a": self.attempts,
                "err": self.last_error,
                "f": self.first_failure_ms,
                "l": self.last_failure_ms,
                "s": self.replies_sent,
            }
        )

    @classmethod
    def decode(cls, raw: str | bytes) -> DeadLetterRecord:
        data = json.loads(raw)
        return cls(
            dead_letter_id=data["id"],
            user=UserId.from_member(data["u"]),
            item=QueueItem.decode(data["e"]),
            attempts=int(data["a"]),
            last_error=str(data["err"]),
            first_failure_ms=int(data["f"]),
            last_failure_ms=int(data["l"]),
            replies_sent=int(data.get("s") or 0),
        )


@dataclass(frozen=True)
class DeadLetterCursor:
    """Where a listing of dead letters stopped: the last entry's score and id."""

    score: float
    dead_letter_id: str


@dataclass(frozen=True)
class UserState:
    queue_length: int
    lease_holder: str
    fencing_token: int
    lease_ttl_ms: int
    slots: dict[str, str]
    handoff: dict[str, str]
    last: dict[str, str]
    dead_letter_count: int


@dataclass
class StoreSettings:
    holder: str
    lease_ms: int = 10_000
    dedupe_ttl_s: int = 48 * 3600
    result_ttl_s: int = 3600
    slot_ttl_s: int = 24 * 3600
    # A user not seen progressing for this long is checked by the reaper.
    stall_grace_s: float = 5.0
    # On evidence that a user's deliveries are being retried or overtaking each
    # other, a fresh event waits until this long after its own time before a
    # worker starts on it, so an earlier one still on its way goes first.
    reorder_window_ms: int = 0
    # How long that evidence lasts after the last repeated or overtaken delivery.
    reorder_evidence_s: int = 30
    # Shards of the ready list, the active index and the chatlog outbox. Raise
    # it freely; lowering it strands the users of the shards left out.
    shards: int = 1
    # How long a user's fence counter, last event, hand-off state and dead
    # letter count outlive the user's last activity.
    state_ttl_s: int = 30 * 24 * 3600
    # Dead letters kept per tenant; beyond it the oldest failures go.
    dead_letters_max: int = 10_000
    # Entries the chatlog outbox holds (over all shards) before records are
    # dropped (and counted) rather than fill Redis during a long outage.
    outbox_max: int = 1_000_000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    """A Lua script's HGETALL reply (a flat list) as a dict."""
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def _text_map(mapping: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in mapping.items()}


def _head_from(raw: Any, attempts: Any, sent: Any, slots: Any, handoff: Any) -> Head:
    """A head as the scripts return it (ACQUIRE, LOAD_HEAD)."""
    text = _text(raw)
    return Head(
        text, QueueItem.decode(text), int(attempts), int(sent), _pairs(slots), _pairs(handoff)
    )


@dataclass
class ReadyGroup:
    """Ready lists one blocking pop can wait on together: every shard on a
    single Redis, one shard per pop under Redis Cluster (keys of different
    slots cannot share a command). Each pop starts at the list after the one
    served last: round robin over the lists that have users, so a busy shard
    never keeps another waiting."""

    keys: list[str]
    turn: int = 0

    def rotated(self) -> list[str]:
        return self.keys[self.turn :] + self.keys[: self.turn]

    def served(self, key: Any) -> None:
        self.turn = (self.keys.index(_text(key)) + 1) % len(self.keys)


class DialogueStore:
    def __init__(
        self, redis: RedisClient, settings: StoreSettings, *, blocking: RedisClient | None = None
    ) -> None:
        # redis-py's return types are unions of bytes/str/awaitables; we use bytes.
        self.redis: Any = redis
        # Blocking pops wait longer than a normal command's time-out.
        self.blocking: Any = blocking or redis
        self.settings = settings
        # On a single Redis every key lives on one node, so the scripts also
        # index and schedule users themselves; a cluster needs separate steps.
        self.single_node = not isinstance(redis, RedisCluster)
        self.shards = all_shards(max(1, settings.shards))
        self.outbox_cap = max(1, settings.outbox_max // len(self.shards))
        self._lease_s = settings.lease_ms / 1000
        self._submit = redis.register_script(scripts.SUBMIT)
        self._acquire = redis.register_script(scripts.ACQUIRE)
        self._renew = redis.register_script(scripts.RENEW)
        self._load_head = redis.register_script(scripts.LOAD_HEAD)
        self._mark_sent = redis.register_script(scripts.MARK_SENT)
        self._complete = redis.register_script(scripts.COMPLETE)
        self._dead = redis.register_script(scripts.DEAD)
        self._release = redis.register_script(scripts.RELEASE)
        self._inspect = redis.register_script(scripts.INSPECT)
        self._forget = redis.register_script(scripts.FORGET_IF_UNCHANGED)
        self._take_dead = redis.register_script(scripts.TAKE_DEAD)
        self._drop_dead = redis.register_script(scripts.DROP_DEAD)

    # ---- submission -------------------------------------------------------

    async def submit(
        self,
        user: UserId,
        item: QueueItem,
        *,
        dedupe: bool = True,
        seen_as: str = "",
        replies_sent: int = 0,
    ) -> SubmitStatus:
        """Queues ``item`` for ``user`` unless its id (or ``seen_as``) was seen,
        in one atomic step; ``replies_sent`` of its replies count as sent."""
        keys = UserKeys(user)
        script_keys = [
            keys.seen(seen_as or item.item_id),
            keys.queue,
            keys.sched,
            keys.lease,
            keys.sent,
            keys.unsettled,
        ]
        args: list[str | int | float] = [
            item.encode(),
            self.settings.dedupe_ttl_s,
            "1" if dedupe else "0",
            item.order_ms,
            self.settings.reorder_evidence_s,
            replies_sent,
            item.item_id,
        ]
        shard = self.shard(user)
        if self.single_node:
            script_keys += [shard.active, shard.ready]
            args += [user.member(), time.time() + self.settings.stall_grace_s]
        else:
            # Indexed first: if this process dies after queueing, the reaper finds the user.
            await self._touch(user, self.settings.stall_grace_s)
        outcome = int(await self._submit(keys=script_keys, args=args))
        if outcome == 0:
            return SubmitStatus.DUPLICATE
        if outcome == 2 and not self.single_node:
            await self.redis.rpush(shard.ready, user.member())
        return SubmitStatus.ACCEPTED

    def shard(self, user: UserId) -> ShardKeys:
        return self.shards[shard_of(user.member(), len(self.shards))]

    async def _touch(self, user: UserId, seconds: float, shard: ShardKeys | None = None) -> None:
        active = (shard or self.shard(user)).active
        await self.redis.zadd(active, {user.member(): time.time() + seconds}, gt=True)

    # ---- workers ----------------------------------------------------------

    def ready_groups(self) -> list[ReadyGroup]:
        """What the dispatchers wait on: one group per blocking pop."""
        lists = [shard.ready for shard in self.shards]
        if self.single_node:
            return [ReadyGroup(lists)]
        return [ReadyGroup([key]) for key in lists]

    async def next_ready(self, timeout_s: float) -> UserId | None:
        """Blocks until a user is ready (or the timeout passes)."""
        users = await self.next_ready_batch(timeout_s, 1)
        return users[0] if users else None

    async def next_ready_batch(
        self, timeout_s: float, count: int, group: ReadyGroup | None = None
    ) -> list[UserId]:
        """Blocks until a user is ready; returns up to ``count`` of them at once
        (from one ready list of ``group``: by default, every shard)."""
        if group is None:
            if not self.single_node and len(self.shards) > 1:
                raise ValueError("under Redis Cluster a pop waits on one shard's group")
            group = self.ready_groups()[0]
        keys = group.rotated()
        popped = await self.blocking.blmpop(
            timeout_s, len(keys), *keys, direction="LEFT", count=count
        )
        if not popped:
            return []
        group.served(popped[0])
        return [UserId.from_member(member) for member in popped[1]]

    async def acquire(self, user: UserId) -> Lease | Hold | None:
        """The user's lease; ``Hold`` when an earlier event may still arrive first."""
        taken = await self.take(user)
        return taken.lease if isinstance(taken, Acquired) else taken

    async def take(self, user: UserId) -> Acquired | Hold | None:
        """The user's lease and their queue's head in one step; ``Hold`` when an
        earlier event may still arrive first; None when another worker has the
        user or nothing is queued."""
        keys, args = self._acquire_call(user)
        asked = time.monotonic()
        return await self._taken(user, await self._acquire(keys=keys, args=args), asked)

    async def take_many(self, users: list[UserId]) -> list[Acquired | Hold | None]:
        """``take`` for several users in one pipelined exchange (the users a
        dispatcher popped together), in their order."""
        if len(users) == 1:
            return [await self.take(users[0])]
        pipe = self.redis.pipeline(transaction=False)
        for user in users:
            keys, args = self._acquire_call(user)
            pipe.evalsha(self._acquire.sha, len(keys), *keys, *args)
        asked = time.monotonic()
        replies = await pipe.execute(raise_on_error=False)
        taken: list[Acquired | Hold | None] = []
        for user, reply in zip(users, replies, strict=True):
            if isinstance(reply, NoScriptError):
                taken.append(await self.take(user))  # loads the script
            elif isinstance(reply, BaseException):
                raise reply
            else:
                taken.append(await self._taken(user, reply, asked))
        return taken

    def _acquire_call(self, user: UserId) -> tuple[list[str], list[str | int | float]]:
        k = UserKeys(user)
        keys = [
            k.lease, k.fence, k.queue, k.sched, k.tries, k.unsettled, k.sent, k.slots, k.handoff,
        ]  # fmt: skip
        args: list[str | int | float] = [
            self.settings.holder,
            self.settings.lease_ms,
            _now_ms(),
            self.settings.reorder_window_ms,
            self.settings.state_ttl_s,
        ]
        if self.single_node:
            keys.append(self.shard(user).active)
            args += [user.member(), time.time() + self._lease_s + self.settings.stall_grace_s]
        return keys, args

    async def _taken(self, user: UserId, reply: Any, asked: float) -> Acquired | Hold | None:
        """ACQUIRE's reply as a value; ``asked``: when it was sent (monotonic)."""
        code = int(reply[0])
        if code <= -2:
            return Hold((-2 - code + 1) / 1000)
        if code <= 0:
            return None
        if not self.single_node:
            await self._touch(user, self._lease_s + self.settings.stall_grace_s)
        lease = Lease(user, UserKeys(user), code, f"{self.settings.holder}|{code}")
        lease.state.valid_until = asked + self._lease_s
        return Acquired(lease, _head_from(*reply[1:]))

    async def renew(self, lease: Lease) -> bool:
        asked = time.monotonic()
        ok = await self._renew(keys=[lease.keys.lease], args=[lease.value, self.settings.lease_ms])
        if int(ok) != 1:
            lease.state.valid_until = 0.0
            return False
        # Redis extends the lease when the script runs, after ``asked``.
        lease.state.valid_until = asked + self.settings.lease_ms / 1000
        return True

    async def ensure(self, lease: Lease) -> None:
        """Raises ``Fenced`` unless the lease is still this worker's.

        Within the first half of a lease confirmed by Redis (taken or renewed)
        nobody else can hold it, so no round trip is needed; later, the lease
        is renewed first. ``lease.state.valid_until`` is then at least half a
        lease away."""
        if lease.state.valid_until - time.monotonic() > self.settings.lease_ms / 2000:
            return
        if not await self.renew(lease):
            raise Fenced(f"lease {lease.value} lost")

    async def head(self, lease: Lease) -> Head | None:
        k = lease.keys
        reply = await self._load_head(
            keys=[k.lease, k.queue, k.tries, k.sent, k.slots, k.handoff], args=[lease.value]
        )
        if reply == -1:
            raise Fenced(f"lease {lease.value} lost")
        if reply[0] is None:
            return None
        return _head_from(*reply)

    async def mark_sent(self, lease: Lease, item_id: str, count: int) -> None:
        ok = await self._mark_sent(
            keys=[lease.keys.lease, lease.keys.sent], args=[lease.value, item_id, count]
        )
        if int(ok) != 1:
            raise Fenced(f"lease {lease.value} lost")

    async def complete(
        self,
        lease: Lease,
        head: Head,
        result: bytes,
        *,
        slots: Mapping[str, str] | None = None,
        handoff: Mapping[str, str] | None = None,
        records: bytes = b"",
        traceparent: str = "",
    ) -> int:
        """Dequeues the head and stores its result; returns what remains queued.

        At the turn's last item (``lease.state.release_on_complete``) the same
        step gives the lease up. ``records`` (a serialized chatlog
        ``AppendMessagesRequest``) go to the chatlog outbox in the same step;
        only on a single Redis (``single_node``), where the outbox shares the node."""
        if records and not self.single_node:
            raise ValueError("chatlog records complete with the item only on a single Redis")
        k = lease.keys
        release = lease.state.release_on_complete
        keys = [
            k.lease, k.queue, k.tries, k.sent, k.last, k.slots, k.handoff,
            k.result(head.item.item_id), k.done(head.item.item_id), k.sched,
        ]  # fmt: skip
        args: list[str | int | float | bytes] = [
            lease.value,
            head.raw,
            head.item.item_id,
            result,
            self.settings.result_ttl_s,
            _now_ms(),
            json.dumps(dict(slots)) if slots else "",
            self.settings.slot_ttl_s,
            json.dumps(dict(handoff)) if handoff else "",
            "1" if release else "0",
            self.settings.state_ttl_s,
        ]
        if self.single_node:
            shard = self.shard(lease.user)
            keys += [shard.active, shard.ready, shard.outbox, shard.outbox_dropped]
            args += [
                lease.user.member(),
                time.time() + self.settings.stall_grace_s,
                records,
                traceparent,
                self.outbox_cap,
            ]
        remaining = await self._complete_waiting_out_blips(lease, head, keys, args)
        if release:
            lease.state.released = True
            if remaining > 0 and not self.single_node:
                await self._reschedule(lease.user)
        return remaining

    async def _complete_waiting_out_blips(
        self, lease: Lease, head: Head, keys: list[str], args: list[str | int | float | bytes]
    ) -> int:
        """Runs COMPLETE; a Redis blip is retried while the lease surely holds.

        The completion also stands for the last reply's mark: given up on a
        blip, the item would be tried again and that reply sent twice. A retry
        whose first attempt did run (only its answer was lost) finds the head
        gone and the item's result stored: done."""
        pause, retried = 0.05, False
        while True:
            try:
                remaining = int(await self._complete(keys=keys, args=args))
            except (RedisConnectionError, RedisTimeoutError):
                if time.monotonic() + pause > lease.state.valid_until:
                    raise
                await asyncio.sleep(pause)
                pause, retried = min(pause * 2, 1.0), True
                continue
            if remaining >= 0:
                return remaining
            if retried and await self.redis.exists(lease.keys.result(head.item.item_id)):
                return int(await self.redis.llen(lease.keys.queue))
            raise Fenced(f"lease {lease.value} lost (complete: {remaining})")

    async def dead_letter(self, lease: Lease, head: Head, error: str, result: bytes) -> None:
        """Moves the head to its tenant's dead letters; the queue moves on."""
        record = DeadLetterRecord(
            dead_letter_id=f"{lease.user.channel}.{lease.user.user_id}.{head.item.item_id}",
            user=lease.user,
            item=head.item,
            attempts=head.attempts,
            last_error=error[:2000],
            first_failure_ms=head.item.enqueue_ms,
            last_failure_ms=_now_ms(),
            # ``replies_sent`` is filled in by the script, from the marks.
        )
        tk = TenantKeys(lease.user.tenant_id)
        # The tenant's pointer first: a crash before the script leaves the head,
        # which dead-letters again under the same id; a fenced script leaves a
        # pointer to nothing, which listing skips.
        await self.ensure(lease)
        await self.redis.hset(tk.dead_items, record.dead_letter_id, lease.user.member())
        await self.redis.zadd(tk.dead_index, {record.dead_letter_id: record.last_failure_ms})
        k = lease.keys
        outcome = int(
            await self._dead(
                keys=[
                    k.lease,
                    k.queue,
                    k.tries,
                    k.sent,
                    k.dead_count,
                    k.result(head.item.item_id),
                    k.done(head.item.item_id),
                    k.dead_letters,
                ],
                args=[
                    lease.value,
                    head.raw,
                    head.item.item_id,
                    result,
                    self.settings.result_ttl_s,
                    record.dead_letter_id,
                    record.encode(),
                    self.settings.state_ttl_s,
                ],
            )
        )
        if outcome < 0:
            raise Fenced(f"lease {lease.value} lost (dead letter: {outcome})")
        await self._trim_dead_letters(lease.user.tenant_id)

    async def _trim_dead_letters(self, tenant_id: str) -> int:
        """Drops a tenant's oldest dead letters beyond the cap; returns how many."""
        tk = TenantKeys(tenant_id)
        excess = int(await self.redis.zcard(tk.dead_index)) - self.settings.dead_letters_max
        if excess <= 0:
            return 0
        dropped = 0
        for raw_id, _ in await self.redis.zpopmin(tk.dead_index, excess):
            dead_id = _text(raw_id)
            pointer = await self.redis.hget(tk.dead_items, dead_id)
            await self.redis.hdel(tk.dead_items, dead_id)
            if pointer is not None and not _text(pointer).startswith("{"):
                k = UserKeys(UserId.from_member(pointer))
                await self._drop_dead(keys=[k.dead_letters, k.dead_count], args=[dead_id])
            dropped += 1
        return dropped

    async def release(self, lease: Lease) -> None:
        k = lease.keys
        remaining = int(await self._release(keys=[k.lease, k.queue, k.sched], args=[lease.value]))
        if remaining > 0:
            await self._reschedule(lease.user)

    async def _reschedule(self, user: UserId) -> None:
        # Back to the tail of the ready list: the other users go first.
        await self._touch(user, self.settings.stall_grace_s)
        await self.redis.rpush(self.shard(user).ready, user.member())

    # ---- waiting for results ----------------------------------------------

    async def result(self, user: UserId, item_id: str) -> bytes | None:
        value = await self.redis.get(UserKeys(user).result(item_id))
        return bytes(value) if value is not None else None

    async def wait_result(self, user: UserId, item_id: str, timeout_s: float) -> bytes | None:
        """The item's result once it is processed, or None after ``timeout_s``."""
        keys = UserKeys(user)
        existing = await self.result(user, item_id)
        if existing is not None:
            return existing
        if timeout_s <= 0:
            return None
        popped = await self.blocking.blpop([keys.done(item_id)], timeout=timeout_s)
        if not popped:
            return await self.result(user, item_id)
        # Put the signal back for any other caller waiting on the same item.
        await self.redis.rpush(keys.done(item_id), "1")
        await self.redis.expire(keys.done(item_id), self.settings.result_ttl_s)
        return await self.result(user, item_id)

    # ---- recovery ---------------------------------------------------------

    async def sweep(self, limit: int = 100) -> int:
        """Reschedules users left with a queue and no worker (a crashed replica).

        Looks only at users whose deadline passed, up to ``limit`` per shard;
        returns how many it rescheduled.
        """
        now = time.time()
        overdue = await self._per_shard(
            lambda pipe, shard: pipe.zrangebyscore(
                shard.active, "-inf", now, start=0, num=limit, withscores=True
            )
        )
        rescheduled = 0
        for shard, entries in zip(self.shards, overdue, strict=True):
            rescheduled += await self._sweep_shard(shard, entries)
        return rescheduled

    async def _sweep_shard(self, shard: ShardKeys, overdue: list[tuple[Any, float]]) -> int:
        rescheduled = 0
        for member, score in overdue:
            user = UserId.from_member(member)
            k = UserKeys(user)
            state = int(await self._inspect(keys=[k.lease, k.queue, k.sched]))
            if state == 1:
                await self._touch(
                    user, self.settings.lease_ms / 1000 + self.settings.stall_grace_s, shard
                )
            elif state == 0:
                await self._forget(keys=[shard.active], args=[member, score])
            elif await self.redis.lpos(self.shard(user).ready, user.member()) is not None:
                # Waiting its turn behind a backlog: not stranded, look again later.
                await self._touch(user, max(30.0, self.settings.stall_grace_s), shard)
            else:
                await self._touch(user, self.settings.stall_grace_s, shard)
                await self.redis.rpush(self.shard(user).ready, user.member())
                rescheduled += 1
        return rescheduled

    async def queue_sample(self, limit: int = 200) -> tuple[int, float]:
        """Items queued and the oldest one's age (s), over up to ``limit`` active users."""
        per_shard = max(1, limit // len(self.shards))
        indexed = await self._per_shard(
            lambda pipe, shard: pipe.zrange(shard.active, 0, per_shard - 1)
        )
        members = [member for shard_members in indexed for member in shard_members]
        if not members:
            return 0, 0.0
        pipe = self.redis.pipeline(transaction=False)
        for member in members:
            keys = UserKeys(UserId.from_member(member))
            pipe.llen(keys.queue)
            pipe.lindex(keys.queue, 0)
        replies = await pipe.execute()
        total, oldest_ms = 0, 0
        now = _now_ms()
        for length, head in zip(replies[0::2], replies[1::2], strict=True):
            total += int(length or 0)
            if head:
                oldest_ms = max(oldest_ms, now - QueueItem.decode(head).enqueue_ms)
        return total, oldest_ms / 1000

    async def ready_length(self) -> int:
        return sum(await self._per_shard(lambda pipe, shard: pipe.llen(shard.ready)))

    async def active_count(self) -> int:
        return sum(await self._per_shard(lambda pipe, shard: pipe.zcard(shard.active)))

    async def _per_shard(self, command: Callable[[Any, ShardKeys], Any]) -> list[Any]:
        """``command`` for every shard in one pipelined exchange (per node); replies in
        shard order."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in self.shards:
            command(pipe, shard)
        return list(await pipe.execute())

    # ---- state, hand-off, dead letters -------------------------------------

    async def state(self, user: UserId) -> UserState:
        """One round trip: all these keys share the user's slot."""
        k = UserKeys(user)
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(k.lease)
        pipe.pttl(k.lease)
        pipe.get(k.fence)
        pipe.llen(k.queue)
        pipe.hgetall(k.slots)
        pipe.hgetall(k.handoff)
        pipe.hgetall(k.last)
        pipe.get(k.dead_count)
        lease_value, ttl, fence, length, slots, handoff, last, dead = await pipe.execute()
        holder, token = "", int(fence or 0)
        if lease_value:
            holder, _, token_text = lease_value.decode().rpartition("|")
            token = int(token_text)
        return UserState(
            queue_length=int(length),
            lease_holder=holder,
            fencing_token=token,
            lease_ttl_ms=int(ttl) if lease_value else 0,
            slots=_text_map(slots),
            handoff=_text_map(handoff),
            last=_text_map(last),
            dead_letter_count=int(dead or 0),
        )

    async def handoff(self, user: UserId) -> dict[str, str]:
        return _text_map(await self.redis.hgetall(UserKeys(user).handoff))

    async def set_handoff(self, user: UserId, fields: Mapping[str, str]) -> None:
        await self.redis.hset(UserKeys(user).handoff, mapping=dict(fields))

    async def list_dead_letters(
        self, tenant_id: str, offset: int, count: int
    ) -> tuple[list[DeadLetterRecord], bool]:
        """Up to ``count`` dead letters from the ``offset``-th newest; and whether more follow."""
        tk = TenantKeys(tenant_id)
        ids = await self.redis.zrevrange(tk.dead_index, offset, offset + count)
        more = len(ids) > count
        records = await self._records(tk, ids[:count])
        return records, more

    async def dead_letters_after(
        self, tenant_id: str, after: DeadLetterCursor | None, count: int
    ) -> tuple[list[DeadLetterRecord], DeadLetterCursor | None]:
        """Up to ``count`` index entries, newest failure first, strictly after
        ``after``; with the cursor of the last entry read, or None at the end.

        A cursor, not an offset: dead letters added or replayed between two
        pages neither shift nor repeat what the next page shows. Entries whose
        record is not (or no longer) there are read past, not returned."""
        tk = TenantKeys(tenant_id)
        top: float | str = "+inf" if after is None else after.score
        entries: list[tuple[str, float]] = []
        skip = 0
        while len(entries) <= count:  # one more than asked: is there a next page?
            page = await self.redis.zrevrangebyscore(
                tk.dead_index, top, "-inf", start=skip, num=count + 1, withscores=True
            )
            if not page:
                break
            skip += len(page)
            for raw_id, score in page:
                dead_id = _text(raw_id)
                # Equal scores come in reverse order of the id: ours were read.
                if after is not None and score == after.score and dead_id >= after.dead_letter_id:
                    continue
                entries.append((dead_id, float(score)))
        if not entries:
            return [], None
        taken = entries[:count]
        last = taken[-1]
        records = await self._records(tk, [dead_id for dead_id, _ in taken])
        cursor = DeadLetterCursor(last[1], last[0]) if len(entries) > count else None
        return records, cursor

    async def _records(self, tk: TenantKeys, ids: list[Any]) -> list[DeadLetterRecord]:
        if not ids:
            return []
        pointers = await self.redis.hmget(tk.dead_items, ids)
        records = []
        for dead_id, pointer in zip(ids, pointers, strict=True):
            record = await self._resolve(_text(dead_id), pointer)
            if record is not None:
                records.append(record)
        return records

    async def _resolve(self, dead_id: str, pointer: Any) -> DeadLetterRecord | None:
        """The record a tenant's pointer leads to (None: not, or not yet, written)."""
        if pointer is None:
            return None
        text = _text(pointer)
        if text.startswith("{"):
            return DeadLetterRecord.decode(text)  # written whole, in the tenant's slot
        raw = await self.redis.hget(UserKeys(UserId.from_member(text)).dead_letters, dead_id)
        return DeadLetterRecord.decode(raw) if raw is not None else None

    async def dead_letter_record(
        self, tenant_id: str, dead_letter_id: str
    ) -> DeadLetterRecord | None:
        tk = TenantKeys(tenant_id)
        return await self._resolve(
            dead_letter_id, await self.redis.hget(tk.dead_items, dead_letter_id)
        )

    async def replay_dead_letter(self, record: DeadLetterRecord) -> SubmitStatus:
        """Queues a dead letter's item again, then removes the dead letter.

        The item goes back first, so a crash in between loses nothing; it is
        deduplicated on the dead letter's id and failure time, so a second
        replay of the same record after such a crash queues nothing twice. The
        replies sent before the failure count as sent: a replay sends the rest.
        """
        item = QueueItem(
            item_id=record.item.item_id,
            kind=record.item.kind,
            payload=record.item.payload,
            enqueue_ms=_now_ms(),
            replay=True,
            traceparent=record.item.traceparent,
        )
        status = await self.submit(
            record.user,
            item,
            seen_as=f"replay:{record.dead_letter_id}:{record.last_failure_ms}",
            replies_sent=record.replies_sent,
        )
        tk = TenantKeys(record.user.tenant_id)
        await self._take_dead(keys=[tk.dead_items, tk.dead_index], args=[record.dead_letter_id])
        k = UserKeys(record.user)
        await self._drop_dead(keys=[k.dead_letters, k.dead_count], args=[record.dead_letter_id])
        return status

    async def outbox_stats(self) -> tuple[int, int]:
        """Entries waiting in the chatlog outbox, and records dropped because it was full."""
        entries = await self._per_shard(lambda pipe, shard: pipe.xlen(shard.outbox))
        dropped = await self._per_shard(lambda pipe, shard: pipe.get(shard.outbox_dropped))
        return sum(entries), sum(int(count or 0) for count in dropped)

    async def queue_length(self, user: UserId) -> int:
        return int(await self.redis.llen(UserKeys(user).queue))

    async def ping(self) -> bool:
        return bool(await self.redis.ping())
