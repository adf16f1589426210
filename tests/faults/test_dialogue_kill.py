"""kill -9 of dialogue replicas, one every few seconds, while many users talk."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.dialogue.conftest import Replicas, settled
from tests.faults.conftest import submitter
from tests.faults.load import Load, wait_for
from tests.faults.system import GraphApi
from tests.faults.tally import check, report, tally

pytestmark = [pytest.mark.faults, pytest.mark.slow]

WORKERS = 8
KILLS = 4


def test_kill_9_of_dialogue_replicas_under_load(
    replicas: Replicas, graph_api: GraphApi, record_property: Callable[[str, object], None]
) -> None:
    graph_api.delay_s = 0.05  # a reply takes a moment, so kills land mid-send too
    settings = {"DIALOGUE_LEASE_MS": "1500", "DIALOGUE_WORKERS": str(WORKERS)}
    replicas.start(3, **settings)
    load = Load(80, 15, submitter(replicas, max_copies=2), span_s=18, clients=6).start()
    at_fault: list[tuple[int, int]] = []
    for kill in range(KILLS):
        load.sleep_until(3.0 * (kill + 1))
        at_fault.append(load.snapshot(graph_api.replies_by_user()))
        replicas.kill(replicas.processes[0])  # the oldest: SIGKILL, no clean-up
        replicas.start(1, **settings)
    load.join()
    load.during(at_fault)

    def answered() -> bool:
        return tally(load.expected, graph_api.replies_by_user()).complete

    drained = wait_for(answered, timeout=60, interval=0.25)
    # Every queue empty and no lease held: a late duplicate would have shown by now.
    wait_for(lambda: settled(replicas, load.expected), timeout=60, interval=0.25)
    result = tally(load.expected, graph_api.replies_by_user())
    # At most one repeat per user per crash, and only for users a killed
    # replica was working on: at most WORKERS of them per crash.
    allowed = KILLS * WORKERS
    report(
        f"kill-9 dialogue x{KILLS}",
        result,
        allowed,
        record_property,
        unanswered_at_kills=[u for _, u in at_fault],
        drained_after_s=round(drained, 1),
    )
    check(result, allowed, per_user=KILLS)
