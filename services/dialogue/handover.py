"""Messenger's Handover Protocol: which app owns a conversation's thread.

While another app owns the thread (Meta's Page Inbox, a support tool) the
bot records the user's messages and stays silent; when the thread comes back
it answers again. Two halves:

- pure: what a thread-control event does to the user's hand-off state
  (``thread_change``), what a turn asks to pass (``pass_wanted``), and how the
  chatlog words it (``describe``);
- ``ThreadControl``: the Graph calls ``pass_thread_control`` and
  ``take_thread_control``, answering a ``ControlResult`` whose ``error`` is
  the reason an agent reads in the console (never an exception: the hand-off
  stands whatever Messenger says).

The user's hand-off hash gains, beside ``active``, ``reason``, ``agent_id``
and ``time``: ``owner_app_id`` (the app owning the thread when another one
does), ``thread_error`` (Messenger's last refusal, "" after a success),
``requested_app_id`` (an app that asked for the thread) and ``passed`` (the
event whose hand-off was passed, marked before the call: a retried turn never
passes twice, at the price of no pass at all after a crash mid-call, which the
console then shows).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

from chatbot.common.v1 import event_pb2

from mesh import get_logger
from mesh.graph import DEFAULT_GRAPH_API_URL, graph_headers, graph_params
from mesh.tenants import Tenant
from services.dialogue.http import HttpClient, MaybeSent, NotSent
from services.dialogue.keys import UserId
from services.dialogue.store import DialogueStore, Head, Lease

_log = get_logger("dialogue.handover")

METADATA_LIMIT = 1000  # Messenger's bound on a thread-control call's metadata
# Meta's temporary errors: retried; every other refusal is final.
_RETRY_CODES = {1, 2, 4, 613}
_OUTSIDE_WINDOW = (10, 2018278)
_OTHER_OWNER = (10, 2018300)
_UNAVAILABLE = 551
_PERMISSION = (10, 200, 230)
# Kept back from a deadline so an attempt ends inside it.
_MARGIN_S = 0.25
_MIN_ATTEMPT_S = 0.5
_INTERRUPTED = "the pass to the hand-off app was interrupted; Messenger may not have it"


@dataclass(frozen=True)
class ControlResult:
    """How Messenger answered a thread-control call; ``error`` is for people."""

    ok: bool
    error: str = ""
    code: int = 0
    subcode: int = 0


def _explain(code: int, subcode: int, message: str) -> str:
    if (code, subcode) == _OUTSIDE_WINDOW:
        why = "outside the messaging window: the customer has not written for over 24 hours"
    elif code == _UNAVAILABLE:
        why = "the customer is not available on Messenger right now"
    elif (code, subcode) == _OTHER_OWNER:
        why = "another app controls this thread now"
    elif code in _PERMISSION:
        why = (
            "this app may not do that: it is neither the thread's owner nor the page's "
            "Primary Receiver, or the target is not a Secondary Receiver of the page"
        )
    elif code == 100:
        why = "the request was invalid (is the target app a receiver of the page?)"
    else:
        why = "Messenger refused it"
    detail = f"code {code}/{subcode}" if subcode else f"code {code}"
    return f"{why} ({detail}: {message})" if message else f"{why} ({detail})"


class ThreadControl:
    """``POST /me/pass_thread_control`` and ``/me/take_thread_control``.

    Temporary refusals (rate limits, 5xx) and requests that never left are
    retried with a backoff within ``deadline``; an answer lost after the
    request may have arrived is not (a second pass would be refused anyway)."""

    def __init__(
        self,
        client: HttpClient,
        graph_api_url: str = DEFAULT_GRAPH_API_URL,
        *,
        attempts: int = 3,
        backoff_s: float = 0.2,
        timeout_s: float = 5.0,
    ) -> None:
        self._client = client
        self._base = graph_api_url.rstrip("/")
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s

    async def pass_to(
        self,
        tenant: Tenant,
        user_id: str,
        target_app_id: str,
        metadata: str,
        *,
        deadline: float | None = None,
    ) -> ControlResult:
        """Passes the thread to ``target_app_id`` (a Secondary Receiver, or the Page Inbox)."""
        body: dict[str, object] = {"recipient": {"id": user_id}, "target_app_id": target_app_id}
        if metadata:
            body["metadata"] = metadata[:METADATA_LIMIT]
        return await self._call(tenant, "pass_thread_control", body, deadline)

    async def take(
        self, tenant: Tenant, user_id: str, metadata: str, *, deadline: float | None = None
    ) -> ControlResult:
        """Takes the thread back (this app is the page's Primary Receiver)."""
        body: dict[str, object] = {"recipient": {"id": user_id}}
        if metadata:
            body["metadata"] = metadata[:METADATA_LIMIT]
        return await self._call(tenant, "take_thread_control", body, deadline)

    def _timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return self._timeout_s
        left = min(self._timeout_s, deadline - time.monotonic() - _MARGIN_S)
        return left if left >= _MIN_ATTEMPT_S else 0.0

    async def _call(
        self, tenant: Tenant, edge: str, body: Mapping[str, object], deadline: float | None
    ) -> ControlResult:
        if not tenant.page_access_token:
            return ControlResult(False, f"not sent: tenant {tenant.id} has no page access token")
        result = ControlResult(False, "not sent: no time left")
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
            timeout = self._timeout(deadline)
            if not timeout:
                break
            try:
                response = await self._client.request(
                    "POST",
                    f"{self._base}/me/{edge}",
                    headers=graph_headers(tenant),
                    params=graph_params(tenant),
                    json_body=body,
                    timeout=timeout,
                )
            except NotSent as exc:
                result = ControlResult(False, f"Messenger unreachable: {exc}")
                continue
            except MaybeSent as exc:
                return ControlResult(
                    False, f"no answer from Messenger (it may have arrived): {exc}"
                )
            if response.status == 200:
                return ControlResult(True)
            code, subcode, message = 0, 0, response.text[:300]
            try:
                error = response.json().get("error") or {}
                code = int(error.get("code") or 0)
                subcode = int(error.get("error_subcode") or 0)
                message = str(error.get("message") or "")[:300]
            except (ValueError, AttributeError, TypeError):
                pass
            result = ControlResult(False, _explain(code, subcode, message), code, subcode)
            _log.warning(
                "Messenger refused a thread-control call",
                extra={"tenant": tenant.id, "edge": edge, "status": response.status,
                       "code": code, "subcode": subcode},
            )  # fmt: skip
            if response.status < 500 and code not in _RETRY_CODES:
                break
        return result

    async def after_turn(
        self,
        store: DialogueStore,
        lease: Lease,
        tenant: Tenant,
        head: Head,
        event: event_pb2.ChatEvent,
        handoff_reason: str,
    ) -> dict[str, str]:
        """Passes the thread when the turn calls for it (``handoff_reason``: the
        bot hands off), once per event; returns the hand-off fields for the
        turn's completion."""
        if lease.user.channel != event_pb2.CHANNEL_MESSENGER:
            return {}
        wanted = pass_wanted(tenant, event, handoff_reason)
        if wanted is None or head.handoff.get("passed") == event.event_id:
            return {}
        target, metadata = wanted
        await store.ensure(lease)
        # Marked before the call: a retry of this turn (a crash, a lost lease)
        # never passes twice; an interrupted pass says so in the console.
        await store.set_handoff(
            lease.user, {"passed": event.event_id, "thread_error": _INTERRUPTED}
        )
        result = await self.pass_to(
            tenant, lease.user.user_id, target, metadata, deadline=lease.state.valid_until
        )
        fields = {
            "passed": event.event_id,
            "thread_error": result.error,
            "owner_app_id": target if result.ok else "",
        }
        if result.ok and not handoff_reason:
            # A request granted: the thread is the other app's now.
            fields |= {
                "active": "1",
                "reason": f"the thread was passed to app {target} at its request",
                "agent_id": "",
                "time": str(int(time.time() * 1000)),
                "requested_app_id": "",
            }
        await store.set_handoff(lease.user, fields)
        return fields

    async def for_console(
        self,
        tenant: Tenant,
        user: UserId,
        handed_off: bool,
        reason: str,
        agent_id: str,
        deadline: float,
    ) -> dict[str, str]:
        """The console's hand-off or give-back on Messenger; the hand-off fields it leaves."""
        if user.channel != event_pb2.CHANNEL_MESSENGER:
            return {}
        metadata = json.dumps(
            {"reason": reason, "agent_id": agent_id} if reason or agent_id else {}
        )
        if handed_off:
            target = tenant.handover_target_app_id
            result = await self.pass_to(tenant, user.user_id, target, metadata, deadline=deadline)
            owner = target if result.ok else ""
        else:
            result = await self.take(tenant, user.user_id, metadata, deadline=deadline)
            owner = ""
        fields = {"thread_error": result.error, "requested_app_id": ""}
        if result.ok or handed_off:
            fields["owner_app_id"] = owner
        return fields


def pass_wanted(
    tenant: Tenant, event: event_pb2.ChatEvent, handoff_reason: str
) -> tuple[str, str] | None:
    """(app, metadata) of the ``pass_thread_control`` a turn calls for, or None:
    the bot's own hand-off goes to the tenant's target; another app's request is
    granted when the tenant says so (``handover_grant_requests: true``)."""
    if handoff_reason:
        metadata = json.dumps({"reason": handoff_reason, "in_reply_to": event.event_id})
        return tenant.handover_target_app_id, metadata
    handover = event.handover
    if (
        event.HasField("handover")
        and handover.action == event_pb2.HANDOVER_ACTION_REQUEST
        and handover.requested_owner_app_id
        and not event.standby
        and tenant.settings.get("handover_grant_requests") is True
    ):
        return handover.requested_owner_app_id, json.dumps({"granted": event.event_id})
    return None


def _passed_elsewhere(event: event_pb2.ChatEvent, target_app_id: str) -> bool:
    """A pass that leaves the thread with another app: seen on standby (this app
    is not the owner), or naming the tenant's hand-off app (never this bot)."""
    new_owner = event.handover.new_owner_app_id
    return event.standby or bool(new_owner and new_owner == target_app_id)


def thread_change(event: event_pb2.ChatEvent, target_app_id: str, now_ms: int) -> dict[str, str]:
    """What a thread-control event does to the user's hand-off fields ({} for nothing)."""
    if not event.HasField("handover"):
        return {}
    handover = event.handover
    action = handover.action
    silent = action == event_pb2.HANDOVER_ACTION_TAKE or (
        action == event_pb2.HANDOVER_ACTION_PASS and _passed_elsewhere(event, target_app_id)
    )
    if silent:
        return {
            "active": "1",
            "reason": describe(event, target_app_id),
            "agent_id": "",
            "time": str(now_ms),
            "owner_app_id": handover.new_owner_app_id,
            "requested_app_id": "",
        }
    if action == event_pb2.HANDOVER_ACTION_PASS:
        return {
            "active": "0",
            "reason": describe(event, target_app_id),
            "agent_id": "",
            "time": str(now_ms),
            "owner_app_id": "",
            "thread_error": "",
            "requested_app_id": "",
        }
    if action == event_pb2.HANDOVER_ACTION_REQUEST and handover.requested_owner_app_id:
        return {"requested_app_id": handover.requested_owner_app_id}
    return {}


def describe(event: event_pb2.ChatEvent, target_app_id: str = "") -> str:
    """A thread-control event in words, for the transcript."""
    handover = event.handover
    new, old = handover.new_owner_app_id, handover.previous_owner_app_id
    source = f" from app {old}" if old else ""
    note = f": {handover.metadata}" if handover.metadata else ""
    action = handover.action
    if action == event_pb2.HANDOVER_ACTION_TAKE:
        taker = f"app {new}" if new else "another app"
        return f"{taker} took the thread{source}; the bot is silent{note}"
    if action == event_pb2.HANDOVER_ACTION_PASS:
        if _passed_elsewhere(event, target_app_id):
            return f"the thread went to app {new or '?'}{source}; the bot is silent{note}"
        return f"the thread was passed to this bot{source}; the bot answers again{note}"
    if action == event_pb2.HANDOVER_ACTION_REQUEST:
        asker = handover.requested_owner_app_id or "another app"
        return f"app {asker} asks for the thread{note}"
    if action == event_pb2.HANDOVER_ACTION_APP_ROLES:
        roles = "; ".join(f"{r.app_id}: {', '.join(r.roles) or 'none'}" for r in handover.app_roles)
        return f"the page's app roles changed: {roles or 'none'}"
    return "thread control changed"
