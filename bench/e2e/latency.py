"""What one user feels on an idle system.

*One at a time*: one user sends a message, waits for its reply, sends the
next. The latency is from the delivery's first byte to the reply leaving the
system (this stack: the Send API call reaching the Graph API stand-in; Rasa:
the REST response, which is the reply).

*Burst*: one user sends ``size`` messages back to back; the time is until all
of them are answered. Delivered two ways: as Messenger does (each delivery
after the previous one's 200) and overlapping (all at once, in order).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bench.e2e.load import Delivery, Message, percentiles

# Fails the probe rather than waiting forever on a lost reply.
REPLY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Probe:
    messages: int
    p50_ms: float
    p99_ms: float
    bursts: int
    burst_size: int
    # Until all of a burst's messages were answered: p50 and worst, in ms.
    burst_messenger_ms: tuple[float, float]
    burst_overlapping_ms: tuple[float, float]
    missing: int


async def probe(
    texts: Sequence[str],
    run: str,
    messages: int,
    bursts: int,
    burst_size: int,
    deliver: Callable[[Message], Awaitable[Delivery]],
    wait_reply: Callable[[str, float], Awaitable[float | None]],
) -> Probe:
    missing = 0
    latencies: list[float] = []
    user = f"u-{run}-single"
    for seq in range(messages):
        message = Message(user, seq, f"m-{run}-single-{seq}", texts[seq % len(texts)])
        started = time.monotonic()
        await deliver(message)
        answered = await wait_reply(message.mid, REPLY_TIMEOUT_S)
        if answered is None:
            missing += 1
        else:
            latencies.append(answered - started)

    async def burst(number: int, overlapping: bool) -> float:
        nonlocal missing
        kind = "o" if overlapping else "m"
        batch = [
            Message(
                f"u-{run}-burst-{kind}{number}",
                seq,
                f"m-{run}-burst-{kind}{number}-{seq}",
                texts[(number * burst_size + seq) % len(texts)],
            )
            for seq in range(burst_size)
        ]
        started = time.monotonic()
        if overlapping:
            sends: list[asyncio.Future[Delivery]] = []
            for message in batch:
                sends.append(asyncio.ensure_future(deliver(message)))
                await asyncio.sleep(0)  # each request leaves before the next one starts
            await asyncio.gather(*sends)
        else:
            for message in batch:
                await deliver(message)
        times = await asyncio.gather(*(wait_reply(m.mid, REPLY_TIMEOUT_S) for m in batch))
        missing += sum(1 for at in times if at is None)
        return max(at for at in times if at is not None) - started if any(times) else 0.0

    messenger = [await burst(n, overlapping=False) for n in range(bursts)]
    overlapping = [await burst(n, overlapping=True) for n in range(bursts)]
    p50, p99 = percentiles(latencies)
    return Probe(
        messages=messages,
        p50_ms=p50,
        p99_ms=p99,
        bursts=bursts,
        burst_size=burst_size,
        burst_messenger_ms=(percentiles(messenger)[0], max(messenger, default=0.0) * 1000),
        burst_overlapping_ms=(percentiles(overlapping)[0], max(overlapping, default=0.0) * 1000),
        missing=missing,
    )
