"""How many examples each fuzzing property runs, and how many it did run.

Normal runs (CI) use small fixed sizes. The long runs (marked ``fuzz``)
share one budget, ``FUZZ_EXAMPLES`` (default 110,000 examples in all), in the
fixed shares below: slow properties (a Converse waits for the bot, a parse
runs the Rasa model) get small shares, cheap ones large.

Every property counts the examples it ran in ``EXAMPLES``; the session prints
the counts at the end (tests/conftest.py), so a long run reports its total.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis.strategies import SearchStrategy

_T = TypeVar("_T")

LONG_TOTAL = int(os.environ.get("FUZZ_EXAMPLES", "110000"))

_SHARES = {
    "webhook.messenger_shaped": 150,
    "webhook.random_bytes": 150,
    "webhook.unsigned": 150,
    "dialogue.submit_events": 150,
    "dialogue.converse": 20,
    "dialogue.state_handoff_dead_letters": 80,
    "dialogue.agent_messages": 20,
    "dialogue.raw_bytes": 100,
    "chatlog.requests": 150,
    "chatlog.raw_bytes": 100,
    "nlu.requests": 10,
    "nlu.raw_bytes": 20,
}

EXAMPLES: Counter[str] = Counter()

# A long property may run past the suite's 600 s time-out.
LONG_TIMEOUT_S = 3600


def long_examples(name: str) -> int:
    """This property's share of the long run's ``FUZZ_EXAMPLES``."""
    return max(1, round(LONG_TOTAL * _SHARES[name] / sum(_SHARES.values())))


def fuzz_settings(examples: int) -> settings:
    """No deadline (the machine is shared) and no example database: the runs are
    inner functions (see ``run``), which Hypothesis cannot tell apart by name."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


def count(name: str) -> None:
    EXAMPLES[name] += 1


def run(name: str, examples: int, values: SearchStrategy[_T], check: Callable[[_T], None]) -> None:
    """Checks ``check`` on ``examples`` values, counting them under ``name``.

    An inner test, so the caller can check what must hold after the whole run.
    """

    @fuzz_settings(examples)
    @given(values)
    def each(value: _T) -> None:
        count(name)
        check(value)

    each()
