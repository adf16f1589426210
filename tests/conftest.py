"""Session-wide real servers the suites share."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from harness.cassandra import CassandraNode
from harness.redis_servers import RedisCluster, RedisServer
from tests.fuzz import budget
from tests.nlu_process import default_model, nlu_server

__all__ = ["default_model", "nlu_server"]

# CI explores a fixed set of examples, so a landing never fails on a case
# nobody touched; local runs keep drawing new ones (and find new bugs).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

FUZZ_MARKER = "fuzz"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The long fuzzing runs are opt-in by marker: `pytest -m fuzz tests/fuzz`.
    if FUZZ_MARKER in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason=f"long fuzzing run: select it with -m {FUZZ_MARKER}")
    for item in items:
        if item.get_closest_marker(FUZZ_MARKER):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not budget.EXAMPLES:
        return
    terminalreporter.section("fuzzing: examples run")
    for name, count in sorted(budget.EXAMPLES.items()):
        terminalreporter.write_line(f"{name:40} {count:>8,}")
    terminalreporter.write_line(f"{'total':40} {sum(budget.EXAMPLES.values()):>8,}")


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


@pytest.fixture(scope="session")
def cassandra_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CassandraNode]:
    """One real Cassandra node for the whole session (chatlog and fault suites)."""
    node = CassandraNode(tmp_path_factory.mktemp("cassandra"))
    node.start()
    try:
        yield node
    finally:
        node.stop()
