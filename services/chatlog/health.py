"""Keeps grpc.health.v1 in step with the store, and recovers on its own.

``StoreMonitor.run`` connects the store (retrying while it is down, so the
server can start before Cassandra does), then probes it every few seconds.
SERVING while probes succeed; NOT_SERVING from the first failure, whether a
probe or an RPC found it (``report_unavailable`` wakes the loop at once), and
SERVING again when a probe succeeds. The same loop runs the store's
housekeeping (``maintain``) now and then.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from mesh import get_logger
from services.chatlog.errors import StoreUnavailable
from services.chatlog.metrics import STORE_UP
from services.chatlog.store.base import ChatlogStore

_log = get_logger("chatlog.health")


class StoreMonitor:
    def __init__(
        self,
        store: ChatlogStore,
        set_serving: Callable[[bool], Awaitable[None]],
        *,
        interval: float = 2.0,
        maintenance_interval: float = 600.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._store = store
        self._clock = clock
        self._set_serving = set_serving
        self._interval = interval
        self._maintenance_interval = maintenance_interval
        self._wake = asyncio.Event()
        self._stopping = False
        self._opened = False
        self.serving: bool | None = None  # None until the first probe

    def report_unavailable(self) -> None:
        """An RPC found the store down: re-probe now rather than at the next tick.

        Only while SERVING: once NOT_SERVING the regular probes are enough, and a burst of
        failing RPCs must not turn into a burst of probes.
        """
        if self.serving:
            self._wake.set()

    def stop(self) -> None:
        """Ends ``run`` at its next step (a flag, because Python 3.11's ``wait_for`` can
        swallow a cancellation that races with its timeout)."""
        self._stopping = True
        self._wake.set()

    async def _probe(self) -> None:
        if not self._opened:
            await self._store.open()
            self._opened = True
        await self._store.ping()

    async def _update(self, up: bool, why: str = "") -> None:
        STORE_UP.labels(self._store.name).set(1 if up else 0)
        if up == self.serving:
            return
        self.serving = up
        await self._set_serving(up)
        if up:
            _log.info("store reachable: SERVING", extra={"backend": self._store.name})
        else:
            _log.warning(
                "store unreachable: NOT_SERVING until it answers again",
                extra={"backend": self._store.name, "error": why},
            )

    async def check(self) -> bool:
        """Probes once and updates the health status; True when the store answered."""
        try:
            async with asyncio.timeout(max(self._interval, 5.0) + 5.0):
                await self._probe()
        except (StoreUnavailable, TimeoutError) as exc:
            await self._update(False, str(exc) or type(exc).__name__)
            return False
        await self._update(True)
        return True

    async def run(self) -> None:
        last_maintenance = 0.0
        failed_opens = 0
        while not self._stopping:
            self._wake.clear()
            up = await self.check()
            # Until the first connection, retry less and less often (up to 30 s): each try
            # builds a whole driver; once connected, the driver reconnects by itself.
            failed_opens = 0 if self._opened else failed_opens + 1
            wait = min(self._interval * 2 ** max(0, failed_opens - 1), 30.0)
            if up and time.monotonic() - last_maintenance >= self._maintenance_interval:
                last_maintenance = time.monotonic()
                try:
                    await self._store.maintain(self._clock())
                except StoreUnavailable as exc:
                    _log.warning("store maintenance failed", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
