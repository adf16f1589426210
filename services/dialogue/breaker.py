"""A circuit breaker for the Send API, one per process, shared by every worker.

The Send API has no idempotency key, so a request whose answer never came may
have delivered its message: sending it again may repeat it, not sending it may
lose it. The channel accepts one repeat per such reply and per outage, and no
more; the breaker is what makes that hold. It is open:

- after an attempt whose answer was lost (a read time-out, the connection gone
  mid-response): until the API is seen answering again, nobody starts a send;
- after ``failures_to_open`` failures in a row (refused connections, 5xx);
- while the API is *hanging*: calls are in flight, and nothing has answered for
  ``hang_s`` since the oldest of them started. No new send starts into it.

While open, one caller at a time runs a probe (a request that sends nothing to
anyone); an answer closes the breaker and the waiting sends go out, in each
user's order since each user's queue waits behind its head. A failed probe
keeps it open for a cool-down that doubles up to ``max_cooldown_s``.

Any answer below 500 counts as the API answering: a 400 or a rate limit is a
healthy API saying no.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from enum import Enum

from mesh import get_logger
from services.dialogue import metrics

_log = get_logger("dialogue.breaker")


class BreakerState(Enum):
    CLOSED = "closed"
    HANGING = "hanging"
    OPEN = "open"


class SendBreaker:
    def __init__(
        self,
        *,
        failures_to_open: int = 3,
        hang_s: float = 1.0,
        cooldown_s: float = 0.25,
        max_cooldown_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._failures_to_open = failures_to_open
        self._hang_s = hang_s
        self._base_cooldown_s = cooldown_s
        self._max_cooldown_s = max_cooldown_s
        self._clock = clock
        self._in_flight: dict[int, float] = {}
        self._ids = itertools.count()
        self._last_answer = -math.inf
        self._failures = 0
        self._open = False
        self._retry_at = 0.0
        self._cooldown_s = cooldown_s
        self._probing = False
        self._reported = BreakerState.CLOSED
        self._changed: asyncio.Event | None = None

    # ---- state --------------------------------------------------------------

    def state(self) -> BreakerState:
        now = self._clock()
        if self._open:
            state = BreakerState.OPEN
        elif self._hanging(now):
            state = BreakerState.HANGING
        else:
            state = BreakerState.CLOSED
        if state is not self._reported:
            self._reported = state
            metrics.SEND_BREAKER_CHANGES.labels(state.value).inc()
            metrics.SEND_BREAKER_OPEN.set(0 if state is BreakerState.CLOSED else 1)
            log = _log.info if state is BreakerState.CLOSED else _log.warning
            log("Send API breaker " + state.value)
        return state

    def _hanging(self, now: float) -> bool:
        if not self._in_flight:
            return False
        oldest = min(self._in_flight.values())
        return now - max(oldest, self._last_answer) > self._hang_s

    def _hang_ends_at(self) -> float:
        """When the calls in flight will count as hanging, if nothing answers."""
        if not self._in_flight:
            return math.inf
        return max(min(self._in_flight.values()), self._last_answer) + self._hang_s

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_change(self, until: float) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        event = self._changed
        timeout = max(0.001, until - self._clock())  # always yields to the loop
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    # ---- admission ------------------------------------------------------------

    async def admit(
        self, latest_start: float | None, probe: Callable[[float], Awaitable[bool]]
    ) -> bool:
        """Waits until a send may start; False if ``latest_start`` (monotonic)
        passes first. ``probe(timeout_s)`` answers whether the API answered;
        this caller runs it when the breaker is open and nobody else is."""
        waiting = False
        try:
            while True:
                now = self._clock()
                if latest_start is not None and now > latest_start:
                    return False
                state = self.state()
                if state is BreakerState.CLOSED:
                    return True
                if state is BreakerState.OPEN and not self._probing and now >= self._retry_at:
                    await self._probe(probe, latest_start)
                    continue
                if not waiting:
                    waiting = True
                    metrics.SEND_HELD.labels("breaker").inc()
                    metrics.SENDS_WAITING.inc()
                # Open: until the next probe is due, unless one runs now (its end wakes us).
                due = state is BreakerState.OPEN and not self._probing
                until = self._retry_at if due else math.inf
                if latest_start is not None:
                    until = min(until, latest_start)
                # An answer, a failure or a probe's end wakes the waiters sooner.
                await self._wait_change(min(until, now + self._max_cooldown_s))
        finally:
            if waiting:
                metrics.SENDS_WAITING.dec()

    async def _probe(
        self, probe: Callable[[float], Awaitable[bool]], latest_start: float | None
    ) -> None:
        self._probing = True
        answered = False
        try:
            timeout = self._max_cooldown_s
            if latest_start is not None:
                timeout = max(0.05, min(timeout, latest_start - self._clock()))
            answered = await probe(timeout)
        finally:
            self._probing = False
            metrics.SEND_PROBES.labels("answered" if answered else "failed").inc()
            if answered:
                self._last_answer = self._clock()
                self._close()
            else:
                self._cooldown_s = min(self._cooldown_s * 2, self._max_cooldown_s)
                self._retry_at = self._clock() + self._cooldown_s
            self._notify()

    # ---- outcomes of calls ------------------------------------------------------

    def started(self) -> int:
        call = next(self._ids)
        self._in_flight[call] = self._clock()
        return call

    def answered(self, call: int, *, healthy: bool) -> None:
        """An HTTP answer came; ``healthy`` unless it was a 5xx."""
        self._in_flight.pop(call, None)
        self._last_answer = self._clock()
        if healthy:
            self._close()
        else:
            self._failed()
        self._notify()

    def failed(self, call: int, *, lost: bool) -> None:
        """No answer. ``lost``: the request may have arrived (it was written)."""
        self._in_flight.pop(call, None)
        if lost:
            self._trip()
        else:
            self._failed()
        self._notify()

    def abandoned(self, call: int) -> None:
        """The caller gave up on the call (cancelled): no verdict on the API."""
        self._in_flight.pop(call, None)
        self._notify()

    def _failed(self) -> None:
        self._failures += 1
        if self._failures >= self._failures_to_open:
            self._trip()

    def _trip(self) -> None:
        if not self._open:
            self._open = True
            self._retry_at = self._clock() + self._cooldown_s

    def _close(self) -> None:
        self._failures = 0
        self._open = False
        self._cooldown_s = self._base_cooldown_s
