"""A user's queue keeps the events' own order when deliveries overtake each other.

Messenger's order is the events' timestamps; two webhooks in flight at once
can reach the dialogue service in either order. These run the store's submit
script against a real Redis.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.dialogue.keys import UserId, UserKeys
from services.dialogue.store import (
    DialogueStore,
    Hold,
    Lease,
    QueueItem,
    StoreSettings,
    SubmitStatus,
)
from tests.redis_servers import RedisServer

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


async def test_a_fresh_event_is_held_for_the_reorder_window(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    store = DialogueStore(client, StoreSettings(holder="test", reorder_window_ms=400))
    try:
        user = _user()
        now = int(time.time() * 1000)
        await store.submit(user, _item("m2", T + 200, enqueue_ms=now))
        held = await store.acquire(user)
        assert isinstance(held, Hold)
        assert 0 < held.seconds <= 0.401
        # No lease is held meanwhile: the overtaken event still goes first.
        await store.submit(user, _item("m1", T + 100, enqueue_ms=now))
        assert await _queued(store, user) == ["m1", "m2"]
        await asyncio.sleep(held.seconds)
        lease = await store.acquire(user)
        assert isinstance(lease, Lease)
        head = await store.head(lease)
        assert head is not None and head.item.item_id == "m1"
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
        await store.submit(agent, _item("agent", 0, enqueue_ms=now))
        assert isinstance(await store.acquire(agent), Lease)
        queued_long_ago = _user()
        await store.submit(queued_long_ago, _item("m1", T, enqueue_ms=now - 61_000))
        assert isinstance(await store.acquire(queued_long_ago), Lease)
    finally:
        await client.aclose()
