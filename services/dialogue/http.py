"""The worker's HTTP client: the Send API and the actions' APIs.

One aiohttp session per process, behind a small interface that says what a
failed request risks, which is what the Send API's retries need to know:

    HttpError           the request failed without an answer
    ├── NotSent         nothing reached the server (refused, DNS, TLS, no connection)
    └── MaybeSent       the request may have arrived (no answer in time, connection lost)

aiohttp rather than httpx: under the worker's concurrency httpx spent several
milliseconds of CPU per request (its connection pool is scanned on every
request), more than the rest of a turn; aiohttp spends a fraction of one.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp


class HttpError(Exception):
    """A request failed without an answer."""


class NotSent(HttpError):
    """The request never reached the server: a retry cannot repeat it."""


class MaybeSent(HttpError):
    """The request may have reached the server: a retry may repeat it."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` when it is not JSON."""
        return json.loads(self.body)


class _TooLate(Exception):
    """The connection came after the request's last moment to be written."""


async def _headers_sent(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: object
) -> None:
    context.trace_request_ctx["written"] = True


# The moment the current task's request may be written by, if any.
_WRITE_BY: contextvars.ContextVar[float | None] = contextvars.ContextVar("write_by", default=None)


class _Connector(aiohttp.TCPConnector):
    """Checks, once a request has its connection and just before it is written,
    that it is not too late: a process paused while connecting (or waiting for a
    connection) must not send when it wakes up."""

    async def connect(self, req: Any, traces: Any, timeout: Any) -> aiohttp.connector.Connection:
        connection = await super().connect(req, traces, timeout)
        write_by = _WRITE_BY.get()
        if write_by is not None and time.monotonic() > write_by:
            connection.close()
            raise _TooLate()
        return connection


class HttpClient:
    """A pooled HTTP/1.1 keep-alive client; open it in the process's lifespan."""

    def __init__(self, *, max_connections: int = 200) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_headers_sent)
            self._session = aiohttp.ClientSession(
                connector=_Connector(limit=self._max_connections),
                trace_configs=[trace],
                # Redirects are never followed: the Send API does not redirect.
                auto_decompress=True,
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        json_body: object = None,
        write_by: float | None = None,
    ) -> HttpResponse:
        """One request, answered within ``timeout`` seconds in all (a trickle
        included), or ``NotSent`` / ``MaybeSent``. ``write_by`` (``time.monotonic()``):
        a request whose connection is ready only later is not written (``NotSent``)."""
        session = self._open()
        state: dict[str, bool] = {"written": False}
        token = _WRITE_BY.set(write_by)
        try:
            async with session.request(
                method,
                url,
                headers=dict(headers or {}),
                params=dict(params or {}),
                json=json_body,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
                trace_request_ctx=state,
            ) as response:
                body = await response.read()
                return HttpResponse(response.status, body)
        except _TooLate as exc:
            raise NotSent("the connection came too late to write the request") from exc
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if not state["written"]:
                raise NotSent(f"{type(exc).__name__}: {exc}") from exc
            raise MaybeSent(f"{type(exc).__name__}: {exc}") from exc
        finally:
            _WRITE_BY.reset(token)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
