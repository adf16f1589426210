"""Fixtures of the fault suite: a Redis of each test's own (so restarting it
disturbs nobody else), stand-ins that record, and dialogue replicas."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb

from harness.cassandra import CassandraNode
from tests.dialogue.conftest import Replicas, message_event
from tests.faults import tally
from tests.faults.load import Outgoing
from tests.faults.system import (
    FaultRedis,
    GraphApi,
    RecordingChatlog,
    SwitchableNlu,
    dialogue_env,
)

_ACCEPTED = {pb.SUBMIT_STATUS_ACCEPTED, pb.SUBMIT_STATUS_DUPLICATE}


@pytest.fixture
def fault_redis(tmp_path: Path) -> Iterator[FaultRedis]:
    (tmp_path / "redis").mkdir()
    server = FaultRedis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def graph_api() -> Iterator[GraphApi]:
    api = GraphApi().start()
    # A sender killed mid-request leaves a broken pipe behind: expected here, not news.
    api._server.handle_error = lambda *args: None  # type: ignore[method-assign]
    yield api
    api.stop()


@pytest.fixture
def nlu() -> Iterator[SwitchableNlu]:
    server = SwitchableNlu()
    yield server
    server.delay_s = 0.0  # lets parked calls return before the server goes
    server.stop()


@pytest.fixture
def recording_chatlog() -> Iterator[RecordingChatlog]:
    chatlog = RecordingChatlog()
    yield chatlog
    chatlog.stop()


@pytest.fixture
def replicas(
    fault_redis: FaultRedis,
    graph_api: GraphApi,
    nlu: SwitchableNlu,
    recording_chatlog: RecordingChatlog,
    tmp_path: Path,
) -> Iterator[Replicas]:
    """Dialogue processes on the test's Redis; their chatlog is the recording stand-in
    unless a test starts them with another CHATLOG_ADDRESS."""
    group = Replicas(
        tmp_path, dialogue_env(fault_redis.url, graph_api, nlu.address, recording_chatlog.address)
    )
    yield group
    group.stop_all()


def submitter(
    replicas: Replicas, *, seed: int = 0, max_copies: int = 1
) -> Callable[[Outgoing], None]:
    """A ``deliver`` for ``Load``: SubmitEvents to a random live replica, sent
    1..``max_copies`` times (Messenger redelivers), retried until accepted."""
    rng = random.Random(seed)

    def deliver(out: Outgoing) -> None:
        event = message_event(out.user, out.mid, out.text)
        request = pb.SubmitEventsRequest(events=[event])
        for _ in range(rng.randint(1, max_copies)):
            deadline = time.monotonic() + 60
            while True:
                process = rng.choice(list(replicas.processes))
                try:
                    reply = replicas.stub_for(process).SubmitEvents(request, timeout=10)
                    if all(r.status in _ACCEPTED for r in reply.results):
                        break
                except grpc.RpcError as exc:
                    # A replica that just died, or Redis away: Messenger retries those.
                    if exc.code() not in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ):
                        raise
                if time.monotonic() > deadline:
                    raise AssertionError(f"{out.mid} never accepted")
                time.sleep(0.1)

    return deliver


@pytest.fixture(scope="session")
def faults_cassandra(cassandra_node: CassandraNode) -> CassandraNode:
    """The session's Cassandra node (shared with the chatlog suite)."""
    return cassandra_node


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Each fault test's counts, in the run's output even when it passed.
    if tally.REPORTED:
        terminalreporter.section("faults: lost / duplicated / reordered")
        for line in tally.REPORTED:
            terminalreporter.line(line)
