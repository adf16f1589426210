"""The test session's Redis servers are real and shard keys across masters."""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster as ClusterClient

from harness.redis_servers import RedisCluster, RedisServer


def test_standalone_answers(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("k", "v")
    assert client.get("k") == b"v"
    client.close()


def test_cluster_spreads_slots_over_three_masters(redis_cluster: RedisCluster) -> None:
    client = ClusterClient.from_url(redis_cluster.url)
    for i in range(30):
        client.set(f"user:{i}", i)
    nodes = {client.get_node_from_key(f"user:{i}").port for i in range(30)}  # type: ignore[no-untyped-call]
    assert len(nodes) == 3
    assert client.get("user:7") == b"7"
    client.close()
