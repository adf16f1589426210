"""What a message costs in Redis, read from the server's own counters.

``INFO`` before and after a run: *commands* are every command Redis executed
(``commandstats``, which also counts the calls a Lua script makes inside
Redis), *scripts* the ``EVAL``/``EVALSHA``/``FCALL`` among them, and *round
trips* the reads Redis processed from its clients (``total_reads_processed``):
a pipeline, a ``MULTI`` block or a script normally arrives in one read, so
that is the number of times a client waited for Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCRIPT_COMMANDS = ("cmdstat_eval", "cmdstat_evalsha", "cmdstat_fcall", "cmdstat_evalsha_ro")


@dataclass(frozen=True)
class Counters:
    commands: int
    scripts: int
    reads: int


@dataclass(frozen=True)
class Cost:
    """Per answered message."""

    commands: float
    scripts: float
    round_trips: float


def counters(client: Any) -> Counters:
    """One ``INFO all`` (one command, one read) on a redis-py client."""
    info = client.info("all")
    stats = {k: v for k, v in info.items() if k.startswith("cmdstat_")}
    return Counters(
        commands=sum(int(v["calls"]) for v in stats.values()),
        scripts=sum(int(stats[name]["calls"]) for name in SCRIPT_COMMANDS if name in stats),
        reads=int(info["total_reads_processed"]),
    )


def per_message(before: Counters, after: Counters, answered: int) -> Cost | None:
    """The difference over ``answered`` messages, less the ``INFO`` that read ``after``."""
    if answered <= 0:
        return None
    return Cost(
        commands=(after.commands - before.commands - 1) / answered,
        scripts=(after.scripts - before.scripts) / answered,
        round_trips=(after.reads - before.reads - 1) / answered,
    )
