"""Structured logs: one JSON object per line, with the request id when there is one.

Secrets never reach a log line: log ids and sizes, not tokens or bodies. As a
second line of defence every line is passed through ``redact``, which masks
tokens in URLs (``access_token=``, ``hub.verify_token=``), bearer credentials
and ``appsecret_proof``, whichever logger wrote them; and the HTTP client
libraries, which log every request URL at INFO, are held at WARNING.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import re
import sys
import time
from typing import Any

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# uvicorn adds an ANSI-coloured copy of its messages: not for JSON logs.
_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}


# Libraries that log each request's URL at INFO, query string included.
_QUIET_LOGGERS = ("httpx", "httpcore", "hpack", "urllib3")

_SECRET_PATTERNS = (
    # name=value in a URL or form: the Graph API's token and proof, the webhook's verify token.
    re.compile(
        r"((?:access_token|appsecret_proof|verify_token|client_secret|password)=)[^&\s\"'\\]+",
        re.IGNORECASE,
    ),
    re.compile(r"(\bBearer\s+)[^\s\"'\\,;]+", re.IGNORECASE),
)


def redact(text: str) -> str:
    """``text`` with the values of credentials in URLs and headers masked."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1[redacted]", text)
    return text


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
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


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
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
