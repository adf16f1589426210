"""The ready list, the active index and the chatlog outbox are sharded.

Under Redis Cluster each shard has its own hash tag, so the keys every message
passes through spread over the primaries instead of one slot carrying all of
them; every worker serves every shard, and no shard waits behind another.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from harness.redis_servers import RedisCluster, RedisServer
from harness.standins import GraphApi, RecordingChatlog
from services.dialogue.keys import ShardKeys, UserId, shard_of
from services.dialogue.store import DialogueStore, QueueItem, StoreSettings
from tests.dialogue.conftest import Replicas, wait_for
from tests.dialogue.test_invariants import play


def _item(name: str) -> QueueItem:
    return QueueItem(item_id=name, kind="event", payload=b"", enqueue_ms=int(time.time() * 1000))


def _users(count: int) -> list[UserId]:
    run = uuid.uuid4().hex[:6]
    return [UserId("default", 1, f"shard-{run}-{i}") for i in range(count)]


def _masters_holding(cluster: RedisCluster, pattern: str) -> Counter[int]:
    """How many non-empty keys matching ``pattern`` each master holds."""
    held: Counter[int] = Counter()
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        for key in client.scan_iter(match=pattern, count=1000):
            kind = client.type(key)
            if kind == b"list":
                size = client.llen(key)
            elif kind == b"zset":
                size = client.zcard(key)
            else:
                size = client.xlen(key)
            if size:
                held[node.port] += 1
        client.close()
    return held


@pytest.fixture
async def cluster_store(redis_cluster: RedisCluster) -> AsyncIterator[DialogueStore]:
    for node in redis_cluster.nodes:  # the cluster is shared by the session's tests
        redis.Redis(port=node.port).flushall()
    client = aioredis.RedisCluster.from_url(redis_cluster.url)
    yield DialogueStore(client, StoreSettings(holder="test", shards=16))
    await client.aclose()


async def test_users_spread_over_every_primary_and_each_is_served_once(
    cluster_store: DialogueStore, redis_cluster: RedisCluster
) -> None:
    store = cluster_store
    users = _users(120)
    for user in users:
        await store.submit(user, _item("m1"))
        assert await store.redis.lpos(store.shard(user).ready, user.member()) is not None
    shards_used = {shard_of(user.member(), 16) for user in users}
    assert len(shards_used) == 16
    # Every primary holds some ready lists and some of the active index.
    assert len(_masters_holding(redis_cluster, "dlg:{ready*}:list")) == len(redis_cluster.nodes)
    assert len(_masters_holding(redis_cluster, "dlg:{ready*}:active")) == len(redis_cluster.nodes)
    assert await store.ready_length() == len(users)
    assert await store.active_count() == len(users)

    groups = store.ready_groups()
    assert len(groups) == 16  # keys of different slots cannot share a blocking pop
    popped: list[UserId] = []
    for group in groups:
        while batch := await store.next_ready_batch(0.05, 50, group):
            popped += batch
    assert sorted(u.member() for u in popped) == sorted(u.member() for u in users)


async def test_one_pop_waits_on_every_shard_and_serves_them_in_turn(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    store = DialogueStore(client, StoreSettings(holder="test", shards=4))
    try:
        for shard in store.shards:
            await client.delete(shard.ready)
        # Three users in every shard.
        by_shard: dict[int, list[UserId]] = {}
        for user in _users(400):
            members = by_shard.setdefault(shard_of(user.member(), 4), [])
            if len(members) < 3:
                members.append(user)
                await store.submit(user, _item("m1"))
        assert [len(by_shard[i]) for i in range(4)] == [3, 3, 3, 3]
        (group,) = store.ready_groups()
        # One user per pop: four pops reach four different shards, whatever
        # order the lists are in, so a busy shard cannot keep the others waiting.
        first_four = [(await store.next_ready_batch(0.05, 1, group))[0] for _ in range(4)]
        assert {shard_of(u.member(), 4) for u in first_four} == {0, 1, 2, 3}
        # An empty shard does not block the others.
        await client.delete(ShardKeys.of(2).ready)
        rest: list[UserId] = []
        while batch := await store.next_ready_batch(0.05, 1, group):
            rest += batch
        assert len(rest) == 6
        assert all(shard_of(u.member(), 4) != 2 for u in rest)
    finally:
        await client.aclose()


def test_a_chatlog_outage_on_a_cluster_fills_every_outbox_shard_and_drains(
    cluster_replicas: Replicas,
    graph_api: GraphApi,
    recording_chatlog: RecordingChatlog,
    redis_cluster: RedisCluster,
) -> None:
    cluster_replicas.start(2)
    recording_chatlog.up = False
    try:
        expected = play(cluster_replicas, users=40, messages=3)
        total = sum(len(m) for m in expected.values())
        # Replies never wait for the chatlog.
        wait_for(lambda: len(graph_api.sent) >= total, timeout=120, interval=0.25)
        held = _masters_holding(redis_cluster, "dlg:{outbox*}:chatlog")
        assert len(held) == len(redis_cluster.nodes), held
    finally:
        recording_chatlog.up = True
    wait_for(
        lambda: not _masters_holding(redis_cluster, "dlg:{outbox*}:chatlog"),
        timeout=120,
        interval=0.25,
    )
    inbound = {
        m.message_id
        for m in recording_chatlog.messages.values()
        if m.user.user_id.startswith("user")
    }
    assert inbound >= {mid for mids in expected.values() for mid in mids}
    replies = graph_api.replies_by_user()
    for user, mids in expected.items():
        assert replies[user] == mids, user
