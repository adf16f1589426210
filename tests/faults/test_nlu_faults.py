"""The NLU slow, then too slow, then gone, then back, while many users talk.

A slow NLU delays replies; one slower than the dialogue's NLU time-out, or not
listening at all, gets the ``nlu_unavailable`` response instead. Either way
every message is answered once and in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from services.dialogue.domain import DEFAULT_DOMAIN, load_domain
from tests.dialogue.conftest import Replicas
from tests.faults.conftest import submitter
from tests.faults.load import Load, wait_for
from tests.faults.system import GraphApi, SwitchableNlu
from tests.faults.tally import check, report, tally

pytestmark = [pytest.mark.faults, pytest.mark.slow]

NLU_TIMEOUT_S = 2.0


def test_slow_and_stopped_nlu_under_load(
    replicas: Replicas,
    graph_api: GraphApi,
    nlu: SwitchableNlu,
    record_property: Callable[[str, object], None],
) -> None:
    unavailable = load_domain(DEFAULT_DOMAIN).responses["nlu_unavailable"][0].text
    replicas.start(2, NLU_TIMEOUT_MS=str(int(NLU_TIMEOUT_S * 1000)))
    load = Load(40, 16, submitter(replicas), span_s=16, clients=4).start()
    phases: dict[str, tuple[float, float]] = {}

    def phase(name: str, until_s: float) -> None:
        started = time.monotonic()
        load.sleep_until(until_s)
        phases[name] = (started, time.monotonic())

    phase("normal", 3.0)
    nlu.delay_s = NLU_TIMEOUT_S / 2  # slow, within the time-out
    phase("slow", 6.0)
    nlu.delay_s = NLU_TIMEOUT_S * 1.5  # past the time-out
    phase("too slow", 9.0)
    nlu.delay_s = 0.0
    nlu.stop_serving()  # connection refused
    phase("down", 12.0)
    nlu.serve_again()
    load.join()

    def answered() -> bool:
        return tally(load.expected, graph_api.replies_by_user()).complete

    drained = wait_for(answered, timeout=60, interval=0.25)
    time.sleep(1.0)
    result = tally(load.expected, graph_api.replies_by_user())
    with graph_api.lock:
        sent = list(graph_api.sent)
    fallbacks = sum(1 for m in sent if m.text == unavailable)
    waits = {m.in_reply_to: m.time - load.sent_at[m.in_reply_to] for m in sent}
    # Understood, but only after the slow NLU answered.
    delayed = [
        m for m in sent if m.text != unavailable and waits[m.in_reply_to] >= NLU_TIMEOUT_S / 2
    ]
    # No crash here: not a single repeat is allowed.
    report(
        "nlu slow, past its time-out, stopped, back",
        result,
        0,
        record_property,
        nlu_unavailable=fallbacks,
        delayed=len(delayed),
        max_wait_s=round(max(waits.values()), 1),
        drained_after_s=round(drained, 1),
    )
    check(result, 0, per_user=0)
    assert delayed, "the slow NLU delayed nothing"
    assert fallbacks > 0, "neither the time-out nor the stop led to nlu_unavailable"
    assert fallbacks < result.messages, "nothing was understood"
    # Once the NLU is back, the last message of every user is understood again.
    last = {mids[-1] for mids in load.expected.values()}
    assert not [m for m in sent if m.in_reply_to in last and m.text == unavailable]
