"""What Redis keeps stays bounded, dead letters replay faithfully, and an
acknowledged event is refused rather than accepted without a replica.

The store's scripts against a real Redis (and a real replica)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from redis.exceptions import ResponseError

from harness.redis_servers import RedisServer
from services.dialogue.keys import TenantKeys, UserId, UserKeys
from services.dialogue.store import (
    Acquired,
    DialogueStore,
    Fenced,
    QueueItem,
    StoreSettings,
    SubmitStatus,
)
from tests.dialogue.conftest import TENANT, Replicas, message_event

TTL = 3600


def _user() -> UserId:
    return UserId(f"bounded-{uuid.uuid4().hex[:6]}", 1, f"u-{uuid.uuid4().hex[:8]}")


def _item(name: str, payload: bytes = b"x") -> QueueItem:
    return QueueItem(
        item_id=name, kind="event", payload=payload, enqueue_ms=int(time.time() * 1000)
    )


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_server.url)
    yield connection
    await connection.aclose()


def _store(client: aioredis.Redis, **settings: int) -> DialogueStore:
    return DialogueStore(client, StoreSettings(holder="test", state_ttl_s=TTL, **settings))


async def _take(store: DialogueStore, user: UserId) -> Acquired:
    taken = await store.take(user)
    assert isinstance(taken, Acquired) and taken.head is not None
    return taken


async def test_per_user_state_expires_after_the_user_goes_quiet(client: aioredis.Redis) -> None:
    store = _store(client)
    user = _user()
    await store.submit(user, _item("m1"))
    taken = await _take(store, user)
    taken.lease.state.release_on_complete = True
    assert taken.head is not None
    await store.complete(taken.lease, taken.head, b"C", handoff={"active": "1"})
    keys = UserKeys(user)
    for key in (keys.fence, keys.last, keys.handoff):
        assert 0 < await client.ttl(key) <= TTL, key

    await store.submit(user, _item("m2"))
    taken = await _take(store, user)
    assert taken.head is not None
    await store.dead_letter(taken.lease, taken.head, "boom", b"E")
    assert 0 < await client.ttl(keys.dead_count) <= TTL


async def test_a_replayed_dead_letter_sends_only_the_replies_not_yet_sent(
    client: aioredis.Redis,
) -> None:
    store = _store(client)
    user = _user()
    await store.submit(user, _item("m1"))
    taken = await _take(store, user)
    assert taken.head is not None
    await store.mark_sent(taken.lease, "m1", 2)
    await store.dead_letter(taken.lease, taken.head, "the action failed", b"E")
    await store.release(taken.lease)

    (record,), _ = await store.list_dead_letters(user.tenant_id, 0, 10)
    assert record.replies_sent == 2
    assert await store.replay_dead_letter(record) == SubmitStatus.ACCEPTED
    assert await store.list_dead_letters(user.tenant_id, 0, 10) == ([], False)
    assert (await store.state(user)).dead_letter_count == 0

    again = await _take(store, user)
    assert again.head is not None
    assert again.head.item.item_id == "m1" and again.head.item.replay
    assert again.head.replies_sent == 2


async def test_a_replay_repeated_after_a_crash_queues_the_item_once(
    client: aioredis.Redis,
) -> None:
    store = _store(client)
    user = _user()
    await store.submit(user, _item("m1"))
    taken = await _take(store, user)
    assert taken.head is not None
    await store.dead_letter(taken.lease, taken.head, "boom", b"E")
    await store.release(taken.lease)
    (record,), _ = await store.list_dead_letters(user.tenant_id, 0, 10)
    # The item goes back before the dead letter is removed; the same record
    # replayed twice (the first replayer died in between) queues it once.
    assert await store.replay_dead_letter(record) == SubmitStatus.ACCEPTED
    assert await store.replay_dead_letter(record) == SubmitStatus.DUPLICATE
    assert await store.queue_length(user) == 1


async def test_a_worker_that_lost_the_user_leaves_no_dead_letter(
    client: aioredis.Redis,
) -> None:
    store = _store(client)
    user = _user()
    await store.submit(user, _item("m1"))
    taken = await _take(store, user)
    assert taken.head is not None
    # Another worker takes over; this one still believes its lease is fresh.
    await client.set(UserKeys(user).lease, "another|999999999999999", px=10_000)
    with pytest.raises(Fenced):
        await store.dead_letter(taken.lease, taken.head, "boom", b"E")
    assert await store.list_dead_letters(user.tenant_id, 0, 10) == ([], False)
    assert await store.queue_length(user) == 1


async def test_a_tenant_keeps_only_its_newest_dead_letters(client: aioredis.Redis) -> None:
    store = _store(client, dead_letters_max=3)
    user = _user()
    for i in range(5):
        await store.submit(user, _item(f"m{i}"))
        taken = await _take(store, user)
        assert taken.head is not None
        await store.dead_letter(taken.lease, taken.head, "boom", b"E")
        await store.release(taken.lease)
        await asyncio.sleep(0.002)  # distinct failure times order the index
    kept, more = await store.list_dead_letters(user.tenant_id, 0, 10)
    assert not more
    assert sorted(r.item.item_id for r in kept) == ["m2", "m3", "m4"]
    assert await client.hlen(UserKeys(user).dead_letters) == 3
    assert await client.hlen(TenantKeys(user.tenant_id).dead_items) == 3
    assert (await store.state(user)).dead_letter_count == 3


async def test_a_full_outbox_counts_dropped_records_instead_of_growing(
    client: aioredis.Redis,
) -> None:
    store = _store(client, outbox_max=2)
    shard = store.shards[0]
    await client.delete(shard.outbox, shard.outbox_dropped)
    user = _user()
    record = chatlog_pb.AppendMessagesRequest(
        messages=[chatlog_pb.ChatMessage(message_id="m", conversation_id="c")]
    ).SerializeToString()
    for i in range(3):
        await store.submit(user, _item(f"m{i}"))
        taken = await _take(store, user)
        assert taken.head is not None
        taken.lease.state.release_on_complete = True
        await store.complete(taken.lease, taken.head, b"C", records=record)
    assert await store.outbox_stats() == (2, 1)
    assert await store.queue_length(user) == 0  # the items completed all the same


async def test_without_a_replica_an_event_is_refused_not_acknowledged(
    client: aioredis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The production setting (min-replicas-to-write 1): an event is accepted
    only while a replica is attached, so an acknowledgement never rests on one
    machine alone; refused, the gateway answers 5xx and Messenger retries."""
    store = _store(client)
    user = _user()
    await client.config_set("min-replicas-to-write", 1)
    replica = RedisServer(tmp_path)
    try:
        with pytest.raises(ResponseError, match="NOREPLICAS"):
            await store.submit(user, _item("m1"))
        assert await store.queue_length(user) == 0
        follower = aioredis.Redis(port=replica.port)
        await follower.replicaof("127.0.0.1", redis_server.port)
        deadline = time.monotonic() + 30
        while True:
            info = await client.info("replication")
            if int(info.get("connected_slaves", 0)) >= 1 and await _accepts(store, user):
                break
            assert time.monotonic() < deadline, info
            await asyncio.sleep(0.2)
        # Accepted now, and on the replica too.
        for _ in range(100):
            if await follower.llen(UserKeys(user).queue) == 1:
                break
            await asyncio.sleep(0.05)
        assert await follower.llen(UserKeys(user).queue) == 1
        await follower.aclose()
    finally:
        await client.config_set("min-replicas-to-write", 0)
        replica.stop()


