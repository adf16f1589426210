"""Outbound channels: how replies reach users.

``MessengerChannel`` calls the Send API: ``messaging_type`` RESPONSE (or
MESSAGE_TAG with the ``tag`` given: a person's answer after the 24-hour
window goes with HUMAN_AGENT; bot replies never carry one), text
split under 2000 characters, quick replies on the last part, ``metadata``
naming the inbound mid, and retries with backoff on the error codes Meta
documents as temporary. Every Graph call carries ``appsecret_proof`` when the
tenant's app secret is known. Other channels implement ``OutboundChannel``.

Errors::

    SendError            a reply could not be sent (``permanent``: retrying will not help)
    └── SendHeld         nothing was attempted: the Send API breaker holds new sends,
                         or too little of the lease is left; not a failure of the reply
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Protocol

from chatbot.common.v1 import event_pb2

from mesh import get_logger
from mesh.graph import DEFAULT_GRAPH_API_URL, graph_headers, graph_params
from mesh.tenants import Tenant
from services.dialogue import metrics
from services.dialogue.breaker import BreakerState, SendBreaker
from services.dialogue.http import HttpClient, HttpError, HttpResponse, MaybeSent, NotSent

_log = get_logger("dialogue.channels")

TEXT_LIMIT = 2000
BUTTON_TEXT_LIMIT = 640  # the text of a button template
# Meta's temporary errors: rate limits (613, 4), temporary (2), send failure (1200).
_RETRY_CODES = {2, 4, 613, 1200}

# Meta's refusals of a message outside the window it allows, or to a person
# who cannot be reached: retrying never helps.
_WINDOW_SUBCODE = 2018278
_UNAVAILABLE_CODE = 551
HUMAN_AGENT = "HUMAN_AGENT"

_ATTACHMENT_TYPES = {
    event_pb2.ATTACHMENT_TYPE_IMAGE: "image",
    event_pb2.ATTACHMENT_TYPE_AUDIO: "audio",
    event_pb2.ATTACHMENT_TYPE_VIDEO: "video",
    event_pb2.ATTACHMENT_TYPE_FILE: "file",
}


class SendError(Exception):
    """A reply could not be sent. ``permanent``: retrying will not help."""

    def __init__(self, message: str, *, permanent: bool, code: int = 0, subcode: int = 0) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code
        self.subcode = subcode

    @property
    def outside_window(self) -> bool:
        """Meta refused it as sent outside the messaging window the message type allows."""
        return self.code == 10 and self.subcode == _WINDOW_SUBCODE

    @property
    def unavailable(self) -> bool:
        """Meta refused it as the person is not available (blocked the page, left Messenger)."""
        return self.code == _UNAVAILABLE_CODE


class SendHeld(SendError):
    """Nothing was attempted; the caller renews its lease and calls again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=False)


class _Lost(Exception):
    """An attempt failed after its request may have arrived."""


class OutboundChannel(Protocol):
    async def send(
        self,
        tenant: Tenant,
        user_id: str,
        reply: event_pb2.Reply,
        in_reply_to: str,
        *,
        deadline: float | None = None,
        tag: str = "",
    ) -> str:
        """Sends one reply; returns the channel's id for it. ``deadline``
        (``time.monotonic()``): no attempt starts that could end after it.
        ``tag``: the message tag a person's answer outside the standard window needs."""

    async def typing(self, tenant: Tenant, user_id: str, on: bool = True) -> None:
        """Shows that the bot is working on an answer, or stops showing it (best effort)."""

    async def mark_seen(self, tenant: Tenant, user_id: str) -> None:
        """Shows the user that their message was seen (best effort)."""


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Splits at whitespace into parts of at most ``limit`` characters."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind(" ", 0, limit + 1)
        if cut <= 0:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not parts:
        parts.append(rest)
    return parts


def _template(attachment: event_pb2.Attachment) -> dict[str, object] | None:
    """A template attachment's payload, or None when it is not one Messenger would take."""
    if attachment.type != event_pb2.ATTACHMENT_TYPE_TEMPLATE:
        return None
    try:
        payload = json.loads(attachment.payload_json or "null")
    except ValueError:
        return None
    return payload if isinstance(payload, dict) and payload.get("template_type") else None


def _messages(reply: event_pb2.Reply) -> list[dict[str, object]]:
    """The Send API messages of one reply, in the order the user sees them: the
    text (split at word boundaries; with buttons, its last part carries them as
    a button template), then media, then other templates (a carousel)."""
    templates = [t for t in map(_template, reply.attachments) if t is not None]
    buttons = next((t for t in templates if t["template_type"] == "button"), None)
    parts = split_text(reply.text) if reply.text else []
    messages: list[dict[str, object]] = []
    if buttons is not None and parts:
        last = split_text(parts.pop(), BUTTON_TEXT_LIMIT)
        parts += last[:-1]
        messages += [{"text": part} for part in parts]
        template = {**buttons, "text": last[-1]}
        messages.append({"attachment": {"type": "template", "payload": template}})
    else:
        messages += [{"text": part} for part in parts]
    for attachment in reply.attachments:
        kind = _ATTACHMENT_TYPES.get(attachment.type)
        if kind and attachment.url:
            payload = {"url": attachment.url, "is_reusable": True}
            messages.append({"attachment": {"type": kind, "payload": payload}})
    for template in templates:
        if template["template_type"] != "button":
            messages.append({"attachment": {"type": "template", "payload": template}})
    return messages


