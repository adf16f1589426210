"""Actions: answers that need an external HTTP API.

Each call has a time-out, is retried with exponential backoff on transport
errors and 5xx answers, and goes through a circuit breaker per action, so a
dead API costs one fast failure per message instead of a time-out each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from mesh import get_logger
from services.dialogue.domain import ActionSpec
from services.dialogue.http import HttpClient, HttpError

_log = get_logger("dialogue.actions")


@dataclass(frozen=True)
class ActionOutcome:
    """Which response of the action to send, and the values to fill it with."""

    response: str  # "ask", "success", "not_found" or "error"
    values: Mapping[str, str]


class _Retryable(Exception):
    pass


class _NotFound(Exception):
    """The API answered 404: a user's mistake, not the API's failure."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (_Retryable, HttpError))


class ActionRunner:
    def __init__(
        self,
        client: HttpClient,
        *,
        attempts: int = 3,
        backoff_s: float = 0.2,
        breaker_threshold: int = 5,
        breaker_reset_s: float = 30.0,
    ) -> None:
        self._client = client
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=breaker_threshold, default_ttl=breaker_reset_s
        )

    async def run(self, spec: ActionSpec, values: Mapping[str, str]) -> ActionOutcome:
        missing = [slot for slot in spec.required_slots if not values.get(slot)]
        if missing:
            return ActionOutcome("ask", {"missing": missing[0]})
        if not spec.base_url:
            _log.warning("action has no base URL", extra={"action": spec.name})
            return ActionOutcome("error", {})
        request = self._request(spec, values)
        try:
            breaker = await self._breakers.get_breaker(spec.name, exclude=[_NotFound])
            async with breaker:
                data = await self._call(spec, *request)
        except OpenedState:
            _log.warning("action circuit open", extra={"action": spec.name})
            return ActionOutcome("error", {})
        except _NotFound:
            return ActionOutcome("not_found", {})
        except Exception as exc:
            _log.warning("action failed", extra={"action": spec.name, "error": repr(exc)})
            return ActionOutcome("error", {})
        return ActionOutcome("success", {k: _text(v) for k, v in data.items()})

    @staticmethod
    def _request(spec: ActionSpec, values: Mapping[str, str]) -> tuple[str, dict[str, str]]:
        if spec.kind == "order_status":
            return f"{spec.base_url}/orders/{quote(values['order_id'], safe='')}", {}
        if spec.kind == "weather":
            return f"{spec.base_url}/weather", {"city": values["city"]}
        raise ValueError(f"unknown action kind {spec.kind!r}")

    async def _call(self, spec: ActionSpec, url: str, params: dict[str, str]) -> dict[str, Any]:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._backoff_s, max=2.0),
            retry=retry_if_exception(_retryable),
            reraise=True,
        ):
            with attempt:
                response = await self._client.request(
                    "GET", url, params=params, timeout=spec.timeout_s
                )
                if response.status == 404:
                    raise _NotFound()
                # Errors name the action, never the URL: it carries the user's words.
                if response.status >= 500 or response.status == 429:
                    raise _Retryable(f"{spec.name} answered {response.status}")
                if response.status >= 400:
                    raise ValueError(f"{spec.name} answered {response.status}")
                data = response.json()
                if not isinstance(data, dict):
                    raise ValueError(f"{spec.name} answered {type(data).__name__}, not an object")
                return data
        raise AssertionError("unreachable")


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
