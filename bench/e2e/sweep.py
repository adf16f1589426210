"""The capacity curve: open-loop steps of offered load, and the knee.

Each step offers ``rate`` messages per second for ``step_s`` seconds, as a
Poisson stream, whatever the system answers (open loop: a slow system does
not slow the sender down, as Messenger's users are not slowed down). Users
send one message every ``user_gap_s`` on average, so a step at 320 msg/s has
1,600 users. Each message is delivered once: no duplicates, no retries.

The first ``warm_fraction`` of a step is left out of its latencies and its
throughput (the queues are filling up); after the step the driver waits for
the step's replies (at most ``drain_s``) and then for the system to go idle
before the next step. A message not answered by then counts as an infinite
latency, so a step that cannot keep up has an infinite p99.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.e2e.load import Delivery, Message, percentile


@dataclass
class StepRecord:
    """What the driver saw in one step, in ``time.monotonic()`` seconds."""

    rate: float
    started: float = 0.0
    step_s: float = 0.0
    warm_s: float = 0.0
    sent_at: dict[str, float] = field(default_factory=dict)
    # Each message's user.
    users: dict[str, str] = field(default_factory=dict)
    acked_in: dict[str, float] = field(default_factory=dict)
    # Deliveries that got no 200: by status code or error.
    failures: dict[str, int] = field(default_factory=dict)
    drained: bool = True


@dataclass(frozen=True)
class Step:
    """One step of the curve; latencies in ms (``inf``: not all answered in time)."""

    offered: float
    sent_per_s: float
    answered_per_s: float
    messages: int
    answered: int
    reply_p50_ms: float
    reply_p99_ms: float
    ack_p50_ms: float
    ack_p99_ms: float
    drained: bool
    # Summed over the system's processes, per answered message of the step.
    cpu_s_per_msg: float = math.nan
    driver_cpu_s_per_msg: float = math.nan
    standin_cpu_s_per_msg: float = math.nan
    peak_rss_mb: float = math.nan
    redis_commands_per_msg: float = math.nan
    redis_scripts_per_msg: float = math.nan
    redis_round_trips_per_msg: float = math.nan
    # Cores busy with processes outside the bench during the step (a shared machine).
    others_cores: float = math.nan
    # Messages never answered, by the reason the server's own record gives.
    unanswered: dict[str, int] = field(default_factory=dict)
    # Deliveries without a 200 (each message is delivered once in a step).
    failed_deliveries: dict[str, int] = field(default_factory=dict)


def knee(steps: Sequence[Step], limit_ms: float = 2000.0) -> float | None:
    """The highest offered load whose reply p99 stayed under ``limit_ms``."""
    passing = [step.offered for step in steps if step.reply_p99_ms < limit_ms]
    return max(passing, default=None)


def measure(record: StepRecord, replies: Callable[[str], float | None]) -> Step:
    """Throughput and latencies of a step from its record and each message's first reply."""
    window_start = record.started + record.warm_s
    window_end = record.started + record.step_s
    window = record.step_s - record.warm_s
    measured = [mid for mid, at in record.sent_at.items() if at >= window_start]
    first = {mid: replies(mid) for mid in record.sent_at}
    answered = {mid: at for mid, at in first.items() if at is not None}
    in_window = sum(1 for at in answered.values() if window_start <= at <= window_end)
    latencies = [
        answered[mid] - record.sent_at[mid] if mid in answered else math.inf for mid in measured
    ]
    acks = [record.acked_in.get(mid, math.inf) for mid in measured]
    return Step(
        offered=record.rate,
        sent_per_s=len(measured) / window if window > 0 else math.nan,
        answered_per_s=in_window / window if window > 0 else math.nan,
        messages=len(record.sent_at),
        answered=len(answered),
        reply_p50_ms=percentile(latencies, 0.5) * 1000,
        reply_p99_ms=percentile(latencies, 0.99) * 1000,
        ack_p50_ms=percentile(acks, 0.5) * 1000,
        ack_p99_ms=percentile(acks, 0.99) * 1000,
        drained=record.drained,
        failed_deliveries=dict(record.failures),
    )


async def offer(
    rate: float,
    step_s: float,
    warm_fraction: float,
    drain_s: float,
    user_gap_s: float,
    texts: Sequence[str],
    run: str,
    deliver: Callable[[Message], Awaitable[Delivery]],
    answered: Callable[[list[str]], int],
    seed: int = 11,
) -> StepRecord:
    """Plays one step and waits for its replies (at most ``drain_s`` after it)."""
    rng = random.Random(seed)
    users = max(1, round(rate * user_gap_s))
    record = StepRecord(rate=rate, step_s=step_s, warm_s=step_s * warm_fraction)
    pending: set[asyncio.Task[Any]] = set()

    async def attempt(message: Message) -> None:
        started = time.monotonic()
        try:
            result = await deliver(message)
        except (OSError, asyncio.IncompleteReadError) as error:
            kind = type(error).__name__
            record.failures[kind] = record.failures.get(kind, 0) + 1
            return
        if result.status == 200:
            record.acked_in[message.mid] = time.monotonic() - started
        else:
            kind = f"HTTP {result.status}"
            record.failures[kind] = record.failures.get(kind, 0) + 1

    record.started = time.monotonic()
    due = record.started
    count = 0
    while True:
        due += rng.expovariate(rate)
        if due - record.started >= step_s:
            break
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        user = count % users
        message = Message(f"u-{run}-{user}", count // users, f"m-{run}-{count}", rng.choice(texts))
        record.sent_at[message.mid] = time.monotonic()
        record.users[message.mid] = message.user
        task = asyncio.create_task(attempt(message))
        pending.add(task)
        task.add_done_callback(pending.discard)
        count += 1
    await asyncio.sleep(max(0.0, record.started + step_s - time.monotonic()))
    mids = list(record.sent_at)
    deadline = time.monotonic() + drain_s
    while answered(mids) < len(mids) or pending:
        if time.monotonic() > deadline:
            record.drained = False
            break
        await asyncio.sleep(0.05)
    for task in list(pending):
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return record
