"""Structured logs: one JSON object per line, with the request id when there is one.

Secrets never reach a log line: log ids and sizes, not tokens or bodies. As a
second line of defence every line is passed through ``redact``, which masks
tokens in URLs (``access_token=``, ``hub.verify_token=``), passwords in URLs
(``rediss://user:password@``), bearer credentials and ``appsecret_proof``,
whichever logger wrote them; and the HTTP client libraries, which log every
request URL at INFO, are held at WARNING.

User ids appear only as ``hashed(id)``: an HMAC-SHA256 under ``LOG_ID_KEY``
(or the file ``LOG_ID_KEY_FILE`` names), shared by every service so one
user's lines correlate across them. A bare hash would not do: anyone could
hash a known id (or every id of a small space, e-mail addresses say) and find
its lines. Without a key each process draws a random one, and says so once.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Mapping
from typing import Any

from mesh.config import ConfigError, Env

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
    # user:password@ in a URL (a REDIS_URL with its password, in an error message).
    re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s\"']*:)[^@/\s\"']+(?=@)", re.IGNORECASE),
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


LOG_ID_KEY = "LOG_ID_KEY"
_MIN_KEY_CHARS = 16
_id_key: bytes | None = None
_log = logging.getLogger("mesh.logging")


def log_id_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key from ``LOG_ID_KEY`` or ``LOG_ID_KEY_FILE``; None when neither is set."""
    value = Env(environ).secret(LOG_ID_KEY)
    if value is None:
        return None
    if len(value) < _MIN_KEY_CHARS:
        # The message names the variable, never the value.
        raise ConfigError(
            f"{LOG_ID_KEY} is too short: at least {_MIN_KEY_CHARS} characters "
            "(32 random bytes in base64, say)"
        )
    return value.encode("utf-8")


def _random_key() -> bytes:
    _log.warning(
        f"{LOG_ID_KEY} is not set: user ids in logs are hashed under a random key of this "
        "process, so they do not match other processes' lines, nor this one's after a restart"
    )
    return secrets.token_bytes(32)


def _process_key() -> bytes:
    global _id_key
    if _id_key is None:
        try:
            _id_key = log_id_key() or _random_key()
        except ConfigError as exc:  # logging was not configured: no place to fail loudly
            _log.error("user ids in logs hashed under a random key", extra={"error": str(exc)})
            _id_key = secrets.token_bytes(32)
    return _id_key


def hashed(value: str, *, key: bytes | None = None) -> str:
    """A stable, short stand-in for a user id in logs (never the id itself).

    Keyed (``LOG_ID_KEY``, or ``key``), so it cannot be recomputed from the id
    without the key.
    """
    mac = hmac.new(
        _process_key() if key is None else key,
        value.encode("utf-8", "surrogatepass"),
        hashlib.sha256,
    )
    return mac.hexdigest()[:16]


def configure_logging(service: str, level: str | None = None) -> None:
    """JSON lines on stderr; ``LOG_LEVEL`` sets the level (INFO by default).

    Also sets the key of `hashed` from ``LOG_ID_KEY``/``LOG_ID_KEY_FILE``
    (ConfigError when the file cannot be read or the key is too short).
    """
    global _id_key
    key = log_id_key()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("LOG_LEVEL") or "INFO").upper())
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if key is not None:
        _id_key = key
    elif _id_key is None:
        _id_key = _random_key()


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
