"""``POST /api/v1/messages``: the JSON channel for other chat clients.

    Authorization: Bearer <tenant API key>
    {"user_id": "u1", "text": "hi"}                      -> 202 {"event_id", "status"}
    {"user_id": "u1", "payload": "BUY", "message_id": "c-42"}
    {"user_id": "u1", "text": "hi", "sync": true}        -> 200 {"event_id", "replies", ...}

Asynchronous by default (SubmitEvents: queued, answered later through the
dialogue service); ``sync`` waits for the bot's replies through Converse. A
``message_id`` makes a retry a duplicate (the event id within the tenant's API
channel). Rate limited per user and per tenant; client mistakes are 4xx with a
reason, never a 500.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from chatbot.common.v1 import event_pb2 as ev
from chatbot.dialogue.v1 import dialogue_service_pb2 as dialogue_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mesh import get_logger
from services.gateway.auth import (
    SCHEME_API_KEY,
    AuthenticationError,
    AuthenticationRequired,
    Authenticator,
    require_principal,
)
from services.gateway.body import parse_json, read_body
from services.gateway.dialogue import DialogueClient, submit_all
from services.gateway.errors import (
    DialogueError,
    DialogueRejected,
    DialogueTimeout,
    DialogueUnavailable,
    InvalidInput,
    RequestError,
)
from services.gateway.metrics import GatewayMetrics
from services.gateway.ratelimit import RateLimiter, RateLimiterUnavailable, tenant_key, user_key
from services.gateway.responses import error_json, error_response
from services.gateway.settings import GatewaySettings

ROUTE = "/api/v1/messages"
CHANNEL = "api"
MAX_TEXT = 2000
MAX_PAYLOAD = 1000
MAX_ID = 256
_BODY_LIMIT = 64 * 1024
_FIELDS = frozenset({"user_id", "text", "payload", "message_id", "sync"})
_log = get_logger("gateway.api")


@dataclass(frozen=True)
class MessageInput:
    user_id: str
    text: str
    payload: str
    message_id: str
    sync: bool


def _string(doc: dict[str, Any], name: str, limit: int, *, required: bool = False) -> str:
    value = doc.get(name)
    if value is None:
        if required:
            raise InvalidInput(f"{name} is required")
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    if not value.strip():
        raise InvalidInput(f"{name} must not be empty")
    if len(value) > limit:
        raise InvalidInput(f"{name} has {len(value)} characters; the limit is {limit}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{name} is not valid Unicode text") from None
    return value


def parse_input(doc: Any) -> MessageInput:
    """The request's fields, or InvalidInput naming the first problem."""
    if not isinstance(doc, dict):
        raise InvalidInput("the body must be a JSON object")
    unknown = sorted(set(doc) - _FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0][:64]!r}")
    user_id = _string(doc, "user_id", MAX_ID, required=True)
    if any(ch.isspace() or not ch.isprintable() for ch in user_id):
        raise InvalidInput("user_id must not contain spaces or control characters")
    text = _string(doc, "text", MAX_TEXT)
    payload = _string(doc, "payload", MAX_PAYLOAD)
    if bool(text) == bool(payload):
        raise InvalidInput("exactly one of text and payload is required")
    message_id = _string(doc, "message_id", MAX_ID)
    sync = doc.get("sync", False)
    if not isinstance(sync, bool):
        raise InvalidInput("sync must be true or false")
    return MessageInput(user_id, text, payload, message_id, sync)


def build_event(tenant_id: str, message: MessageInput) -> ev.ChatEvent:
    event_id = message.message_id or f"api-{uuid.uuid4().hex}"
    event = ev.ChatEvent(
        event_id=event_id,
        user=ev.UserRef(tenant_id=tenant_id, channel=ev.CHANNEL_API, user_id=message.user_id),
    )
    event.event_time.GetCurrentTime()
    event.receive_time.CopyFrom(event.event_time)
    if message.text:
        event.message.CopyFrom(ev.Message(mid=event_id, text=message.text))
    else:
        event.postback.CopyFrom(ev.Postback(mid=event_id, payload=message.payload))
    return event


def _reply_json(reply: ev.Reply) -> dict[str, Any]:
    return {
        "reply_id": reply.reply_id,
        "text": reply.text,
        "quick_replies": [
            {"title": q.title, "payload": q.payload, "image_url": q.image_url}
            for q in reply.quick_replies
        ],
        "attachments": [
            {
                "type": ev.AttachmentType.Name(a.type).removeprefix("ATTACHMENT_TYPE_").lower(),
                "url": a.url,
                "title": a.title,
                "payload_json": a.payload_json,
            }
            for a in reply.attachments
        ],
    }


def converse_json(response: dialogue_pb2.ConverseResponse) -> dict[str, Any]:
    return {
        "event_id": response.event_id,
        "duplicate": response.duplicate,
        "replies": [_reply_json(r) for r in response.replies],
        "intent": (
            {"name": response.intent.name, "confidence": response.intent.confidence}
            if response.intent.name
            else None
        ),
        "is_fallback": response.is_fallback,
        "handed_off": response.handed_off,
    }


