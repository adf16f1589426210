"""A user's queue keeps the events' own order when deliveries overtake each other.

Messenger's order is the events' timestamps; two webhooks in flight at once
can reach the dialogue service in either order. The store's scripts run
against a real Redis; the last tests run a dialogue process.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb

from harness.redis_servers import RedisServer
from harness.standins import GraphApi
from services.dialogue.keys import UserId, UserKeys
from services.dialogue.store import (
    DialogueStore,
    Hold,
    Lease,
    QueueItem,
    StoreSettings,
    SubmitStatus,
)
from tests.dialogue.conftest import Replicas, message_event, submit, wait_for

DUPLICATE = pb.SUBMIT_STATUS_DUPLICATE

T = 1_800_000_000_000  # a plausible event time (ms)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[DialogueStore]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield DialogueStore(client, StoreSettings(holder="test"))
    await client.aclose()


def _user() -> UserId:
    return UserId("default", 1, f"order-{uuid.uuid4().hex[:8]}")


def _item(name: str, order_ms: int, enqueue_ms: int = 0) -> QueueItem:
    return QueueItem(
        item_id=name, kind="event", payload=b"", enqueue_ms=enqueue_ms, order_ms=order_ms
    )


async def _queued(store: DialogueStore, user: UserId) -> list[str]:
    raw = await store.redis.lrange(UserKeys(user).queue, 0, -1)
    return [QueueItem.decode(entry).item_id for entry in raw]


async def test_a_late_delivery_of_an_earlier_event_goes_before_later_ones(
    store: DialogueStore,
) -> None:
    user = _user()
    for name, at in [("m1", T + 100), ("m3", T + 300), ("m4", T + 400), ("m2", T + 200)]:
        assert await store.submit(user, _item(name, at)) == SubmitStatus.ACCEPTED
    assert await _queued(store, user) == ["m1", "m2", "m3", "m4"]
    # Equal times keep their arrival order.
    await store.submit(user, _item("m2b", T + 200))
    assert await _queued(store, user) == ["m1", "m2", "m2b", "m3", "m4"]


async def test_an_idle_users_head_can_be_overtaken(store: DialogueStore) -> None:
    user = _user()
    await store.submit(user, _item("m2", T + 200))
    await store.submit(user, _item("m1", T + 100))
    assert await _queued(store, user) == ["m1", "m2"]


async def test_never_before_a_head_a_worker_holds(store: DialogueStore) -> None:
    user = _user()
    await store.submit(user, _item("m2", T + 200))
    await store.submit(user, _item("m3", T + 300))
    lease = await store.acquire(user)
    assert isinstance(lease, Lease)
    await store.submit(user, _item("m1", T + 100))
    assert await _queued(store, user) == ["m2", "m1", "m3"]


async def test_never_before_a_head_partly_answered(store: DialogueStore) -> None:
    # A worker sent one reply to m2 and died: its other replies come first.
    user = _user()
    await store.submit(user, _item("m2", T + 200))
    await store.redis.hset(UserKeys(user).sent, "m2", 1)
    await store.submit(user, _item("m1", T + 100))
    assert await _queued(store, user) == ["m2", "m1"]


async def test_an_item_without_a_time_is_a_barrier(store: DialogueStore) -> None:
    user = _user()
    await store.submit(user, _item("m2", T + 200))
    await store.submit(user, _item("agent", 0))
    await store.submit(user, _item("m1", T + 100))
    assert await _queued(store, user) == ["m2", "agent", "m1"]


async def test_items_queued_before_times_were_kept_are_barriers(store: DialogueStore) -> None:
    user = _user()
    legacy = '{"i":"old","k":"event","p":"","t":1,"r":false,"tp":""}'
    await store.redis.rpush(UserKeys(user).queue, legacy)
    await store.submit(user, _item("m1", T + 100))
    assert await _queued(store, user) == ["old", "m1"]


async def test_duplicates_are_still_refused(store: DialogueStore) -> None:
    user = _user()
    assert await store.submit(user, _item("m1", T + 100)) == SubmitStatus.ACCEPTED
    assert await store.submit(user, _item("m1", T + 100)) == SubmitStatus.DUPLICATE
    assert await _queued(store, user) == ["m1"]


async def _unsettle(store: DialogueStore, user: UserId) -> None:
    """A repeated delivery: the evidence that deliveries are failing and retried."""
    await store.submit(user, _item("retried", 0))
    assert await store.submit(user, _item("retried", 0)) == SubmitStatus.DUPLICATE
    lease = await store.acquire(user)
    assert isinstance(lease, Lease)
    head = await store.head(lease)
    assert head is not None
    await store.complete(lease, head, b"")
    await store.release(lease)


async def test_a_fresh_event_is_held_on_evidence_of_retries(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    store = DialogueStore(client, StoreSettings(holder="test", reorder_window_ms=400))
    try:
        user = _user()
        await _unsettle(store, user)
        now = int(time.time() * 1000)
        await store.submit(user, _item("m2", now, enqueue_ms=now))
        held = await store.acquire(user)
        assert isinstance(held, Hold)
        assert 0 < held.seconds <= 0.401
        # No lease is held meanwhile: the overtaken event still goes first.
        await store.submit(user, _item("m1", now - 50, enqueue_ms=now))
        assert await _queued(store, user) == ["m1", "m2"]
        await asyncio.sleep(held.seconds)
        lease = await store.acquire(user)
        assert isinstance(lease, Lease)
        head = await store.head(lease)
        assert head is not None and head.item.item_id == "m1"
    finally:
        await client.aclose()


async def test_an_overtaken_delivery_is_evidence_too(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    store = DialogueStore(client, StoreSettings(holder="test", reorder_window_ms=60_000))
    try:
        user = _user()
        now = int(time.time() * 1000)
        await store.submit(user, _item("m2", now, enqueue_ms=now))
        await store.submit(user, _item("m1", now - 50, enqueue_ms=now))
        assert isinstance(await store.acquire(user), Hold)
    finally:
        await client.aclose()


async def test_nothing_is_held_without_evidence(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    store = DialogueStore(client, StoreSettings(holder="test", reorder_window_ms=60_000))
    try:
        user = _user()
        now = int(time.time() * 1000)
        await store.submit(user, _item("m1", now, enqueue_ms=now))
        assert isinstance(await store.acquire(user), Lease)
    finally:
        await client.aclose()


async def test_the_hold_runs_from_the_events_own_time(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    store = DialogueStore(client, StoreSettings(holder="test", reorder_window_ms=1_000))
    try:
        now = int(time.time() * 1000)
        # Sent 5 s ago, delivered now: it took longer than the window, no hold.
        late = _user()
        await _unsettle(store, late)
        await store.submit(late, _item("m1", now - 5_000, enqueue_ms=now))
        assert isinstance(await store.acquire(late), Lease)
        # A sender's clock 1 h ahead: held from the time it was queued, not 1 h.
        ahead = _user()
        await _unsettle(store, ahead)
        await store.submit(ahead, _item("m1", now + 3_600_000, enqueue_ms=now))
        held = await store.acquire(ahead)
        assert isinstance(held, Hold) and held.seconds <= 1.001
    finally:
        await client.aclose()


async def test_old_items_and_items_without_a_time_are_not_held(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    store = DialogueStore(client, StoreSettings(holder="test", reorder_window_ms=60_000))
    try:
        now = int(time.time() * 1000)
        agent = _user()
        await _unsettle(store, agent)
        await store.submit(agent, _item("agent", 0, enqueue_ms=now))
        assert isinstance(await store.acquire(agent), Lease)
        queued_long_ago = _user()
        await _unsettle(store, queued_long_ago)
        await store.submit(queued_long_ago, _item("m1", T, enqueue_ms=now - 61_000))
        assert isinstance(await store.acquire(queued_long_ago), Lease)
    finally:
        await client.aclose()


def test_swapped_deliveries_of_a_retried_user_are_answered_in_their_own_order(
    replicas: Replicas, graph_api: GraphApi
) -> None:
    """Two of a user's messages arrive in separate deliveries, the later one
    first, after a repeated delivery showed the channel retrying: the replies
    follow the messages' own times, not the order they arrived in."""
    replicas.start(1, DIALOGUE_REORDER_WINDOW_MS="1500")
    stub = replicas.stub()
    submit(stub, message_event("swapped", "sw_0", "hello"))
    assert submit(stub, message_event("swapped", "sw_0", "hello")) == [DUPLICATE]
    wait_for(lambda: len(graph_api.sent) == 1)
    now = int(time.time() * 1000)
    submit(stub, message_event("swapped", "sw_2", "thanks", at_ms=now))
    submit(stub, message_event("swapped", "sw_1", "bye", at_ms=now - 20))
    wait_for(lambda: len(graph_api.sent) == 3)
    assert [s.in_reply_to for s in graph_api.sent] == ["sw_0", "sw_1", "sw_2"]


def test_an_idle_user_is_answered_without_a_hold(replicas: Replicas, graph_api: GraphApi) -> None:
    """No sign of an overtaken delivery: the message is not held for one."""
    replicas.start(1, DIALOGUE_REORDER_WINDOW_MS="600000")
    stub = replicas.stub()
    submit(stub, message_event("idle", "idle_1", "hello"))
    # With a ten-minute hold this could only pass by not holding.
    wait_for(lambda: len(graph_api.sent) == 1, timeout=60)


async def test_a_submission_that_fails_part_way_is_not_marked_seen(store: DialogueStore) -> None:
    """Redis does not undo a script that fails part way: the event is marked
    seen last, so the channel's retry is queued, not dropped as a duplicate."""
    user = _user()
    await store.redis.set(UserKeys(user).queue, "not a list")
    with pytest.raises(redis.exceptions.ResponseError):
        await store.submit(user, _item("m1", T + 100))
    await store.redis.delete(UserKeys(user).queue)
    assert await store.submit(user, _item("m1", T + 100)) == SubmitStatus.ACCEPTED
    assert await _queued(store, user) == ["m1"]
