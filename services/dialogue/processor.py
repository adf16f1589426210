"""What happens to one queued item, under its user's lease.

An event: understand it (NLU, or the payload of a button), decide the
replies (responses, slots, actions), log the inbound message and the replies,
send the replies one by one, then dequeue. Each step that has an effect
outside this process first checks that the lease is still ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.common.v1 import event_pb2, nlu_result_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mesh import get_logger, tracing
from mesh.tenants import Tenant, Tenants
from services.dialogue import metrics
from services.dialogue.actions import ActionRunner
from services.dialogue.channels import OutboundChannel, SendError, SendHeld
from services.dialogue.clients import Chatlog, Nlu, NluUnavailable, Understanding
from services.dialogue.domain import Domain, ResponseSpec
from services.dialogue.keys import UserId
from services.dialogue.store import DialogueStore, Head, Lease

_log = get_logger("dialogue.processor")

RESULT_CONVERSE = b"C"
RESULT_AGENT = b"A"
RESULT_DEAD = b"E"
RESULT_REFUSED = b"P"

_ATTACHMENT_MESSAGE_TYPES = {
    event_pb2.ATTACHMENT_TYPE_IMAGE: chatlog_pb.MESSAGE_TYPE_IMAGE,
    event_pb2.ATTACHMENT_TYPE_AUDIO: chatlog_pb.MESSAGE_TYPE_AUDIO,
    event_pb2.ATTACHMENT_TYPE_VIDEO: chatlog_pb.MESSAGE_TYPE_VIDEO,
    event_pb2.ATTACHMENT_TYPE_FILE: chatlog_pb.MESSAGE_TYPE_FILE,
    event_pb2.ATTACHMENT_TYPE_FALLBACK: chatlog_pb.MESSAGE_TYPE_LINK,
    event_pb2.ATTACHMENT_TYPE_TEMPLATE: chatlog_pb.MESSAGE_TYPE_TEMPLATE,
    event_pb2.ATTACHMENT_TYPE_STICKER: chatlog_pb.MESSAGE_TYPE_STICKER,
    event_pb2.ATTACHMENT_TYPE_LOCATION: chatlog_pb.MESSAGE_TYPE_LOCATION,
}


def _user_ref(user: UserId) -> event_pb2.UserRef:
    ref = event_pb2.UserRef(tenant_id=user.tenant_id, user_id=user.user_id)
    ref.channel = user.channel  # type: ignore[assignment]
    return ref


def conversation_id(user: UserId) -> str:
    return f"{user.channel}:{user.user_id}"


def _timestamp_ms(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


# The chatlog keeps times from 1970 to 2200; an event's own times outside that
# range (a client's mistake) give way to the time it was received or queued,
# or its record could never be written and the event would dead-letter.
_LATEST_MS = 7_258_118_400_000


def storable_ms(stamp: Timestamp) -> int | None:
    """The time in ms when the chatlog can keep it, else None."""
    if not 0 <= stamp.nanos < 1_000_000_000:
        return None
    ms = stamp.seconds * 1000 + stamp.nanos // 1_000_000
    return ms if 0 <= ms < _LATEST_MS else None


def _duration_ms(ms: int) -> Duration:
    span = Duration()
    span.FromMilliseconds(max(0, ms))
    return span


@dataclass
class Outcome:
    """What processing an item produced, before it is logged and sent."""

    replies: list[event_pb2.Reply] = field(default_factory=list)
    understanding: Understanding | None = None
    slots: dict[str, str] = field(default_factory=dict)
    handoff: dict[str, str] | None = None


def _payload_intent(payload: str, domain: Domain) -> tuple[str, dict[str, str]] | None:
    """``/intent`` or ``/intent{"entity": "value"}`` (Rasa's convention), or a mapped payload."""
    if payload.startswith("/") and len(payload) > 1:
        name, _, rest = payload[1:].partition("{")
        entities: dict[str, str] = {}
        if rest:
            try:
                parsed = json.loads("{" + rest)
                entities = {str(k): str(v) for k, v in parsed.items()}
            except (ValueError, AttributeError):
                entities = {}
        return name.strip(), entities
    if payload in domain.payloads:
        return domain.payloads[payload], {}
    return None


# Marks of sent replies that outlive a cancelled turn, kept until they end.
_DELIVERIES: set[asyncio.Future[None]] = set()


def _forget_delivery(step: asyncio.Future[None]) -> None:
    _DELIVERIES.discard(step)


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
    ) -> None:
        self._store = store
        self._tenants = tenants
        self._domains = domains
        self._nlu = nlu
        self._chatlog = chatlog
        self._channels = channels
        self._actions = actions

    async def process(self, lease: Lease, head: Head) -> int:
        """Processes the head item; returns how many items remain queued."""
        if head.item.kind == "agent":
            return await self._agent_message(lease, head)
        return await self._event(lease, head)

    # ---- events -----------------------------------------------------------

    async def _event(self, lease: Lease, head: Head) -> int:
        started_ms = int(time.time() * 1000)
        event = event_pb2.ChatEvent.FromString(head.item.payload)
        tenant = self._tenant(lease.user.tenant_id)
        domain = self._domains[tenant.id]
        handed_off = head.handoff.get("active") == "1"
        kind = event.WhichOneof("kind")
        answerable = (
            kind in ("message", "postback")
            and not event.standby
            and not (kind == "message" and event.message.is_echo)
        )
        outcome = Outcome()
        if answerable and not handed_off:
            outcome = await self._decide(lease.user, tenant, domain, event, head)
        respond_ms = int(time.time() * 1000)

        records = self._inbound_records(
            lease, head, event, outcome, handed_off, started_ms, respond_ms
        )
        for index, reply in enumerate(outcome.replies):
            reply.reply_id = f"{event.event_id}:r{index}"
            records.append(
                self._outbound_record(lease, reply, event.event_id, respond_ms, handed_off)
            )
        # The replies never wait for storage. On a single Redis the records
        # leave with the completion, into the outbox its writer drains in
        # batches; under Redis Cluster (the outbox is on another node) they are
        # written while the replies go out, and the item completes after both.
        outbox = b""
        if self._store.single_node:
            try:
                await self._send(lease, tenant, head, outcome.replies, event.event_id)
            except Exception:
                # The item will be tried again, or dead-lettered: the message
                # is in the chatlog either way (appends are idempotent).
                with contextlib.suppress(Exception):
                    await self._record(records)
                raise
            if records:
                outbox = chatlog_pb.AppendMessagesRequest(messages=records).SerializeToString()
        else:
            await self._store.ensure(lease)
            stored, sent = await asyncio.gather(
                self._record(records),
                self._send(lease, tenant, head, outcome.replies, event.event_id),
                return_exceptions=True,
            )
            for failure in (sent, stored):
                if isinstance(failure, BaseException):
                    raise failure

        understanding = outcome.understanding
        result = pb.ConverseResponse(
            event_id=event.event_id,
            replies=outcome.replies,
            fencing_token=lease.token,
            handed_off=handed_off,
            processing_duration=_duration_ms(respond_ms - self._received_ms(event, head)),
        )
        if understanding is not None:
            result.intent.CopyFrom(understanding.intent)
            result.intent_ranking.extend(understanding.ranking)
            result.entities.extend(understanding.entities)
            result.is_fallback = understanding.is_fallback
            result.model_version = understanding.model_version
        handoff = outcome.handoff
        return await self._store.complete(
            lease,
            head,
            RESULT_CONVERSE + result.SerializeToString(),
            slots=outcome.slots,
            handoff=handoff,
            records=outbox,
            traceparent=tracing.current_traceparent() if outbox else "",
        )

    async def _record(self, records: list[chatlog_pb.ChatMessage]) -> None:
        if records:
            with metrics.STAGE_SECONDS.labels("chatlog").time():
                await self._chatlog.append(records)

    async def _decide(
        self, user: UserId, tenant: Tenant, domain: Domain, event: event_pb2.ChatEvent, head: Head
    ) -> Outcome:
        outcome = Outcome()
        text, payload = "", ""
        if event.HasField("postback"):
            text, payload = event.postback.title, event.postback.payload
        else:
            text, payload = event.message.text, event.message.quick_reply_payload
        forced = _payload_intent(payload, domain) if payload else None
        if forced is not None:
            name, values = forced
            outcome.understanding = Understanding(
                intent=nlu_result_pb2.Intent(name=name, confidence=1.0),
                ranking=[nlu_result_pb2.Intent(name=name, confidence=1.0)],
                entities=[
                    nlu_result_pb2.Entity(entity=k, value=v, extractor="payload")
                    for k, v in values.items()
                ],
            )
        elif text.strip() or payload:
            try:
                with metrics.STAGE_SECONDS.labels("nlu").time():
                    outcome.understanding = await self._nlu.parse(
                        text.strip() or payload, tenant.id
                    )
            except NluUnavailable as exc:
                _log.warning(
                    "NLU unavailable: answering with nlu_unavailable", extra={"error": str(exc)}
                )
                outcome.understanding = Understanding(
                    intent=nlu_result_pb2.Intent(), is_fallback=True
                )
                outcome.replies = self._render(
                    domain, "nlu_unavailable", head.slots, event.event_id
                )
                if not outcome.replies:
                    outcome.replies = self._render(domain, "fallback", head.slots, event.event_id)
                return outcome
        else:
            outcome.replies = self._render(domain, "attachment", head.slots, event.event_id)
            return outcome

        understanding = outcome.understanding
        assert understanding is not None
        values = dict(head.slots)
        for entity in understanding.entities:
            values[entity.entity] = entity.value
            if entity.entity in domain.slots:
                outcome.slots[entity.entity] = entity.value
        intent = understanding.intent.name
        if understanding.is_fallback or not intent or intent == domain.fallback_intent:
            outcome.replies = self._render(domain, "fallback", values, event.event_id)
            return outcome
        if intent == domain.handoff_intent:
            outcome.handoff = {
                "active": "1",
                "reason": f"intent {intent}",
                "agent_id": "",
                "time": str(int(time.time() * 1000)),
            }
        action_name = domain.intent_actions.get(intent)
        if action_name:
            spec = domain.actions[action_name]
            channel = self._channels.get(user.channel)
            if channel is not None:
                await channel.typing(tenant, user.user_id)
            with (
                tracing.span(f"action.{spec.name}", kind="client"),
                metrics.STAGE_SECONDS.labels("action").time(),
            ):
                result = await self._actions.run(spec, values)
            values.update(result.values)
            specs = domain.choose(result.response, values, event.event_id, spec.responses)
            outcome.replies = [self._reply(s, values) for s in specs]
        elif intent in domain.responses:
            outcome.replies = self._render(domain, intent, values, event.event_id)
        else:
            outcome.replies = self._render(domain, "fallback", values, event.event_id)
        return outcome

    def _render(
        self, domain: Domain, name: str, values: Mapping[str, str], seed: str
    ) -> list[event_pb2.Reply]:
        return [self._reply(spec, values) for spec in domain.choose(name, values, seed)]

    @staticmethod
    def _reply(spec: ResponseSpec, values: Mapping[str, str]) -> event_pb2.Reply:
        reply = event_pb2.Reply(text=spec.text.format_map(dict(values)) if spec.text else "")
        if spec.image:
            reply.attachments.append(
                event_pb2.Attachment(
                    type=event_pb2.ATTACHMENT_TYPE_IMAGE, url=spec.image.format_map(dict(values))
                )
            )
        for quick in spec.quick_replies:
            reply.quick_replies.append(
                event_pb2.QuickReply(
                    title=quick.title, payload=quick.payload, image_url=quick.image_url
                )
            )
        return reply

    async def _send(
        self,
        lease: Lease,
        tenant: Tenant,
        head: Head,
        replies: list[event_pb2.Reply],
        in_reply_to: str,
    ) -> None:
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

    def _received_ms(self, event: event_pb2.ChatEvent, head: Head) -> int:
        if event.HasField("receive_time"):
            received = storable_ms(event.receive_time)
            if received is not None:
                return received
        return head.item.enqueue_ms

    def _inbound_records(
        self,
        lease: Lease,
        head: Head,
        event: event_pb2.ChatEvent,
        outcome: Outcome,
        handed_off: bool,
        started_ms: int,
        respond_ms: int,
    ) -> list[chatlog_pb.ChatMessage]:
        kind = event.WhichOneof("kind")
        if kind in ("delivery", "read"):
            return []  # receipts: counted, not shown in transcripts
        if kind == "message" and event.message.is_echo and "in_reply_to" in event.message.metadata:
            return []  # the echo of one of our own replies, already logged as outbound
        received_ms = self._received_ms(event, head)
        record = chatlog_pb.ChatMessage(
            user=event.user,
            conversation_id=conversation_id(lease.user),
            message_id=event.event_id,
            direction=chatlog_pb.DIRECTION_INBOUND,
            author=chatlog_pb.AUTHOR_USER,
            handed_off=handed_off,
            fencing_token=lease.token,
            raw_event=event,
        )
        storable = event.HasField("event_time") and storable_ms(event.event_time) is not None
        record.create_time.CopyFrom(event.event_time if storable else _timestamp_ms(received_ms))
        record.received_time.CopyFrom(_timestamp_ms(received_ms))
        record.respond_time.CopyFrom(_timestamp_ms(respond_ms))
        record.processing_duration.CopyFrom(_duration_ms(respond_ms - received_ms))
        record.queue_duration.CopyFrom(_duration_ms(started_ms - received_ms))
        if kind == "message":
            message = event.message
            record.text = message.text
            record.attachments.extend(message.attachments)
            record.referenced_message_id = message.reply_to_mid
            if message.is_echo:
                record.direction = chatlog_pb.DIRECTION_OUTBOUND
                record.author = chatlog_pb.AUTHOR_PAGE
            if message.quick_reply_payload:
                record.type = chatlog_pb.MESSAGE_TYPE_QUICK_REPLY
                record.payload = message.quick_reply_payload
            elif message.attachments:
                record.type = _ATTACHMENT_MESSAGE_TYPES.get(
                    message.attachments[0].type, chatlog_pb.MESSAGE_TYPE_FILE
                )
            else:
                record.type = chatlog_pb.MESSAGE_TYPE_TEXT
        elif kind == "postback":
            record.type = chatlog_pb.MESSAGE_TYPE_POSTBACK
            record.text = event.postback.title
            record.payload = event.postback.payload
        elif kind == "reaction":
            record.type = chatlog_pb.MESSAGE_TYPE_REACTION
            record.text = event.reaction.emoji or event.reaction.reaction
            record.referenced_message_id = event.reaction.mid
        else:
            record.type = chatlog_pb.MESSAGE_TYPE_SYSTEM
            record.text = f"[{kind}]"
        understanding = outcome.understanding
        if understanding is not None:
            if understanding.intent.name:
                record.intent.CopyFrom(understanding.intent)
            record.intent_ranking.extend(understanding.ranking)
            record.entities.extend(understanding.entities)
            record.model_version = understanding.model_version
            record.is_fallback = understanding.is_fallback or not understanding.intent.name
        record.reply_ids.extend(f"{event.event_id}:r{i}" for i in range(len(outcome.replies)))
        return [record]

    def _outbound_record(
        self,
        lease: Lease,
        reply: event_pb2.Reply,
        in_reply_to: str,
        respond_ms: int,
        handed_off: bool,
    ) -> chatlog_pb.ChatMessage:
        record = chatlog_pb.ChatMessage(
            user=_user_ref(lease.user),
            conversation_id=conversation_id(lease.user),
            message_id=reply.reply_id,
            direction=chatlog_pb.DIRECTION_OUTBOUND,
            author=chatlog_pb.AUTHOR_BOT,
            text=reply.text,
            attachments=reply.attachments,
            quick_replies=reply.quick_replies,
            in_reply_to=in_reply_to,
            handed_off=handed_off,
            fencing_token=lease.token,
        )
        record.type = (
            chatlog_pb.MESSAGE_TYPE_IMAGE
            if not reply.text and reply.attachments
            else chatlog_pb.MESSAGE_TYPE_TEXT
        )
        record.create_time.CopyFrom(_timestamp_ms(respond_ms))
        record.respond_time.CopyFrom(_timestamp_ms(respond_ms))
        return record

    # ---- agents' messages -------------------------------------------------

    async def _agent_message(self, lease: Lease, head: Head) -> int:
        request = pb.SendAgentMessageRequest.FromString(head.item.payload)
        tenant = self._tenant(lease.user.tenant_id)
        if head.handoff.get("active") != "1":
            return await self._store.complete(
                lease, head, RESULT_REFUSED + b"the conversation is not handed off"
            )
        now_ms = int(time.time() * 1000)
        reply = event_pb2.Reply(
            reply_id=head.item.item_id,
            text=request.text,
            quick_replies=request.quick_replies,
            attachments=request.attachments,
        )
        record = self._outbound_record(lease, reply, "", now_ms, True)
        record.author = chatlog_pb.AUTHOR_AGENT
        record.agent_id = request.agent_id
        await self._store.ensure(lease)
        await self._chatlog.append([record])
        channel = self._channels.get(lease.user.channel)
        if channel is not None and head.replies_sent == 0:
            await self._store.ensure(lease)
            try:
                await channel.send(tenant, lease.user.user_id, reply, "")
            except SendError as exc:
                if not exc.permanent:
                    raise
                return await self._store.complete(
                    lease, head, RESULT_REFUSED + f"the channel refused it: {exc}".encode()
                )
            await self._store.mark_sent(lease, head.item.item_id, 1)
        response = pb.SendAgentMessageResponse(
            reply=reply, sent_time=_timestamp_ms(int(time.time() * 1000)), fencing_token=lease.token
        )
        return await self._store.complete(lease, head, RESULT_AGENT + response.SerializeToString())

    def _tenant(self, tenant_id: str) -> Tenant:
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            raise LookupError(f"tenant {tenant_id!r} is no longer configured")
        return tenant
