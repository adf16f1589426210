"""Structured logs: one JSON object per line, with the request id when there is one.

Secrets never reach a log line: log ids and sizes, not tokens or bodies.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# uvicorn adds an ANSI-coloured copy of its messages: not for JSON logs.
_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}


def _trace_id() -> str:
    """The current trace's id, when tracing is on and a span is active."""
    try:
        from opentelemetry import trace
    except ImportError:
        return ""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        trace_id = _trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def hashed(value: str) -> str:
    """A stable, short stand-in for a user id in logs (never the id itself)."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def configure_logging(service: str, level: str | None = None) -> None:
    """JSON lines on stderr; ``LOG_LEVEL`` sets the level (INFO by default)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("LOG_LEVEL") or "INFO").upper())


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
