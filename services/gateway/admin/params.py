"""Reading what a page or API call asks for: query strings and small forms.

The pages and the API read the same questions the same way: the filters the
console's service takes, the text search's window, and where both are mounted.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from chatbot.common.v1 import event_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.requests import Request

from services.gateway.admin.errors import BadInput

API_PREFIX = "/api/admin"
PAGES_PREFIX = "/admin"
SEARCH_DAYS = 7  # a text search without a start looks this far back
MAX_SEARCH_DAYS = 31  # the longest window the pages search at once
MAX_FORM_BYTES = 64 * 1024
CHANNELS: Mapping[str, int] = {
    "messenger": event_pb2.CHANNEL_MESSENGER,
    "api": event_pb2.CHANNEL_API,
}
CHANNEL_NAMES: Mapping[int, str] = {value: name for name, value in CHANNELS.items()}


def text(params: Mapping[str, str], name: str, *, limit: int = 500) -> str:
    value = (params.get(name) or "").strip()
    if len(value) > limit:
        raise BadInput(f"{name} is over {limit} characters")
    return value


def channel(params: Mapping[str, str], name: str = "channel") -> int:
    value = text(params, name).lower()
    if not value:
        return event_pb2.CHANNEL_UNSPECIFIED
    if value not in CHANNELS:
        raise BadInput(f"{name} must be one of {', '.join(CHANNELS)}")
    return CHANNELS[value]


def flag(params: Mapping[str, str], name: str) -> bool | None:
    """``true``/``1``/``on``: True; ``false``/``0``: False; absent or empty: None."""
    value = text(params, name).lower()
    if not value:
        return None
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    raise BadInput(f"{name} must be true or false")


def integer(params: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    value = text(params, name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadInput(f"{name} must be an integer") from None
    if not lo <= number <= hi:
        raise BadInput(f"{name} must be between {lo} and {hi}")
    return number


def number(params: Mapping[str, str], name: str, lo: float, hi: float) -> float | None:
    value = text(params, name)
    if not value:
        return None
    try:
        parsed = float(value)
    except ValueError:
        raise BadInput(f"{name} must be a number") from None
    if not lo <= parsed <= hi:
        raise BadInput(f"{name} must be between {lo} and {hi}")
    return parsed


def when(params: Mapping[str, str], name: str, *, end: bool = False) -> dt.datetime | None:
    """A date (``2026-03-02``, a whole UTC day: its end is the next midnight when ``end``)
    or an RFC 3339 time (``2026-03-02T09:00:00Z``)."""
    value = text(params, name, limit=40)
    if not value:
        return None
    try:
        if len(value) == 10:
            day = dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), dt.timezone.utc)
            return day + dt.timedelta(days=1) if end else day
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"{name} must be a date (YYYY-MM-DD) or an RFC 3339 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.astimezone(dt.timezone.utc)


def timestamp(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def query(request: Request) -> dict[str, str]:
    return {key: value for key, value in request.query_params.items()}


async def form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` or JSON-object body as strings."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadInput("the request body is too large")
    if content_type == "application/json":
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise BadInput("the body is not JSON") from None
        if not isinstance(data, dict):
            raise BadInput("the body must be a JSON object")
        return {str(k): "" if v is None else _scalar(v) for k, v in data.items()}
    if content_type in ("application/x-www-form-urlencoded", ""):
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise BadInput("the form is not UTF-8") from None
        return dict(pairs)
    raise BadInput("send a form (application/x-www-form-urlencoded) or JSON")


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise BadInput("the body's values must be strings, numbers or booleans")


@dataclass(frozen=True)
class ConversationFilter:
    channel: int = event_pb2.CHANNEL_UNSPECIFIED
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    intent: str = ""
    fallback_only: bool = False
    handed_off: bool | None = None
    user_id: str = ""


@dataclass(frozen=True)
class ExportFilter:
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    intents: Sequence[str] = ()
    min_confidence: float | None = None
    max_confidence: float | None = None
    limit: int = 0


def export_filter(q: Mapping[str, str]) -> ExportFilter:
    low = number(q, "min_confidence", 0.0, 1.0)
    high = number(q, "max_confidence", 0.0, 1.0)
    if low is not None and high is not None and low > high:
        raise BadInput("the minimum confidence is above the maximum")
    return ExportFilter(
        start=when(q, "start"),
        end=when(q, "end", end=True),
        intents=[i.strip() for i in text(q, "intents").split(",") if i.strip()],
        min_confidence=low,
        max_confidence=high,
        limit=integer(q, "limit", 200, 1, 10_000),
    )


@dataclass(frozen=True)
class SearchWindow:
    start: dt.datetime
    end: dt.datetime
    defaulted: bool  # no start was given: the last SEARCH_DAYS before ``end``


def search_window(q: Mapping[str, str]) -> SearchWindow:
    """``start`` and ``end`` of a text search; by default the SEARCH_DAYS up to now."""
    end = when(q, "end", end=True) or dt.datetime.now(dt.timezone.utc)
    start = when(q, "start")
    if start is None:
        return SearchWindow(end - dt.timedelta(days=SEARCH_DAYS), end, defaulted=True)
    return SearchWindow(start, end, defaulted=False)
