"""What happens to one queued item, under its user's lease.

An event: understand it (NLU, or the payload of a button), ask the policy
for the replies (running an action when it says so), map the turn to chatlog
records, send the replies one by one, then dequeue. Each step that has an
effect outside this process first checks that the lease is still ours. What
to answer is ``policy``'s; what the chatlog keeps is ``records``'.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Mapping
from dataclasses import replace
from typing import Any

from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mesh import get_logger, tracing
from mesh.tenants import Tenant, Tenants
from mesh.timestamps import timestamp_ms
from services.dialogue import metrics, policy
from services.dialogue.actions import ActionRunner
from services.dialogue.channels import HUMAN_AGENT, OutboundChannel, SendError, SendHeld
from services.dialogue.clients import Chatlog, Nlu, NluUnavailable
from services.dialogue.domain import Domain
from services.dialogue.handover import ThreadControl, thread_change
from services.dialogue.keys import UserId
from services.dialogue.policy import Outcome
from services.dialogue.records import (
    Turn,
    agent_record,
    conversation_id,
    duration_ms,
    received_ms,
    storable_ms,
    turn_records,
)
from services.dialogue.records import user_ref as _user_ref
from services.dialogue.store import DialogueStore, Head, Lease

__all__ = [
    "RESULT_AGENT",
    "RESULT_CONVERSE",
    "RESULT_DEAD",
    "RESULT_REFUSED",
    "Processor",
    "_user_ref",
    "conversation_id",
    "storable_ms",
]

_log = get_logger("dialogue.processor")

RESULT_CONVERSE = b"C"
RESULT_AGENT = b"A"
RESULT_DEAD = b"E"
RESULT_REFUSED = b"P"

# Marks of sent replies that outlive a cancelled turn, kept until they end.
_DELIVERIES: set[asyncio.Future[None]] = set()


def _forget_delivery(step: asyncio.Future[None]) -> None:
    _DELIVERIES.discard(step)


def _detached(work: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
    """Runs ``work`` beside the turn, held until it ends."""
    step = asyncio.ensure_future(work)
    _DELIVERIES.add(step)
    step.add_done_callback(_forget_delivery)
    return step


# A message whose answer takes longer than this is marked seen meanwhile.
SEEN_AFTER_S = 0.3


def _report_detached(step: asyncio.Future[None]) -> None:
    if not step.cancelled() and step.exception() is not None:
        _log.warning(
            "a cancelled turn's last mark ended in error", extra={"error": repr(step.exception())}
        )


class Processor:
    def __init__(
        self,
        store: DialogueStore,
        tenants: Tenants,
        domains: Mapping[str, Domain],
        nlu: Nlu,
        chatlog: Chatlog,
        channels: Mapping[int, OutboundChannel],
        actions: ActionRunner,
        threads: ThreadControl | None = None,
    ) -> None:
        self._store = store
        self._tenants = tenants
        self._domains = domains
        self._nlu = nlu
        self._chatlog = chatlog
        self._channels = channels
        self._actions = actions
        self._threads = threads  # Messenger's Handover Protocol calls

    async def process(self, lease: Lease, head: Head) -> int:
        """Processes the head item; returns how many items remain queued."""
        if head.item.kind == "agent":
            return await self._agent_message(lease, head)
        return await self._event(lease, head)

    # ---- events -----------------------------------------------------------

    async def _event(self, lease: Lease, head: Head) -> int:
        started_ms = _now_ms()
        event = event_pb2.ChatEvent.FromString(head.item.payload)
        tenant = self._tenant(lease.user.tenant_id)
        domain = self._domains[tenant.id]
        handed_off = head.handoff.get("active") == "1"
        outcome = policy.SILENT
        answerable = policy.answerable(event, domain) and not handed_off
        seen = (
            self._mark_seen_if_slow(lease.user, tenant) if answerable and domain.mark_seen else None
        )
        try:
            if answerable:
                outcome = await self._answer(lease.user, tenant, domain, event, head.slots)
            turn = Turn(
                user=lease.user,
                fencing_token=lease.token,
                handed_off=handed_off,
                received_ms=received_ms(event, head.item.enqueue_ms),
                started_ms=started_ms,
                respond_ms=_now_ms(),
            )
            turn, outbox = await self._deliver(lease, tenant, head, event, outcome, turn)
        finally:
            if seen is not None:
                seen.cancel()  # answered in time: the answer says it was seen
        handoff = outcome.handoff.fields() if outcome.handoff else {}
        handoff |= _user_message_time(event, head)
        return await self._store.complete(
            lease,
            head,
            RESULT_CONVERSE + _converse_response(event, outcome, turn).SerializeToString(),
            slots=dict(outcome.slots),
            handoff=(handoff | await self._thread(lease, tenant, head, event, outcome)) or None,
            records=outbox,
            traceparent=tracing.current_traceparent() if outbox else "",
        )

    async def _deliver(
        self,
        lease: Lease,
        tenant: Tenant,
        head: Head,
        event: event_pb2.ChatEvent,
        outcome: Outcome,
        turn: Turn,
    ) -> tuple[Turn, bytes]:
        """Sends the replies, then has the turn's records written; returns the turn
        with its send times, and what goes to the outbox.

        The replies never wait for storage: the records are made once they are
        sent, so they carry when each was sent."""
        sent: dict[int, int] = {}
        try:
            await self._send(lease, tenant, head, list(outcome.replies), event.event_id, sent)
        except Exception:
            # The item will be tried again, or dead-lettered: the message
            # is in the chatlog either way (appends are idempotent).
            with contextlib.suppress(Exception):
                await self._record(turn_records(replace(turn, sent_ms=sent), event, outcome))
            raise
        turn = replace(turn, sent_ms=sent)
        return turn, await self._keep(lease, turn_records(turn, event, outcome))

    async def _keep(self, lease: Lease, records: list[chatlog_pb.ChatMessage]) -> bytes:
        """Has records written: on a single Redis they leave with the completion,
        into the outbox its writer drains in batches (the bytes returned); under
        Redis Cluster (the outbox is on another node) they are written now."""
        if not records:
            return b""
        if self._store.single_node:
            return chatlog_pb.AppendMessagesRequest(messages=records).SerializeToString()
        await self._store.ensure(lease)
        await self._record(records)
        return b""

    def _mark_seen_if_slow(self, user: UserId, tenant: Tenant) -> asyncio.Future[None] | None:
        """Marks the message seen if its answer takes longer than ``SEEN_AFTER_S``.

        Beside the turn, so the reply never waits for it; a quick answer needs
        no "seen" of its own, and skipping it keeps a Graph call off the common path."""
        channel = self._channels.get(user.channel)
        if channel is None:
            return None

        async def later() -> None:
            await asyncio.sleep(SEEN_AFTER_S)
            # Once started, the call ends on its own: the timer's cancel does not reach it.
            _detached(channel.mark_seen(tenant, user.user_id))

        return _detached(later())

    async def _record(self, records: list[chatlog_pb.ChatMessage]) -> None:
        if records:
            with metrics.STAGE_SECONDS.labels("chatlog").time():
                await self._chatlog.append(records)

    async def _answer(
        self,
        user: UserId,
        tenant: Tenant,
        domain: Domain,
        event: event_pb2.ChatEvent,
        slots: Mapping[str, str],
    ) -> Outcome:
        """Understands the event, then asks the policy, running the action it names."""
        understood = await self._understand(tenant, policy.read(domain, event))
        decision = policy.decide(domain, event, slots, understood, now_ms=_now_ms())
        if isinstance(decision, Outcome):
            return decision
        channel = self._channels.get(user.channel)
        if channel is not None:
            await channel.typing(tenant, user.user_id)
        with (
            tracing.span(f"action.{decision.action.name}", kind="client"),
            metrics.STAGE_SECONDS.labels("action").time(),
        ):
            result = await self._actions.run(decision.action, decision.values)
        outcome = policy.after_action(domain, event, decision, result)
        if channel is not None and not outcome.replies:
            # A reply ends the indicator by itself; nothing to say must end it too.
            await channel.typing(tenant, user.user_id, on=False)
        return outcome

    async def _understand(self, tenant: Tenant, reading: policy.Reading) -> policy.Understood:
        if not isinstance(reading, policy.Parse):
            return reading
        try:
            with metrics.STAGE_SECONDS.labels("nlu").time():
                return await self._nlu.parse(reading.text, tenant.id)
        except NluUnavailable as exc:
            _log.warning(
                "NLU unavailable: answering with nlu_unavailable", extra={"error": str(exc)}
            )
            return policy.NluDown()

    async def _send(
        self,
        lease: Lease,
        tenant: Tenant,
        head: Head,
        replies: list[event_pb2.Reply],
        in_reply_to: str,
        sent: dict[int, int],
    ) -> None:
        """Sends the replies not sent yet, in order; ``sent`` gets when each was accepted."""
        channel = self._channels.get(lease.user.channel)
        if channel is None:
            return  # e.g. the JSON channel: replies travel in the Converse response
        cancelled = marking = False

        async def deliver(index: int, reply: event_pb2.Reply) -> None:
            nonlocal marking
            marking = False
            while True:
                if cancelled:
                    return  # the turn is over: start nothing new
                # A send that ends before the lease's local deadline ends inside
                # the lease (``ensure`` leaves at least half a lease ahead).
                await self._store.ensure(lease)
                try:
                    with (
                        tracing.span("messenger.send", kind="client", attributes={"reply": index}),
                        metrics.STAGE_SECONDS.labels("send").time(),
                    ):
                        await channel.send(
                            tenant, lease.user.user_id, reply, in_reply_to,
                            deadline=lease.state.valid_until,
                        )  # fmt: skip
                    sent[index] = _now_ms()
                    metrics.SEND_RESULTS.labels("ok").inc()
                except SendHeld:
                    # The Send API is failing for everyone, or the lease ran short:
                    # the user's queue waits here, in order, and no attempt is spent.
                    continue
                except SendError as exc:
                    metrics.SEND_RESULTS.labels(str(exc.code or "unreachable")).inc()
                    if not exc.permanent:
                        raise
                    _log.warning(
                        "reply not deliverable: skipped",
                        extra={"tenant": tenant.id, "code": exc.code, "reply_id": reply.reply_id},
                    )
                break
            if index + 1 == len(replies):
                # The last reply's mark is the completion that follows at once
                # (one round trip fewer), which also waits out a Redis blip.
                return
            # Sent: unless the mark is written, a retry of the item sends it again.
            # A Redis blip is waited out while the lease surely holds.
            marking = True
            pause = 0.05
            while True:
                try:
                    await self._store.mark_sent(lease, head.item.item_id, index + 1)
                    return
                except (RedisConnectionError, RedisTimeoutError):
                    if time.monotonic() + pause > lease.state.valid_until:
                        raise
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 1.0)

        for index, reply in enumerate(replies):
            if index < head.replies_sent:
                continue  # sent before a crash: never twice
            # A turn cancelled once the reply is sent (its renewal failed on a
            # Redis blip) lets the mark be written inside the lease, fenced, or
            # the reply would go out again. Before that, nothing outlives the turn.
            step = asyncio.ensure_future(deliver(index, reply))
            _DELIVERIES.add(step)
            step.add_done_callback(_forget_delivery)
            try:
                await asyncio.shield(step)
            except asyncio.CancelledError:
                cancelled = True
                if not marking:
                    step.cancel()
                step.add_done_callback(_report_detached)
                raise

    # ---- agents' messages -------------------------------------------------

    async def _agent_message(self, lease: Lease, head: Head) -> int:
        request = pb.SendAgentMessageRequest.FromString(head.item.payload)
        tenant = self._tenant(lease.user.tenant_id)
        if head.handoff.get("active") != "1":
            return await self._store.complete(
                lease, head, RESULT_REFUSED + b"the conversation is not handed off"
            )
        channel = self._channels.get(lease.user.channel)
        tag = ""
        if channel is not None:
            window = _agent_window(head, _now_ms())
            if isinstance(window, bytes):
                metrics.SEND_RESULTS.labels("window").inc()
                return await self._store.complete(lease, head, RESULT_REFUSED + window)
            tag = window
        reply = event_pb2.Reply(
            reply_id=head.item.item_id,
            text=request.text,
            quick_replies=request.quick_replies,
            attachments=request.attachments,
        )
        record = agent_record(lease.user, lease.token, reply, request.agent_id, _now_ms())
        if channel is not None and head.replies_sent == 0:
            while True:
                # As for replies: an attempt that ends before the lease's local
                # deadline ends inside the lease, so a stalled worker sends nothing late.
                await self._store.ensure(lease)
                try:
                    await channel.send(
                        tenant, lease.user.user_id, reply, "",
                        deadline=lease.state.valid_until, tag=tag,
                    )  # fmt: skip
                except SendHeld:
                    continue
                except SendError as exc:
                    if not exc.permanent:
                        raise
                    # Refused: kept in the transcript, without a send time.
                    return await self._store.complete(
                        lease,
                        head,
                        RESULT_REFUSED + _refusal(exc).encode(),
                        records=await self._keep(lease, [record]),
                    )
                break
        sent_ms = _now_ms()
        record.sent_time.CopyFrom(timestamp_ms(sent_ms))
        response = pb.SendAgentMessageResponse(
            reply=reply, sent_time=timestamp_ms(sent_ms), fencing_token=lease.token
        )
        return await self._store.complete(
            lease,
            head,
            RESULT_AGENT + response.SerializeToString(),
            records=await self._keep(lease, [record]),
        )

    def _tenant(self, tenant_id: str) -> Tenant:
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            raise LookupError(f"tenant {tenant_id!r} is no longer configured")
        return tenant

    async def _thread(
        self, lease: Lease, tenant: Tenant, head: Head, event: event_pb2.ChatEvent, outcome: Outcome
    ) -> dict[str, str]:
        """The turn's effect on who owns the Messenger thread (Handover Protocol)."""
        fields = thread_change(event, tenant.handover_target_app_id, _now_ms())
        if self._threads is not None:
            reason = outcome.handoff.reason if outcome.handoff else ""
            fields |= await self._threads.after_turn(
                self._store, lease, tenant, head, event, reason
            )
        return fields


