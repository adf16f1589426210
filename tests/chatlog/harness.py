"""The chatlog under test: the real server in a thread (the Cassandra node is
``harness.cassandra.CassandraNode``).

``Harness`` runs a ``ChatlogApp`` (the same object
``serve()`` runs) on a port chosen by the OS, in a thread with its own event
loop, so tests talk to it over real gRPC with plain synchronous stubs (and
Hypothesis can drive them).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from mesh.tenants import Tenant, Tenants
from services.chatlog.server import ChatlogApp
from services.chatlog.settings import ChatlogSettings

_T = TypeVar("_T")

# Tests take a fresh tenant each, so they never see each other's rows.
TENANTS = Tenants([Tenant("default"), *(Tenant(f"t{n:03d}") for n in range(2000))])
TOKEN_SECRET = b"chatlog-tests-page-token-secret!"


class Harness:
    """A ChatlogApp serving on 127.0.0.1, on its own event loop in a thread."""

    def __init__(
        self,
        settings: ChatlogSettings,
        tenants: Tenants = TENANTS,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self._tenants = tenants
        self._clock = clock
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.app: ChatlogApp = self.call(self._create())
        self.port: int = self.call(self.app.start())
        self.backend = self.app.store.name

    async def _create(self) -> ChatlogApp:
        return ChatlogApp(self.settings, self._tenants, clock=self._clock)

    def call(self, coroutine: Coroutine[Any, Any, _T], timeout: float = 60.0) -> _T:
        """Runs a coroutine on the server's loop (to reach its store directly)."""
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.app.monitor.serving:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {self.backend} store did not answer in {timeout}s")
            time.sleep(0.05)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        try:
            self.call(self.app.stop(), timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
