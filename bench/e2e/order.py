"""Who reordered a user's messages: the way in, or the server.

A reply is *late* when a later message of the same user was answered before
it. The server's own record says in which order it *received* the messages
(this stack: the chatlog's ``received_time`` of each inbound message, stamped
by the gateway; Rasa: the order of the user events in its tracker). A late
reply is the server's doing when one of the messages that overtook it was
received after it; otherwise the messages already arrived in that order and
the server answered them as they came.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Ordering:
    """Counts of messages, over all users."""

    # Received by the server after a later message of the same user.
    received_late: int
    # Answered after a later message of the same user was answered.
    answered_late: int
    # Answered late although every message that overtook it was received before it:
    # the order changed on the way in.
    late_on_arrival: int
    # Answered late, overtaken by a message the server received after it.
    late_by_server: int
    # Answered late, with a message missing from the server's record.
    unknown: int


def late(order: Sequence[int]) -> set[int]:
    """The sequence numbers that come after a higher one in ``order``."""
    result: set[int] = set()
    highest = -1
    for seq in order:
        if seq < highest:
            result.add(seq)
        highest = max(highest, seq)
    return result


def attribute(
    answered: Mapping[str, Sequence[int]],
    received: Mapping[str, Mapping[int, float]],
) -> Ordering:
    """``answered``: per user, sequence numbers in the order of their first replies.

    ``received``: per user, when the server received each sequence number
    (any clock, compared only within one user).
    """
    received_late = answered_late = on_arrival = by_server = unknown = 0
    for user, order in answered.items():
        times = received.get(user, {})
        received_late += len(late(sorted(times, key=lambda seq: (times[seq], seq))))
        for index, seq in enumerate(order):
            overtakers = [other for other in order[:index] if other > seq]
            if not overtakers:
                continue
            answered_late += 1
            if seq not in times or any(other not in times for other in overtakers):
                unknown += 1
            elif any(times[other] > times[seq] for other in overtakers):
                by_server += 1
            else:
                on_arrival += 1
    return Ordering(received_late, answered_late, on_arrival, by_server, unknown)
