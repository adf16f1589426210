"""Redis (append-only, appendfsync always) stopped and started again while many users talk."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.dialogue.conftest import Replicas
from tests.faults.conftest import submitter
from tests.faults.load import Load, wait_for
from tests.faults.system import FaultRedis, GraphApi
from tests.faults.tally import check, report, tally

pytestmark = [pytest.mark.faults, pytest.mark.slow]

REPLICAS, WORKERS = 2, 8
# A graceful stop, then a crash: with appendfsync always neither may lose an accepted event.
RESTARTS = (signal.SIGTERM, signal.SIGKILL)


def test_redis_restarts_under_load(
    replicas: Replicas,
    graph_api: GraphApi,
    fault_redis: FaultRedis,
    record_property: Callable[[str, object], None],
) -> None:
    graph_api.delay_s = 0.03
    replicas.start(REPLICAS, DIALOGUE_LEASE_MS="1500", DIALOGUE_WORKERS=str(WORKERS))
    load = Load(60, 15, submitter(replicas, max_copies=2), span_s=14, clients=6).start()
    at_fault: list[tuple[int, int]] = []
    downtime: list[float] = []
    for number, sig in enumerate(RESTARTS):
        load.sleep_until(3.0 + 5.0 * number)
        at_fault.append(load.snapshot(graph_api.replies_by_user()))
        downtime.append(round(fault_redis.restart(down_s=2.0, sig=sig), 1))
    load.join(timeout=90)
    load.during(at_fault)

    def answered() -> bool:
        return tally(load.expected, graph_api.replies_by_user()).complete

    drained = wait_for(answered, timeout=60, interval=0.25)
    time.sleep(1.0)
    result = tally(load.expected, graph_api.replies_by_user())
    # A reply sent just before Redis went away may go out again once (its
    # "sent" mark was not written): at most once per user per restart, and
    # only for users being worked on then (REPLICAS * WORKERS at a time).
    allowed = len(RESTARTS) * REPLICAS * WORKERS
    report(
        "redis restart (SIGTERM, SIGKILL; appendfsync always)",
        result,
        allowed,
        record_property,
        down_s=downtime,
        unanswered_at_restarts=[u for _, u in at_fault],
        drained_after_s=round(drained, 1),
    )
    check(result, allowed, per_user=len(RESTARTS))
    # Nothing waits in the dead letters either.
    client = fault_redis.client()
    assert not [k for k in client.scan_iter(match="dlq:*")], "events went to the dead letters"
    client.close()
