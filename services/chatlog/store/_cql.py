"""cassandra-driver's callbacks, bridged to asyncio.

The driver runs its I/O on its own threads (the libev reactor) and reports
results through ``ResponseFuture`` callbacks. ``PagedQuery`` turns them into
awaitables, page by page, so the event loop never blocks on Cassandra, and
``merge`` reads several partitions at once in one sort order (a day's shards,
an intent's months) with a heap, pulling pages only as the merge needs them.
Every driver error that means "Cassandra cannot answer now" becomes
``StoreUnavailable``; the rest (a CQL syntax error) is a bug and propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from cassandra import (
    AuthenticationFailed,
    OperationTimedOut,
    RequestExecutionException,
    Unauthorized,
    UnresolvableContactPoints,
)
from cassandra import protocol as _protocol
from cassandra.cluster import NoHostAvailable, ResponseFuture, Session
from cassandra.connection import ConnectionBusy, ConnectionException
from cassandra.query import Statement

from services.chatlog.errors import StoreUnavailable

Row = Any  # the driver's named tuples
# Errors that mean "not now" (a bug such as InvalidRequest is not among them).
_UNAVAILABLE = (
    NoHostAvailable,
    OperationTimedOut,
    RequestExecutionException,  # Unavailable, read/write timeouts and failures
    _protocol.RequestExecutionException,  # overloaded, bootstrapping (passed on untranslated)
    _protocol.ServerError,
    ConnectionException,
    ConnectionBusy,
    Unauthorized,  # a misconfigured role: nothing the client can fix
    AuthenticationFailed,
    UnresolvableContactPoints,
)


def unavailable(exc: BaseException) -> StoreUnavailable:
    detail = str(exc) or type(exc).__name__
    return StoreUnavailable(f"Cassandra cannot answer: {detail[:300]}")


class PagedQuery:
    """One query, read a page at a time (``fetch_size`` rows) without blocking the loop."""

    def __init__(
        self,
        session: Session,
        statement: Statement,
        *,
        timeout: float,
    ) -> None:
        self._session = session
        self._statement = statement
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._future: ResponseFuture | None = None
        self._waiter: asyncio.Future[list[Row]] | None = None
        self.exhausted = False

    def _on_rows(self, rows: list[Row]) -> None:  # on a driver thread
        self._deliver(rows, None)

    def _on_error(self, exc: BaseException) -> None:  # on a driver thread
        self._deliver(None, exc)

    def _deliver(self, rows: list[Row] | None, exc: BaseException | None) -> None:
        # RuntimeError: the loop is closed, the server stopped and nobody waits for this page.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._settle, self._waiter, rows, exc)

    @staticmethod
    def _settle(
        waiter: asyncio.Future[list[Row]] | None, rows: list[Row] | None, exc: BaseException | None
    ) -> None:
        if waiter is None or waiter.done():
            return  # the caller gave up (cancelled) meanwhile
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(list(rows or ()))

    async def next_page(self) -> list[Row]:
        """The next page; an empty list once the query is exhausted."""
        if self.exhausted:
            return []
        waiter: asyncio.Future[list[Row]] = self._loop.create_future()
        self._waiter = waiter
        try:
            if self._future is None:
                self._future = self._session.execute_async(self._statement, timeout=self._timeout)
                # Callbacks stay registered: they fire again for every later page.
                self._future.add_callbacks(self._on_rows, self._on_error)
            else:
                self._future.start_fetching_next_page()
            # The driver times requests out itself; this only guards against a lost callback.
            async with asyncio.timeout(self._timeout + 5.0):
                rows = await waiter
        except _UNAVAILABLE as exc:
            self.exhausted = True
            raise unavailable(exc) from exc
        except TimeoutError as exc:
            self.exhausted = True
            raise StoreUnavailable("Cassandra did not answer in time") from exc
        self.exhausted = not self._future.has_more_pages
        return rows


async def execute(session: Session, statement: Statement, *, timeout: float) -> list[Row]:
    """The first page of a statement's result (all of it when it fits one page)."""
    return await PagedQuery(session, statement, timeout=timeout).next_page()


class Stream:
    """A PagedQuery read row by row, with a look at the next row."""

    def __init__(self, query: PagedQuery) -> None:
        self._query = query
        self._rows: list[Row] = []
        self._position = 0

    async def peek(self) -> Row | None:
        while self._position >= len(self._rows):
            if self._query.exhausted:
                return None
            self._rows, self._position = await self._query.next_page(), 0
        return self._rows[self._position]

    def advance(self) -> None:
        self._position += 1


class _Descending:
    """Reverses a sort key's order for heapq, which only pops the smallest."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __lt__(self, other: _Descending) -> bool:
        return bool(self.key > other.key)


async def merge(
    streams: Sequence[Stream],
    key: Callable[[Row], Any],
    *,
    descending: bool = False,
    concurrency: int = 32,
) -> AsyncIterator[Row]:
    """The rows of sorted streams in one sorted sequence (a k-way merge)."""
    slots = asyncio.Semaphore(concurrency)

    async def first(stream: Stream) -> Row | None:
        async with slots:
            return await stream.peek()

    heads = await asyncio.gather(*(first(s) for s in streams))
    wrap: Callable[[Any], Any] = _Descending if descending else (lambda k: k)
    heap = [(wrap(key(row)), i, row) for i, row in enumerate(heads) if row is not None]
    heapq.heapify(heap)
    while heap:
        _, i, row = heap[0]
        yield row
        streams[i].advance()
        following = await streams[i].peek()
        if following is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (wrap(key(following)), i, following))
