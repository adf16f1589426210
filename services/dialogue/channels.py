"""Outbound channels: how replies reach users.

``MessengerChannel`` calls the Send API: ``messaging_type`` RESPONSE, text
split under 2000 characters, quick replies on the last part, ``metadata``
naming the inbound mid, and retries with backoff on the error codes Meta
documents as temporary. Other channels implement ``OutboundChannel``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Protocol

import httpx
from chatbot.common.v1 import event_pb2
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from mesh import get_logger
from mesh.tenants import Tenant

_log = get_logger("dialogue.channels")

TEXT_LIMIT = 2000
DEFAULT_GRAPH_API_URL = "https://graph.facebook.com/v21.0"
# Meta's temporary errors: rate limits (613, 4), temporary (2), send failure (1200).
_RETRY_CODES = {2, 4, 613, 1200}

_ATTACHMENT_TYPES = {
    event_pb2.ATTACHMENT_TYPE_IMAGE: "image",
    event_pb2.ATTACHMENT_TYPE_AUDIO: "audio",
    event_pb2.ATTACHMENT_TYPE_VIDEO: "video",
    event_pb2.ATTACHMENT_TYPE_FILE: "file",
}


class SendError(Exception):
    """A reply could not be sent. ``permanent``: retrying will not help."""

    def __init__(self, message: str, *, permanent: bool, code: int = 0) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code


class OutboundChannel(Protocol):
    async def send(
        self, tenant: Tenant, user_id: str, reply: event_pb2.Reply, in_reply_to: str
    ) -> str:
        """Sends one reply; returns the channel's id for it."""

    async def typing(self, tenant: Tenant, user_id: str) -> None:
        """Shows that the bot is working on an answer (best effort)."""


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


def _auth(tenant: Tenant) -> dict[str, str]:
    # In a header, not the query string: URLs end up in logs, proxies and traces.
    return {"Authorization": f"Bearer {tenant.page_access_token}"}


class MessengerChannel:
    def __init__(
        self,
        client: httpx.AsyncClient,
        graph_api_url: str = DEFAULT_GRAPH_API_URL,
        *,
        attempts: int = 5,
        backoff_s: float = 0.2,
        timeout_s: float = 5.0,
    ) -> None:
        self._client = client
        self._url = graph_api_url.rstrip("/") + "/me/messages"
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s

    def _bodies(
        self, user_id: str, reply: event_pb2.Reply, in_reply_to: str
    ) -> list[dict[str, object]]:
        metadata = json.dumps({"in_reply_to": in_reply_to}) if in_reply_to else ""
        messages: list[dict[str, object]] = []
        if reply.text:
            messages += [{"text": part} for part in split_text(reply.text)]
        for attachment in reply.attachments:
            kind = _ATTACHMENT_TYPES.get(attachment.type)
            if kind and attachment.url:
                messages.append(
                    {
                        "attachment": {
                            "type": kind,
                            "payload": {"url": attachment.url, "is_reusable": True},
                        }
                    }
                )
        if reply.quick_replies and messages:
            messages[-1]["quick_replies"] = [
                {"content_type": "text", "title": q.title[:20], "payload": q.payload[:1000]}
                | ({"image_url": q.image_url} if q.image_url else {})
                for q in reply.quick_replies[:13]
            ]
        for message in messages:
            if metadata:
                message["metadata"] = metadata
        return [
            {"recipient": {"id": user_id}, "messaging_type": "RESPONSE", "message": message}
            for message in messages
        ]

    async def send(
        self, tenant: Tenant, user_id: str, reply: event_pb2.Reply, in_reply_to: str
    ) -> str:
        if not tenant.page_access_token:
            raise SendError(f"tenant {tenant.id} has no page access token", permanent=True)
        message_id = ""
        for body in self._bodies(user_id, reply, in_reply_to):
            message_id = await self._post(tenant, body)
        return message_id

    async def typing(self, tenant: Tenant, user_id: str) -> None:
        if not tenant.page_access_token:
            return
        body = {"recipient": {"id": user_id}, "sender_action": "typing_on"}
        # A typing indicator is never worth failing a message for.
        with contextlib.suppress(httpx.HTTPError):
            await self._client.post(
                self._url, headers=_auth(tenant), json=body, timeout=self._timeout_s
            )

    async def _post(self, tenant: Tenant, body: dict[str, object]) -> str:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._backoff_s, max=5.0),
            retry=retry_if_exception(lambda e: isinstance(e, SendError) and not e.permanent),
            reraise=True,
        ):
            with attempt:
                return await self._post_once(tenant, body)
        raise AssertionError("unreachable")

    async def _post_once(self, tenant: Tenant, body: dict[str, object]) -> str:
        try:
            response = await self._client.post(
                self._url, headers=_auth(tenant), json=body, timeout=self._timeout_s
            )
        except httpx.HTTPError as exc:
            raise SendError(f"Send API unreachable: {exc!r}", permanent=False) from exc
        if response.status_code == 200:
            try:
                return str(response.json().get("message_id", ""))
            except ValueError:
                return ""
        code, subcode, message = 0, 0, response.text[:300]
        try:
            error = response.json().get("error") or {}
            code = int(error.get("code") or 0)
            subcode = int(error.get("error_subcode") or 0)
            message = str(error.get("message") or message)
        except (ValueError, AttributeError):
            pass
        temporary = response.status_code >= 500 or code in _RETRY_CODES
        if subcode == 2018278:  # outside the 24-hour window
            temporary = False
        _log.warning(
            "Send API refused a message",
            extra={"status": response.status_code, "code": code, "subcode": subcode,
                   "tenant": tenant.id, "temporary": temporary},
        )  # fmt: skip
        raise SendError(
            f"Send API {response.status_code} code {code}: {message}",
            permanent=not temporary,
            code=code,
        )