def _now_ms() -> int:
    return int(time.time() * 1000)


# Messenger's windows after the customer's last message: anyone may answer
# within the standard one; a person, with the HUMAN_AGENT tag, within 7 days.
STANDARD_WINDOW_MS = 24 * 3600 * 1000
HUMAN_AGENT_WINDOW_MS = 7 * 24 * 3600 * 1000


def _user_message_time(event: event_pb2.ChatEvent, head: Head) -> dict[str, str]:
    """The hand-off field keeping when the customer last wrote (the event's own time,
    never later than now), which the windows count from; empty when it does not move."""
    kind = event.WhichOneof("kind")
    # What opens Messenger's standard window: a message, a button tap, a referral.
    if kind not in ("message", "postback", "referral") or (
        kind == "message" and event.message.is_echo
    ):
        return {}
    sent = storable_ms(event.event_time) if event.HasField("event_time") else None
    sent = min(sent or received_ms(event, head.item.enqueue_ms), _now_ms())
    if sent <= int(head.handoff.get("user_ms") or 0):
        return {}  # an older event processed late never shortens the window
    return {"user_ms": str(sent)}


def _agent_window(head: Head, now_ms: int) -> str | bytes:
    """The tag an agent's message needs now ("" for none), or why it cannot be sent.

    Without a recorded time (conversations older than the field) it goes untagged;
    a refusal from Messenger then says why."""
    last = int(head.handoff.get("user_ms") or 0)
    if not last or now_ms - last <= STANDARD_WINDOW_MS:
        return ""
    if now_ms - last <= HUMAN_AGENT_WINDOW_MS:
        return HUMAN_AGENT
    days = (now_ms - last) // (24 * 3600 * 1000)
    return (
        f"not sent: the customer last wrote {days} days ago, and Messenger lets a person "
        "answer only within 7 days of the customer's last message; the conversation "
        "can continue once the customer writes again"
    ).encode()


def _refusal(exc: SendError) -> str:
    """Why an agent's message was not sent, as the console shows it."""
    if exc.outside_window:
        return f"not sent: Messenger refused it as outside the messaging window ({exc})"
    if exc.unavailable:
        return f"not sent: the customer is not available on Messenger right now ({exc})"
    return f"the channel refused it: {exc}"


def _converse_response(
    event: event_pb2.ChatEvent, outcome: Outcome, turn: Turn
) -> pb.ConverseResponse:
    """The turn's result, as a ``Converse`` call returns it."""
    response = pb.ConverseResponse(
        event_id=event.event_id,
        replies=outcome.replies,
        fencing_token=turn.fencing_token,
        handed_off=turn.handed_off,
        processing_duration=duration_ms(turn.answered_ms - turn.received_ms),
    )
    understanding = outcome.understanding
    if understanding is not None:
        response.intent.CopyFrom(understanding.intent)
        response.intent_ranking.extend(understanding.ranking)
        response.entities.extend(understanding.entities)
        response.is_fallback = understanding.is_fallback
        response.model_version = understanding.model_version
    return response
