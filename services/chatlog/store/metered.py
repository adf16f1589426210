"""A store that times every operation and counts its failures, per backend."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from services.chatlog import metrics
from services.chatlog.store.base import ChatlogStore


class _Metered:
    def __init__(self, store: ChatlogStore) -> None:
        self._store = store
        self._backend = store.name

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name.startswith("_") or not callable(attribute):
            return attribute
        operation: Callable[..., Any] = attribute

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = operation(*args, **kwargs)
                if isinstance(result, Awaitable):
                    result = await result
                return result
            except Exception:
                metrics.STORE_ERRORS.labels(self._backend, name).inc()
                raise
            finally:
                metrics.STORE_SECONDS.labels(self._backend, name).observe(
                    time.perf_counter() - started
                )

        return timed


def metered(store: ChatlogStore) -> ChatlogStore:
    return cast(ChatlogStore, _Metered(store))
