"""The workers of one replica.

A dispatcher blocks on the ready lists (no Redis calls while idle beyond one
blocking pop: one for every shard on a single Redis, one per shard under
Redis Cluster) and hands each ready user to a turn, at most ``concurrency``
at a time. A turn takes the user's lease, processes up to ``turn_items``
items, and releases it; a user with more queued goes back to the tail of the
ready list, so a chatty user cannot starve the others. The lease is renewed
while the turn runs; if renewal fails the turn is cancelled.

A reaper, every ``sweep_interval_s``, reschedules users stranded by a
replica that died (one index lookup when there are none).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from mesh import get_logger, tracing
from mesh.logging import hashed
from services.dialogue import metrics
from services.dialogue.keys import UserId
from services.dialogue.processor import RESULT_DEAD, Processor
from services.dialogue.store import (
    Acquired,
    DialogueStore,
    Fenced,
    Head,
    Hold,
    Lease,
    ReadyGroup,
)

_log = get_logger("dialogue.worker")


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int = 32
    turn_items: int = 1
    max_attempts: int = 5
    retry_backoff_s: float = 0.5
    block_s: float = 30.0
    sweep_interval_s: float = 3.0


class _Slots:
    """Free turn slots, shared by the dispatchers of every shard. A dispatcher
    waits for a free slot before it pops but holds none while it blocks, so an
    idle shard never keeps slots from a busy one."""

    def __init__(self, count: int) -> None:
        self.free = count
        self._changed = asyncio.Event()

    async def wait_free(self) -> int:
        while self.free <= 0:
            self._changed.clear()
            await self._changed.wait()
        return self.free

    async def take(self) -> None:
        await self.wait_free()
        self.free -= 1

    def release(self) -> None:
        self.free += 1
        self._changed.set()


class Workers:
    def __init__(
        self, store: DialogueStore, processor: Processor, settings: WorkerSettings
    ) -> None:
        self._store = store
        self._processor = processor
        self._settings = settings
        self._slots = _Slots(settings.concurrency)
        self._turns: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Dispatches until cancelled; then lets running turns end (or cancels them)."""
        reaper = asyncio.create_task(self._reap_forever())
        try:
            await self._dispatch_forever()
        finally:
            reaper.cancel()
            for turn in list(self._turns):
                turn.cancel()
            await asyncio.gather(reaper, *self._turns, return_exceptions=True)

    async def _dispatch_forever(self) -> None:
        groups = self._store.ready_groups()
        await asyncio.gather(*(self._dispatch(group) for group in groups))

    async def _dispatch(self, group: ReadyGroup) -> None:
        backoff = 0.2
        while True:
            # As many users as there are free slots: a backlog is popped many
            # users per call instead of one.
            free = await self._slots.wait_free()
            try:
                users = await self._store.next_ready_batch(self._settings.block_s, free, group)
                backoff = 0.2
            except RedisError as exc:
                _log.warning("ready list unreachable", extra={"error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for _ in users:
                # Another shard's dispatcher may have taken a slot meanwhile;
                # a popped user then waits here, and the reaper would find them.
                await self._slots.take()
            # Every popped user's lease and head in one exchange; a user whose
            # take fails here is taken again inside its turn.
            taken: list[Acquired | Hold | RedisError | None]
            try:
                taken = list(await self._store.take_many(users))
            except RedisError as exc:
                taken = [exc] * len(users)
            for user, first in zip(users, taken, strict=True):
                task = asyncio.create_task(self._turn(user, first))
                self._turns.add(task)
                task.add_done_callback(self._turn_done)

    def _turn_done(self, task: asyncio.Task[None]) -> None:
        self._turns.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            _log.error("turn failed", extra={"error": repr(task.exception())})

    async def _take_popped(
        self, user: UserId, first: Acquired | Hold | RedisError | None
    ) -> Acquired | None:
        # This worker took the user off the ready list: until it holds the lease
        # nobody else serves them but the reaper, much later. So a Redis outage
        # is waited out here rather than dropping the user.
        backoff = 0.2
        taken = first
        while True:
            if taken is None or isinstance(taken, Acquired):
                return taken
            if isinstance(taken, Hold):
                await asyncio.sleep(taken.seconds)
            else:
                _log.warning("lease not acquired; retrying", extra={"error": repr(taken)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            try:
                taken = await self._store.take(user)
            except RedisError as exc:
                taken = exc

    async def _turn(self, user: UserId, first: Acquired | Hold | RedisError | None) -> None:
        taken = await self._take_popped(user, first)
        if taken is None:
            return  # another worker has the user, or nothing is left
        lease = taken.lease
        metrics.LEASES.inc()
        work = asyncio.create_task(self._work(lease, taken.head))
        lost = False
        try:
            interval = self._store.settings.lease_ms / 3000
            wait = interval
            while not work.done():
                await asyncio.wait({work}, timeout=wait)
                if work.done() or lease.state.released:
                    break
                wait = interval
                try:
                    still_ours = await self._store.renew(lease)
                except RedisError:
                    # Unreachable is not lost: while the lease surely holds, try
                    # again soon rather than cut a send off mid-flight.
                    if time.monotonic() < lease.state.valid_until - 0.5:
                        wait = min(0.25, interval)
                        continue
                    still_ours = False
                if lease.state.released:
                    break  # the turn gave the lease up as it completed meanwhile
                if not still_ours:
                    lost = True
                    metrics.FENCED.inc()
                    _log.warning(
                        "lease lost mid-turn: stopping",
                        extra={"user": hashed(lease.user.user_id), "token": lease.token},
                    )
                    work.cancel()
            try:
                await work
            except asyncio.CancelledError:
                if not lost:
                    raise
            except Fenced as exc:
                lost = True
                metrics.FENCED.inc()
                _log.warning("fenced: another worker has the user", extra={"reason": str(exc)})
            except RedisError as exc:
                # The item stays at the head of the queue: retried after release
                # or, if that fails too, once the lease expires.
                _log.warning("turn interrupted: Redis unreachable", extra={"error": repr(exc)})
        finally:
            metrics.LEASES.dec()
            if not work.done():
                work.cancel()
            if not lost and not lease.state.released:
                try:
                    await self._store.release(lease)
                except (RedisError, Fenced) as exc:
                    _log.warning(
                        "release failed; the lease will expire", extra={"error": repr(exc)}
                    )

    async def _work(self, lease: Lease, first: Head | None) -> None:
        done = 0
        head: Head | None = first
        while done < self._settings.turn_items:
            if head is None:
                head = await self._store.head(lease)
                if head is None:
                    return
            # The turn's last item gives the lease up as it completes.
            lease.state.release_on_complete = done + 1 >= self._settings.turn_items
            current, head = head, None  # each step below moves on to a fresh head
            if current.attempts >= self._settings.max_attempts:
                await self._dead_letter(lease, current, "too many failed attempts")
                done += 1
                continue
            started = time.perf_counter()
            try:
                with tracing.span(
                    "dialogue.process",
                    parent={"traceparent": current.item.traceparent}
                    if current.item.traceparent
                    else None,
                    kind="consumer",
                    attributes={
                        "chatbot.tenant": lease.user.tenant_id,
                        "chatbot.item": current.item.item_id,
                        "chatbot.fencing_token": lease.token,
                        "chatbot.queue_wait_ms": int(time.time() * 1000) - current.item.enqueue_ms,
                    },
                ):
                    await self._processor.process(lease, current)
            except (Fenced, asyncio.CancelledError):
                raise
            except Exception as exc:
                metrics.ATTEMPTS_FAILED.inc()
                # Counted when it started (ACQUIRE or LOAD_HEAD), crash or not.
                attempts = current.attempts + 1
                _log.warning(
                    "processing failed",
                    extra={
                        "tenant": lease.user.tenant_id,
                        "user": hashed(lease.user.user_id),
                        "item": current.item.item_id,
                        "token": lease.token,
                        "attempt": attempts,
                        "error": repr(exc),
                    },
                )
                if attempts >= self._settings.max_attempts:
                    await self._dead_letter(lease, current, repr(exc), attempts)
                    done += 1
                else:
                    await asyncio.sleep(self._settings.retry_backoff_s * 2 ** (attempts - 1))
                continue
            metrics.PROCESSING_SECONDS.observe(time.perf_counter() - started)
            metrics.MESSAGES_PROCESSED.labels(current.item.kind).inc()
            done += 1

    async def _dead_letter(self, lease: Lease, head: Head, error: str, attempts: int = 0) -> None:
        if attempts:
            head = Head(head.raw, head.item, attempts, head.replies_sent, head.slots, head.handoff)
        await self._store.dead_letter(lease, head, error, RESULT_DEAD + error.encode()[:1000])
        metrics.DEAD_LETTERS.inc()
        _log.error(
            "moved to the dead letters",
            extra={
                "tenant": lease.user.tenant_id,
                "user": hashed(lease.user.user_id),
                "item": head.item.item_id,
                "token": lease.token,
                "error": error[:300],
            },
        )

    async def _reap_forever(self) -> None:
        while True:
            try:
                rescheduled = await self._store.sweep()
                if rescheduled:
                    metrics.RESCHEDULED.inc(rescheduled)
                    _log.info("rescheduled stranded users", extra={"users": rescheduled})
                metrics.READY_USERS.set(await self._store.ready_length())
                metrics.ACTIVE_USERS.set(await self._store.active_count())
                queued, oldest = await self._store.queue_sample()
                metrics.QUEUED_ITEMS.set(queued)
                metrics.OLDEST_QUEUED_SECONDS.set(oldest)
                entries, dropped = await self._store.outbox_stats()
                metrics.OUTBOX_ENTRIES.set(entries)
                metrics.OUTBOX_DROPPED.set(dropped)
            except RedisError as exc:
                _log.warning("reaper cannot reach Redis", extra={"error": repr(exc)})
            await asyncio.sleep(self._settings.sweep_interval_s)