# Kept back from the deadline for the steps after a send (marking it sent).
_MARGIN_S = 0.25
# An attempt with less time than this is not worth starting.
_MIN_ATTEMPT_S = 0.5
# Messages remembered as possibly delivered, oldest forgotten first.
_UNCERTAIN_KEPT = 10_000


class MessengerChannel:
    """The Send API client.

    Each message's attempts know what they risk. A failure before the request
    was written (refused, DNS, TLS, no free connection) is retried after a
    backoff. A failure after it may have arrived (no answer in time, the
    connection lost mid-answer) trips the process's ``SendBreaker``: the
    message is sent again only once the API answers again, so an outage costs
    at most one repeat per message in flight. While the breaker is open no
    attempt starts and none is counted; ``send`` waits, or raises ``SendHeld``
    when its ``deadline`` comes first.
    """

    def __init__(
        self,
        client: HttpClient,
        graph_api_url: str = DEFAULT_GRAPH_API_URL,
        *,
        attempts: int = 5,
        backoff_s: float = 0.2,
        timeout_s: float = 5.0,
        breaker: SendBreaker | None = None,
    ) -> None:
        self._client = client
        base = graph_api_url.rstrip("/")
        self._url = base + "/me/messages"
        self._probe_url = base + "/me"
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self.breaker = breaker or SendBreaker()
        # Messages whose last attempt's answer was lost, across calls (a held
        # send is called again): their next attempt may repeat them.
        self._uncertain: dict[str, None] = {}

    def _bodies(
        self, user_id: str, reply: event_pb2.Reply, in_reply_to: str, tag: str = ""
    ) -> list[dict[str, object]]:
        metadata = json.dumps({"in_reply_to": in_reply_to}) if in_reply_to else ""
        messages = _messages(reply)
        if reply.quick_replies and messages:
            messages[-1]["quick_replies"] = [
                {"content_type": "text", "title": q.title[:20], "payload": q.payload[:1000]}
                | ({"image_url": q.image_url} if q.image_url else {})
                for q in reply.quick_replies[:13]
            ]
        for message in messages:
            if metadata:
                message["metadata"] = metadata
        sending: dict[str, object] = (
            {"messaging_type": "MESSAGE_TAG", "tag": tag} if tag else {"messaging_type": "RESPONSE"}
        )
        return [
            {"recipient": {"id": user_id}, **sending, "message": message} for message in messages
        ]

    async def send(
        self,
        tenant: Tenant,
        user_id: str,
        reply: event_pb2.Reply,
        in_reply_to: str,
        *,
        deadline: float | None = None,
        tag: str = "",
    ) -> str:
        if not tenant.page_access_token:
            raise SendError(f"tenant {tenant.id} has no page access token", permanent=True)
        message_id = ""
        for body in self._bodies(user_id, reply, in_reply_to, tag):
            message_id = await self._post(tenant, body, deadline, in_reply_to)
        return message_id

    async def _post_messages(
        self,
        tenant: Tenant,
        body: Mapping[str, object],
        timeout: float,
        deadline: float | None = None,
    ) -> HttpResponse:
        """One POST to the page's messages endpoint (replies and sender actions).
        With a ``deadline``, the request is not written once it could end after it."""
        return await self._client.request(
            "POST",
            self._url,
            headers=graph_headers(tenant),
            params=graph_params(tenant),
            json_body=body,
            timeout=timeout,
            write_by=None if deadline is None else deadline - _MARGIN_S,
        )

    async def typing(self, tenant: Tenant, user_id: str, on: bool = True) -> None:
        await self._sender_action(tenant, user_id, "typing_on" if on else "typing_off")

    async def mark_seen(self, tenant: Tenant, user_id: str) -> None:
        await self._sender_action(tenant, user_id, "mark_seen")

    async def _sender_action(self, tenant: Tenant, user_id: str, action: str) -> None:
        if not tenant.page_access_token:
            return
        if self.breaker.state() is not BreakerState.CLOSED:
            return  # never worth a request into a failing API
        body = {"recipient": {"id": user_id}, "sender_action": action}
        call = self.breaker.started()
        try:
            response = await self._post_messages(tenant, body, self._timeout_s)
        except HttpError:
            # A sender action is never worth failing a message for.
            self.breaker.failed(call, lost=False)
            return
        except BaseException:
            self.breaker.abandoned(call)
            raise
        self.breaker.answered(call, healthy=response.status < 500)

    async def _probe(self, tenant: Tenant, timeout_s: float) -> bool:
        """Whether the Graph API answers, asking for the page's id: sends nothing to anyone."""
        try:
            response = await self._client.request(
                "GET",
                self._probe_url,
                params={"fields": "id", **graph_params(tenant)},
                headers=graph_headers(tenant),
                timeout=timeout_s,
            )
        except HttpError:
            return False
        return response.status < 500

    def _attempt_timeout(self, deadline: float | None) -> float:
        """The time an attempt may take now; 0 when none may start."""
        if deadline is None:
            return self._timeout_s
        left = deadline - time.monotonic() - _MARGIN_S
        timeout = min(self._timeout_s, left)
        return timeout if timeout >= _MIN_ATTEMPT_S else 0.0

    async def _post(
        self, tenant: Tenant, body: dict[str, object], deadline: float | None, in_reply_to: str
    ) -> str:
        latest_start = None if deadline is None else deadline - _MARGIN_S - _MIN_ATTEMPT_S
        failures = 0
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        while True:
            if not await self.breaker.admit(
                latest_start, lambda timeout: self._probe(tenant, timeout)
            ):
                raise SendHeld("the Send API breaker is open")
            timeout = self._attempt_timeout(deadline)
            if not timeout:
                metrics.SEND_HELD.labels("lease").inc()
                raise SendHeld("too little of the lease left for an attempt")
            if key in self._uncertain:
                metrics.SEND_RESENT_AFTER_LOST.inc()
            try:
                message_id = await self._post_once(tenant, body, timeout, in_reply_to, deadline)
                self._uncertain.pop(key, None)
                return message_id
            except _Lost:
                # The breaker is open now: the next attempt waits until the API answers.
                self._uncertain[key] = None
                while len(self._uncertain) > _UNCERTAIN_KEPT:
                    del self._uncertain[next(iter(self._uncertain))]
                failures += 1
                error: SendError = SendError("Send API answer lost", permanent=False)
            except SendError as exc:
                if exc.permanent:
                    self._uncertain.pop(key, None)
                    raise
                failures += 1
                error = exc
            if failures >= self._attempts:
                # Failing for this message alone counts against it; for everyone, it waits.
                if not await self.breaker.admit(
                    latest_start, lambda timeout: self._probe(tenant, timeout)
                ):
                    raise SendHeld("the Send API breaker is open") from error
                raise error
            pause = min(self._backoff_s * 2 ** (failures - 1), 5.0)
            if latest_start is not None and time.monotonic() + pause > latest_start:
                metrics.SEND_HELD.labels("lease").inc()
                raise SendHeld("too little of the lease left to retry") from error
            await asyncio.sleep(pause)

    async def _post_once(
        self,
        tenant: Tenant,
        body: dict[str, object],
        timeout: float,
        in_reply_to: str,
        deadline: float | None = None,
    ) -> str:
        call = self.breaker.started()
        try:
            # The timeout bounds the whole exchange, so a trickle trips it too.
            response = await self._post_messages(tenant, body, timeout, deadline)
        except MaybeSent as exc:
            self.breaker.failed(call, lost=True)
            metrics.SEND_ATTEMPTS.labels("lost").inc()
            _log.warning(
                "Send API answer lost: the message may have arrived",
                extra={"tenant": tenant.id, "in_reply_to": in_reply_to, "error": str(exc)},
            )
            raise _Lost() from exc
        except NotSent as exc:
            self.breaker.failed(call, lost=False)
            metrics.SEND_ATTEMPTS.labels("unreachable").inc()
            raise SendError(f"Send API unreachable: {exc}", permanent=False) from exc
        except BaseException:
            self.breaker.abandoned(call)
            raise
        self.breaker.answered(call, healthy=response.status < 500)
        if response.status == 200:
            metrics.SEND_ATTEMPTS.labels("ok").inc()
            try:
                return str(response.json().get("message_id", ""))
            except ValueError:
                return ""
        metrics.SEND_ATTEMPTS.labels("refused").inc()
        code, subcode, message = 0, 0, response.text[:300]
        try:
            error = response.json().get("error") or {}
            code = int(error.get("code") or 0)
            subcode = int(error.get("error_subcode") or 0)
            message = str(error.get("message") or message)
        except (ValueError, AttributeError):
            pass
        temporary = response.status >= 500 or code in _RETRY_CODES
        if subcode == _WINDOW_SUBCODE or code == _UNAVAILABLE_CODE:
            temporary = False
        _log.warning(
            "Send API refused a message",
            extra={"status": response.status, "code": code, "subcode": subcode,
                   "tenant": tenant.id, "temporary": temporary},
        )  # fmt: skip
        raise SendError(
            f"Send API {response.status} code {code}: {message}",
            permanent=not temporary,
            code=code,
            subcode=subcode,
        )
