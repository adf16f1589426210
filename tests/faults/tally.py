"""Lost, duplicated and reordered replies, counted the same way for every fault test.

Each inbound message must lead to exactly one Send API call carrying
``{"in_reply_to": mid}``. For one user, the recorded ``in_reply_to`` values are
compared with the mids the user sent, in order:

- an immediate repeat (``a a b``) is a *duplicate*: a reply sent again after a
  crash, before the worker could mark it sent;
- a mid never answered is *lost*;
- an answer out of the user's order (``b a``, or a repeat that is not
  immediate, ``a b a``) is *reordered*: the number of answers to drop to leave
  the rest in order (the longest in-order run is kept);
- an answer to a mid nobody sent is *unexpected*.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class UserTally:
    lost: list[str]
    duplicated: int
    reordered: int
    unexpected: list[str]


@dataclass
class Tally:
    messages: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    unexpected: int = 0
    max_duplicated_per_user: int = 0
    users: dict[str, UserTally] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every message answered (duplicates and disorder aside)."""
        return self.lost == 0

    def problems(self, limit: int = 5) -> str:
        """A few users with something wrong, for an assertion message."""
        bad = [
            f"{user}: lost={t.lost[:5]} duplicated={t.duplicated} reordered={t.reordered} "
            f"unexpected={t.unexpected[:5]}"
            for user, t in sorted(self.users.items())
            if t.lost or t.reordered or t.unexpected or t.duplicated
        ]
        return "; ".join(bad[:limit]) + (f" (+{len(bad) - limit} more)" if len(bad) > limit else "")


def _in_order_length(positions: Sequence[int]) -> int:
    """Length of the longest strictly increasing subsequence."""
    tails: list[int] = []
    for position in positions:
        at = bisect.bisect_left(tails, position)
        if at == len(tails):
            tails.append(position)
        else:
            tails[at] = position
    return len(tails)


def tally_user(expected: Sequence[str], answered: Sequence[str]) -> UserTally:
    collapsed: list[str] = []
    for mid in answered:
        if not collapsed or collapsed[-1] != mid:
            collapsed.append(mid)
    index = {mid: i for i, mid in enumerate(expected)}
    unexpected = [mid for mid in collapsed if mid not in index]
    known = [index[mid] for mid in collapsed if mid in index]
    return UserTally(
        lost=[mid for mid in expected if mid not in set(collapsed)],
        duplicated=len(answered) - len(collapsed),
        reordered=len(known) - _in_order_length(known),
        unexpected=unexpected,
    )


def tally(expected: Mapping[str, Sequence[str]], answered: Mapping[str, Sequence[str]]) -> Tally:
    """``expected``: the mids each user sent, in order; ``answered``: the
    ``in_reply_to`` of each reply the user got, in the order sent."""
    result = Tally()
    for user in sorted(set(expected) | set(answered)):
        one = tally_user(expected.get(user, []), answered.get(user, []))
        result.users[user] = one
        result.messages += len(expected.get(user, []))
        result.lost += len(one.lost)
        result.duplicated += one.duplicated
        result.reordered += one.reordered
        result.unexpected += len(one.unexpected)
        result.max_duplicated_per_user = max(result.max_duplicated_per_user, one.duplicated)
    return result


# Every line reported in this session, for the summary at the end of the run.
REPORTED: list[str] = []


def report(
    name: str,
    result: Tally,
    allowed_duplicates: int,
    record_property: Callable[[str, object], None] | None = None,
    **extra: object,
) -> str:
    """Prints (and records as a property) the one line every fault test ends with."""
    line = (
        f"FAULT {name}: messages={result.messages} lost={result.lost} "
        f"duplicated={result.duplicated} (allowed <= {allowed_duplicates}) "
        f"reordered={result.reordered}"
    )
    if result.unexpected:
        line += f" unexpected={result.unexpected}"
    for key, value in extra.items():
        line += f" {key}={value}"
    print(line)
    REPORTED.append(line)
    if record_property is not None:
        record_property("fault", line)
    return line


def check(result: Tally, allowed_duplicates: int, per_user: int) -> None:
    """The invariants: nothing lost or reordered, duplicates within their bounds."""
    assert result.lost == 0, result.problems()
    assert result.reordered == 0, result.problems()
    assert result.unexpected == 0, result.problems()
    assert result.duplicated <= allowed_duplicates, result.problems()
    assert result.max_duplicated_per_user <= per_user, result.problems()