class MessagesApi:
    def __init__(
        self,
        *,
        settings: GatewaySettings,
        authenticator: Authenticator,
        dialogue: DialogueClient,
        rate_limiter: RateLimiter | None,
        metrics: GatewayMetrics,
    ) -> None:
        self._settings = settings
        self._auth = authenticator
        self._dialogue = dialogue
        self._limiter = rate_limiter
        self._metrics = metrics

    def _reject(self, status: int, error: str, message: str, **headers: str) -> Response:
        self._metrics.rejections.labels(ROUTE, error).inc()
        return error_response(status, error, message, headers=headers or None)

    async def post(self, request: Request) -> Response:
        try:
            principal = await require_principal(request, self._auth, scheme=SCHEME_API_KEY)
        except AuthenticationError as exc:
            challenge = (
                "Bearer"
                if isinstance(exc, AuthenticationRequired)
                else ('Bearer error="invalid_token"')
            )
            return self._reject(401, "unauthenticated", str(exc), **{"WWW-Authenticate": challenge})
        (tenant_id,) = principal.tenant_ids
        try:
            raw = await read_body(request, min(self._settings.max_body_bytes, _BODY_LIMIT))
            message = parse_input(parse_json(raw))
        except RequestError as exc:
            return self._reject(exc.status, exc.code, str(exc))
        limited = await self._rate_limit(tenant_id, message.user_id)
        if limited is not None:
            return limited
        event = build_event(tenant_id, message)
        if message.sync:
            return await self._converse(event)
        return await self._submit(event)

    async def _rate_limit(self, tenant_id: str, user_id: str) -> Response | None:
        if self._limiter is None:
            return None
        settings = self._settings
        checks = [
            ("user", user_key(tenant_id, user_id), settings.user_rate_limit),
            ("tenant", tenant_key(tenant_id), settings.tenant_rate_limit),
        ]
        for scope, key, limit in checks:
            if limit <= 0:
                continue
            try:
                decision = await self._limiter.hit(key, limit, settings.rate_limit_window)
            except RateLimiterUnavailable as exc:
                # Open, not closed: the limiter protects the bot, it must not
                # be why the channel is down. The outage is logged and counted.
                self._metrics.rejections.labels(ROUTE, "rate_limiter_unavailable").inc()
                _log.warning(
                    "rate limiter unavailable: request let through", extra={"error": str(exc)}
                )
                return None
            if not decision.allowed:
                self._metrics.rate_limited.labels(scope).inc()
                retry_after = max(1, math.ceil(decision.retry_after))
                _log.info("rate limited", extra={"scope": scope, "tenant": tenant_id})
                return error_response(
                    429,
                    "rate_limited",
                    f"too many requests for this {scope}; retry in {retry_after} s",
                    headers={"Retry-After": str(retry_after)},
                )
        return None

    def _dialogue_error(self, exc: DialogueError, event_id: str) -> Response:
        retry = {"Retry-After": str(self._settings.retry_after_seconds)}
        if isinstance(exc, DialogueTimeout):
            message = "no answer in time; the message stays queued: retry with the same message_id"
        elif isinstance(exc, DialogueUnavailable):
            message = "the dialogue service is unavailable"
        elif isinstance(exc, DialogueRejected):
            message, retry = "", {}  # the service's reason is about the client's input
        else:
            message = "the dialogue service failed"
        self._metrics.rejections.labels(ROUTE, f"dialogue_{exc.code}").inc()
        _log.warning("dialogue call failed", extra={"error": str(exc), "event_id": event_id})
        return error_json(exc, message, headers=retry or None)

    async def _submit(self, event: ev.ChatEvent) -> Response:
        started = time.perf_counter()
        try:
            (result,) = await submit_all(
                self._dialogue,
                [event],
                timeout=self._settings.submit_timeout,
                max_events=1,
                max_bytes=self._settings.submit_chunk_bytes,
            )
        except DialogueError as exc:
            self._observe("SubmitEvents", "error", started)
            return self._dialogue_error(exc, event.event_id)
        self._observe("SubmitEvents", "ok", started)
        duplicate = result.status == dialogue_pb2.SUBMIT_STATUS_DUPLICATE
        self._count(event, duplicate)
        return JSONResponse(
            {"event_id": event.event_id, "status": "duplicate" if duplicate else "accepted"},
            status_code=202,
        )

    async def _converse(self, event: ev.ChatEvent) -> Response:
        started = time.perf_counter()
        request = dialogue_pb2.ConverseRequest(user=event.user, event=event)
        try:
            response = await self._dialogue.converse(
                request, timeout=self._settings.converse_timeout
            )
        except DialogueError as exc:
            self._observe("Converse", "error", started)
            return self._dialogue_error(exc, event.event_id)
        self._observe("Converse", "ok", started)
        self._count(event, response.duplicate)
        return JSONResponse(converse_json(response))

    def _observe(self, method: str, outcome: str, started: float) -> None:
        self._metrics.dialogue_seconds.labels(method, outcome).observe(
            time.perf_counter() - started
        )

    def _count(self, event: ev.ChatEvent, duplicate: bool) -> None:
        if duplicate:
            self._metrics.duplicates.labels(CHANNEL).inc()
        else:
            self._metrics.events.labels(CHANNEL, event.WhichOneof("kind") or "none").inc()
