"""A transcript that follows new messages: server-sent events over the chatlog's
``previous_page_token``.

The stream polls ``ListMessages`` (newest first) with the token of the latest
message seen; a non-empty answer gives the new messages and the next token. Each
batch's last event carries that token as its SSE ``id``, so a browser that
reconnects (``Last-Event-ID``) resumes exactly there, and a stream ends after a
while on its own (the browser reconnects), so no request lives for ever. The
hand-off state is polled alongside and sent when it changes, and so are the
latest replies' delivery statuses (receipts arrive after the reply is drawn):
an ``update`` event carries a reply drawn again, first for every recent reply
(what the page shows may be older than the stream), then for each that changes.

The session is checked again before every poll (without counting as activity):
after a logout, a password, role or grant change or the user's removal, the
stream sends ``signed-out`` and ends at the next tick, not when its time is up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb

from mesh import get_logger
from services.gateway.admin.auth import Identity
from services.gateway.admin.errors import AdminError, BackendUnavailable, NotFound
from services.gateway.admin.service import ConsoleService

KEEPALIVE_SECONDS = 15.0
RETRY_MS = 2000
RECENT_REPLIES = 50  # how far back a reply's delivery status is followed
_log = get_logger("gateway.admin")


def sse(event: str, data: object, event_id: str | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    lines += [f"data: {line}" for line in payload.splitlines() or [""]]
    return "\n".join(lines) + "\n\n"


@dataclass(frozen=True)
class LiveRequest:
    who: Identity
    tenant: str
    conversation_id: str
    token: str
    seconds: float
    poll_seconds: float
    signed_in: Callable[[], Awaitable[bool]]


class Follower:
    def __init__(
        self, service: ConsoleService, render: Callable[[chatlog_pb.ChatMessage], str]
    ) -> None:
        self._service = service
        self._render = render

    async def prepare(self, live: LiveRequest) -> tuple[str, chatlog_pb.ChatMessage]:
        """The token to start from and one message (whose ``user`` the state is asked for).

        Raises before the stream starts, so a bad request gets a plain error."""
        latest = await self._service.messages(live.who, live.tenant, live.conversation_id, "", 1)
        if not latest.messages:
            raise NotFound(f"no message in conversation {live.conversation_id!r}")
        if live.token:
            # Checked by the chatlog (tamper-proof and bound to this conversation).
            await self._service.messages(live.who, live.tenant, live.conversation_id, live.token, 1)
            return live.token, latest.messages[0]
        return latest.previous_page_token, latest.messages[0]

    async def stream(
        self, live: LiveRequest, token: str, sample: chatlog_pb.ChatMessage
    ) -> AsyncIterator[str]:
        deadline = time.monotonic() + live.seconds
        quiet_since = time.monotonic()
        handed_off: bool | None = None
        statuses: dict[str, int] = {}  # reply id -> the delivery status the browser was sent
        yield f"retry: {RETRY_MS}\n\n"
        while True:
            try:
                still = await live.signed_in()
            except Exception as exc:  # sessions cannot be checked: stop, the reconnect decides
                _log.warning("live stream ended", extra={"reason": type(exc).__name__})
                yield sse("problem", {"message": "Live updates stopped; reload the page."})
                return
            if not still:
                _log.info("live stream ended", extra={"reason": "signed_out"})
                yield sse("signed-out", {"message": "You are signed out; sign in again."})
                return
            try:
                page = await self._service.messages(
                    live.who, live.tenant, live.conversation_id, token, 100
                )
                if page.messages:
                    batch = list(reversed(page.messages))  # oldest first
                    token = page.previous_page_token or token
                    for index, message in enumerate(batch):
                        last = index == len(batch) - 1
                        yield sse(
                            "message",
                            {"id": message.message_id, "html": self._render(message)},
                            token if last else None,
                        )
                        statuses[message.message_id] = message.delivery_status
                    quiet_since = time.monotonic()
                recent = await self._service.messages(
                    live.who, live.tenant, live.conversation_id, "", RECENT_REPLIES
                )
                for message in reversed(recent.messages):
                    if message.direction != chatlog_pb.DIRECTION_OUTBOUND:
                        continue
                    if statuses.get(message.message_id) != message.delivery_status:
                        statuses[message.message_id] = message.delivery_status
                        yield sse(
                            "update", {"id": message.message_id, "html": self._render(message)}
                        )
                        quiet_since = time.monotonic()
                state = await self._service.state(
                    live.who, live.tenant, sample.user.channel, sample.user.user_id
                )
                if state.handed_off != handed_off:
                    handed_off = state.handed_off
                    yield sse(
                        "state",
                        {"handed_off": state.handed_off, "agent_id": state.handoff_agent_id},
                    )
            except BackendUnavailable as exc:
                yield sse("problem", {"message": f"Live updates paused: {exc}"})
            except AdminError as exc:
                _log.info("live stream ended", extra={"reason": exc.code})
                yield sse("problem", {"message": str(exc)})
                return
            if time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                yield ": keepalive\n\n"
                quiet_since = time.monotonic()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(live.poll_seconds, remaining))