async def _accepts(store: DialogueStore, user: UserId) -> bool:
    try:
        return await store.submit(user, _item("m1")) == SubmitStatus.ACCEPTED
    except ResponseError:
        return False


async def test_dead_letter_pages_neither_skip_nor_repeat_while_the_list_changes(
    client: aioredis.Redis,
) -> None:
    store = _store(client)
    user = _user()

    async def fail(name: str) -> None:
        await store.submit(user, _item(name))
        taken = await _take(store, user)
        assert taken.head is not None
        await store.dead_letter(taken.lease, taken.head, "boom", b"E")
        await store.release(taken.lease)
        await asyncio.sleep(0.002)  # distinct failure times

    for i in range(5):
        await fail(f"m{i}")
    first, cursor = await store.dead_letters_after(user.tenant_id, None, 2)
    assert [r.item.item_id for r in first] == ["m4", "m3"] and cursor is not None
    # Meanwhile a newer failure arrives and one already shown is replayed:
    # an offset would now show m3 again; the cursor goes on from where it was.
    await fail("m5")
    await store.replay_dead_letter(first[0])
    assert (await store.dead_letters_after(user.tenant_id, None, 1))[0][0].item.item_id == "m5"
    second, cursor = await store.dead_letters_after(user.tenant_id, cursor, 2)
    third, end = await store.dead_letters_after(user.tenant_id, cursor, 2)
    assert [r.item.item_id for r in second] == ["m2", "m1"]
    assert [r.item.item_id for r in third] == ["m0"] and end is None


def test_list_dead_letters_pages_one_users_letters_through_the_api(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    """``ListDeadLetters`` with a user filter and small pages, through gRPC."""

    async def make() -> None:
        connection = aioredis.Redis.from_url(redis_server.url)
        store = _store(connection)
        for user_id, names in (("dl-a", "abcde"), ("dl-b", "xy")):
            user = UserId(TENANT, 1, user_id)
            for name in names:
                event = message_event(user_id, name, "hello").SerializeToString()
                await store.submit(user, _item(name, event))
                taken = await _take(store, user)
                assert taken.head is not None
                await store.dead_letter(taken.lease, taken.head, "boom", b"E")
                await store.release(taken.lease)
                await asyncio.sleep(0.002)
        await connection.aclose()

    asyncio.run(make())
    replicas.start(1)
    stub = replicas.stub()
    seen: list[str] = []
    token = ""
    for _ in range(10):
        page = stub.ListDeadLetters(
            pb.ListDeadLettersRequest(
                tenant_id=TENANT, user_id="dl-a", page_size=2, page_token=token
            )
        )
        assert len(page.dead_letters) <= 2
        seen += [d.event.event_id for d in page.dead_letters]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["e", "d", "c", "b", "a"]
