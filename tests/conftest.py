"""Session-wide real servers the suites share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.nlu_process import default_model, nlu_server
from tests.redis_servers import RedisCluster, RedisServer

__all__ = ["default_model", "nlu_server"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()
