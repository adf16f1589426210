"""``chatbot.dialogue.v1.DialogueService`` over the Redis store."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from chatbot.dialogue.v1 import dialogue_service_pb2_grpc
from redis.exceptions import RedisError

from mesh import get_logger, tracing
from mesh.page_tokens import PageTokens
from mesh.tenants import Tenants
from mesh.timestamps import timestamp_ms
from services.dialogue import metrics
from services.dialogue.clients import Chatlog
from services.dialogue.handover import ThreadControl
from services.dialogue.keys import UserId
from services.dialogue.processor import (
    RESULT_AGENT,
    RESULT_CONVERSE,
    RESULT_DEAD,
    RESULT_REFUSED,
    _user_ref,
    conversation_id,
    storable_ms,
)
from services.dialogue.records import receipt_of
from services.dialogue.store import (
    DeadLetterCursor,
    DeadLetterRecord,
    DialogueStore,
    QueueItem,
    SubmitStatus,
)

_log = get_logger("dialogue.servicer")

MAX_EVENTS = 1000
MAX_PAGE = 1000
DEFAULT_PAGE = 50
MAX_TEXT = 2000
# The chatlog takes ids of up to 512 characters: the ones derived from ours
# ("<channel>:<user_id>", "<event_id>:r<n>", "agent:<request_id>") must fit.
MAX_ID = 480
CONVERSE_LIMIT_S = 30.0

Context = grpc.aio.ServicerContext[Any, Any]


class Invalid(Exception):
    pass


class DialogueServicer(dialogue_service_pb2_grpc.DialogueServiceServicer):
    def __init__(
        self,
        store: DialogueStore,
        tenants: Tenants,
        chatlog: Chatlog,
        token_secret: bytes,
        threads: ThreadControl | None = None,
    ) -> None:
        self._store = store
        self._threads = threads  # Messenger's Handover Protocol calls
        self._tenants = tenants
        self._chatlog = chatlog
        self._tokens = PageTokens(token_secret, "dialogue-redis", Invalid)

    # ---- validation -------------------------------------------------------

    def _user(self, user: event_pb2.UserRef, where: str) -> UserId:
        if not user.tenant_id:
            raise Invalid(f"{where}user.tenant_id is required")
        if self._tenants.get(user.tenant_id) is None:
            raise Invalid(f"{where}user.tenant_id {user.tenant_id!r} is not a known tenant")
        if user.channel == event_pb2.CHANNEL_UNSPECIFIED:
            raise Invalid(f"{where}user.channel is required")
        if user.channel not in event_pb2.Channel.values():
            raise Invalid(f"{where}user.channel {user.channel} is not a known channel")
        if not user.user_id:
            raise Invalid(f"{where}user.user_id is required")
        if len(user.user_id) > MAX_ID:
            raise Invalid(f"{where}user.user_id is over {MAX_ID} characters")
        return UserId(user.tenant_id, int(user.channel), user.user_id)

    def _event(self, event: event_pb2.ChatEvent, where: str) -> UserId:
        if not event.event_id:
            raise Invalid(f"{where}event_id is required")
        if len(event.event_id) > MAX_ID:
            raise Invalid(f"{where}event_id is over {MAX_ID} characters")
        user = self._user(event.user, where)
        # Logged as the chatlog's referenced_message_id, bound like our ids.
        for name, value in (
            ("message.reply_to_mid", event.message.reply_to_mid),
            ("reaction.mid", event.reaction.mid),
        ):
            if len(value) > MAX_ID:
                raise Invalid(f"{where}{name} is over {MAX_ID} characters")
        if event.WhichOneof("kind") is None:
            raise Invalid(f"{where}kind is required (message, postback, ...)")
        return user

    def _tenant(self, tenant_id: str) -> None:
        if not tenant_id:
            raise Invalid("tenant_id is required")
        if self._tenants.get(tenant_id) is None:
            raise Invalid(f"tenant_id {tenant_id!r} is not a known tenant")

    async def _fail(self, context: Context, exc: Exception) -> NoReturn:
        if isinstance(exc, Invalid):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if isinstance(exc, RedisError):
            _log.warning("redis unavailable", extra={"error": repr(exc)})
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the queue store (Redis) is unavailable"
            )
        raise exc

    # ---- submission -------------------------------------------------------

    @staticmethod
    def _item(event: event_pb2.ChatEvent) -> QueueItem:
        ms = storable_ms(event.event_time) if event.HasField("event_time") else None
        # A time no clock gives (before 2001, or none the chatlog keeps) orders nothing.
        order_ms = ms if ms is not None and ms >= 978_307_200_000 else 0
        return QueueItem(
            item_id=event.event_id,
            kind="event",
            payload=event.SerializeToString(),
            enqueue_ms=int(time.time() * 1000),
            traceparent=tracing.current_traceparent(),
            order_ms=order_ms,
        )

    async def _submit_all(
        self, events: Sequence[event_pb2.ChatEvent], users: Sequence[UserId]
    ) -> list[SubmitStatus]:
        # One sequence per user keeps each user's order; users go in parallel.
        by_user: dict[UserId, list[int]] = {}
        for index, user in enumerate(users):
            by_user.setdefault(user, []).append(index)
        statuses: list[SubmitStatus] = [SubmitStatus.DUPLICATE] * len(events)
        # Receipts take no turn: they go straight to the chatlog's outbox and
        # become status on the messages they cover (a repeat changes nothing).
        receipts: list[chatlog_pb.Receipt] = []
        for index, event in enumerate(events):
            if event.WhichOneof("kind") in ("delivery", "read"):
                statuses[index] = SubmitStatus.ACCEPTED
                by_user[users[index]].remove(index)
                receipt = receipt_of(event)
                if receipt is not None:
                    receipts.append(receipt)
                metrics.EVENTS_SUBMITTED.labels("receipt").inc()

        async def submit_user(user: UserId, indexes: list[int]) -> None:
            for index in indexes:
                status = await self._store.submit(user, self._item(events[index]))
                statuses[index] = status
                metrics.EVENTS_SUBMITTED.labels(status.name.lower()).inc()

        await asyncio.gather(
            self._chatlog.defer(receipts), *(submit_user(u, i) for u, i in by_user.items() if i)
        )
        return statuses

    async def SubmitEvents(
        self, request: pb.SubmitEventsRequest, context: Context
    ) -> pb.SubmitEventsResponse:
        try:
            if not request.events:
                raise Invalid("events is empty")
            if len(request.events) > MAX_EVENTS:
                raise Invalid(f"events has {len(request.events)} items; the limit is {MAX_EVENTS}")
            users = [self._event(e, f"events[{i}].") for i, e in enumerate(request.events)]
            statuses = await self._submit_all(request.events, users)
        except (Invalid, RedisError) as exc:
            await self._fail(context, exc)
        return pb.SubmitEventsResponse(
            results=[
                pb.SubmitEventResult(event_id=e.event_id, status=s.value)  # type: ignore[arg-type]
                for e, s in zip(request.events, statuses, strict=True)
            ]
        )

    def _deadline(self, context: Context) -> float:
        remaining = context.time_remaining()
        limit = CONVERSE_LIMIT_S if remaining is None else min(remaining, CONVERSE_LIMIT_S)
        return time.monotonic() + max(0.0, limit - 0.05)

    async def Converse(self, request: pb.ConverseRequest, context: Context) -> pb.ConverseResponse:
        deadline = self._deadline(context)
        try:
            event = self._converse_event(request)
            user = self._event(event, "event.")
            status = (await self._submit_all([event], [user]))[0]
            result = await self._store.wait_result(
                user, event.event_id, max(0.0, deadline - time.monotonic())
            )
        except (Invalid, RedisError) as exc:
            await self._fail(context, exc)
        if result is None:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"event {event.event_id} is still queued; it will be processed once "
                "(call again with the same event_id for its result)",
            )
        if result.startswith(RESULT_DEAD):
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"event {event.event_id} failed and went to the dead letters: "
                f"{result[1:].decode(errors='replace')}",
            )
        response = pb.ConverseResponse.FromString(result[len(RESULT_CONVERSE) :])
        response.duplicate = status is SubmitStatus.DUPLICATE
        return response

    def _converse_event(self, request: pb.ConverseRequest) -> event_pb2.ChatEvent:
        which = request.WhichOneof("input")
        if which is None:
            raise Invalid("one of event or text is required")
        if which == "event":
            event = event_pb2.ChatEvent()
            event.CopyFrom(request.event)
            if request.HasField("user") and request.user != event.user:
                raise Invalid("user differs from event.user")
            if event.WhichOneof("kind") in ("delivery", "read"):
                raise Invalid(
                    "event is a receipt: receipts have no turn to wait for (SubmitEvents)"
                )
            return event
        if not request.text.strip():
            raise Invalid("text is empty")
        if len(request.text) > MAX_TEXT:
            raise Invalid(f"text has {len(request.text)} characters; the limit is {MAX_TEXT}")
        self._user(request.user, "")
        now = int(time.time() * 1000)
        event = event_pb2.ChatEvent(
            event_id=request.event_id or f"converse-{uuid.uuid4().hex}",
            user=request.user,
            message=event_pb2.Message(mid=request.event_id, text=request.text),
        )
        event.event_time.FromMilliseconds(now)
        event.receive_time.FromMilliseconds(now)
        return event

    # ---- state ------------------------------------------------------------

    async def _state(self, user: UserId, ref: event_pb2.UserRef) -> pb.ConversationState:
        raw = await self._store.state(user)
        state = pb.ConversationState(
            user=ref,
            queue_length=raw.queue_length,
            lease_holder=raw.lease_holder,
            fencing_token=raw.fencing_token,
            slots=raw.slots,
            handed_off=raw.handoff.get("active") == "1",
            handoff_reason=raw.handoff.get("reason", ""),
            handoff_agent_id=raw.handoff.get("agent_id", ""),
            last_processed_event_id=raw.last.get("event_id", ""),
            dead_letter_count=raw.dead_letter_count,
            thread_owner_app_id=raw.handoff.get("owner_app_id", ""),
            thread_control_error=raw.handoff.get("thread_error", ""),
            thread_control_requested_app_id=raw.handoff.get("requested_app_id", ""),
        )
        if raw.lease_holder:
            state.lease_expire_time.FromMilliseconds(int(time.time() * 1000) + raw.lease_ttl_ms)
        if raw.handoff.get("time"):
            state.handoff_time.FromMilliseconds(int(raw.handoff["time"]))
        if raw.last.get("time"):
            state.last_processed_time.FromMilliseconds(int(raw.last["time"]))
        return state

    async def GetConversationState(
        self, request: pb.GetConversationStateRequest, context: Context
    ) -> pb.GetConversationStateResponse:
        try:
            user = self._user(request.user, "")
            return pb.GetConversationStateResponse(state=await self._state(user, request.user))
        except (Invalid, RedisError) as exc:
            await self._fail(context, exc)

    async def SetHandoff(
        self, request: pb.SetHandoffRequest, context: Context
    ) -> pb.SetHandoffResponse:
        try:
            user = self._user(request.user, "")
            active = (await self._store.handoff(user)).get("active") == "1"
            if active != request.handed_off:
                now = int(time.time() * 1000)
                # Our own state first: the bot goes silent (or answers again)
                # whatever the channel says about its thread.
                await self._store.set_handoff(
                    user,
                    {
                        "active": "1" if request.handed_off else "0",
                        "reason": request.reason,
                        "agent_id": request.agent_id,
                        "time": str(now),
                    },
                )
                thread = await self._thread_control(user, request, context)
                if thread:
                    await self._store.set_handoff(user, thread)
                await self._record_handoff(user, request, now, thread.get("thread_error", ""))
            return pb.SetHandoffResponse(state=await self._state(user, request.user))
        except (Invalid, RedisError) as exc:
            await self._fail(context, exc)

    async def _thread_control(
        self, user: UserId, request: pb.SetHandoffRequest, context: Context
    ) -> dict[str, str]:
        """Passes the Messenger thread to the hand-off app, or takes it back."""
        tenant = self._tenants.get(user.tenant_id)
        if self._threads is None or tenant is None:
            return {}
        remaining = context.time_remaining()
        deadline = time.monotonic() + min(10.0, remaining if remaining is not None else 10.0)
        return await self._threads.for_console(
            tenant, user, request.handed_off, request.reason, request.agent_id, deadline
        )

    async def _record_handoff(
        self, user: UserId, request: pb.SetHandoffRequest, now: int, thread_error: str = ""
    ) -> None:
        who = f" by {request.agent_id}" if request.agent_id else ""
        why = f": {request.reason}" if request.reason else ""
        refused = f" (Messenger's thread control: {thread_error})" if thread_error else ""
        text = (
            ("handed off to a person" if request.handed_off else "given back to the bot")
            + who
            + why
            + refused
        )
        record = chatlog_pb.ChatMessage(
            user=request.user,
            conversation_id=conversation_id(user),
            message_id=f"handoff:{now}:{uuid.uuid4().hex[:8]}",
            direction=chatlog_pb.DIRECTION_OUTBOUND,
            type=chatlog_pb.MESSAGE_TYPE_SYSTEM,
            author=chatlog_pb.AUTHOR_AGENT if request.agent_id else chatlog_pb.AUTHOR_BOT,
            agent_id=request.agent_id,
            text=text,
            handed_off=request.handed_off,
        )
        record.create_time.FromMilliseconds(now)
        try:
            await self._chatlog.append([record])
        except Exception as exc:
            _log.warning("hand-off not recorded in the chatlog", extra={"error": repr(exc)})

    async def SendAgentMessage(
        self, request: pb.SendAgentMessageRequest, context: Context
    ) -> pb.SendAgentMessageResponse:
        deadline = self._deadline(context)
        try:
            user = self._user(request.user, "")
            if not request.agent_id:
                raise Invalid("agent_id is required")
            if not request.request_id:
                raise Invalid("request_id is required")
            if len(request.request_id) > MAX_ID:
                raise Invalid(f"request_id is over {MAX_ID} characters")
            if not request.text and not request.attachments:
                raise Invalid("one of text or attachments is required")
            if len(request.text) > MAX_TEXT * 10:
                raise Invalid(f"text is over {MAX_TEXT * 10} characters")
            item_id = f"agent:{request.request_id}"
            existing = await self._store.result(user, item_id)
            result = existing
            if existing is None:
                if (await self._store.handoff(user)).get("active") != "1":
                    await context.abort(
                        grpc.StatusCode.FAILED_PRECONDITION, "the conversation is not handed off"
                    )
                item = QueueItem(
                    item_id=item_id,
                    kind="agent",
                    payload=request.SerializeToString(),
                    enqueue_ms=int(time.time() * 1000),
                )
                await self._store.submit(user, item)
                result = await self._store.wait_result(
                    user, item_id, max(0.0, deadline - time.monotonic())
                )
        except (Invalid, RedisError) as exc:
            await self._fail(context, exc)
        if result is None:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, "not sent yet; it stays queued and is sent once"
            )
        if result.startswith(RESULT_REFUSED):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, result[1:].decode())
        if result.startswith(RESULT_DEAD):
            await context.abort(grpc.StatusCode.UNAVAILABLE, result[1:].decode(errors="replace"))
        response = pb.SendAgentMessageResponse.FromString(result[len(RESULT_AGENT) :])
        response.duplicate = existing is not None
        return response

    # ---- dead letters -----------------------------------------------------

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Context
    ) -> pb.ListDeadLettersResponse:
        try:
            self._tenant(request.tenant_id)
            if request.page_size < 0 or request.page_size > MAX_PAGE:
                raise Invalid(f"page_size must be between 0 and {MAX_PAGE}")
            size = request.page_size or DEFAULT_PAGE
            bound = [request.tenant_id, int(request.channel), request.user_id]
            cursor: DeadLetterCursor | None = None
            if request.page_token:
                mark = self._tokens.read(request.page_token, "ListDeadLetters", bound)
                if len(mark) != 2 or not isinstance(mark[0], int | float):
                    raise Invalid("page_token is invalid: it does not fit this request")
                cursor = DeadLetterCursor(float(mark[0]), str(mark[1]))
            found: list[DeadLetterRecord] = []
            while len(found) < size:
                batch, batch_end = await self._store.dead_letters_after(
                    request.tenant_id, cursor, size
                )
                for record in batch:
                    cursor = DeadLetterCursor(record.last_failure_ms, record.dead_letter_id)
                    if request.channel and record.user.channel != request.channel:
                        continue
                    if request.user_id and record.user.user_id != request.user_id:
                        continue
                    found.append(record)
                    if len(found) == size:
                        break
                else:
                    cursor = batch_end  # past the whole batch, records or not
                    if batch_end is None:
                        break
            response = pb.ListDeadLettersResponse(dead_letters=[self._dead(r) for r in found])
            if cursor is not None and len(found) == size:
                following, _ = await self._store.dead_letters_after(request.tenant_id, cursor, 1)
                if following:
                    response.next_page_token = self._tokens.issue(
                        "ListDeadLetters", bound, [cursor.score, cursor.dead_letter_id]
                    )
            return response
        except (Invalid, RedisError) as exc:
            await self._fail(context, exc)

    @staticmethod
    def _dead(record: DeadLetterRecord) -> pb.DeadLetter:
        event = (
            event_pb2.ChatEvent.FromString(record.item.payload)
            if record.item.kind == "event"
            else event_pb2.ChatEvent(
                event_id=record.item.item_id,
                user=_user_ref(record.user),
            )
        )
        return pb.DeadLetter(
            dead_letter_id=record.dead_letter_id,
            event=event,
            attempt_count=record.attempts,
            last_error=record.last_error,
            first_failure_time=timestamp_ms(record.first_failure_ms),
            last_failure_time=timestamp_ms(record.last_failure_ms),
        )

    async def ReplayDeadLetter(
        self, request: pb.ReplayDeadLetterRequest, context: Context
    ) -> pb.ReplayDeadLetterResponse:
        try:
            self._tenant(request.tenant_id)
            if not request.dead_letter_id:
                raise Invalid("dead_letter_id is required")
            record = await self._store.dead_letter_record(request.tenant_id, request.dead_letter_id)
            if record is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"tenant {request.tenant_id!r} has no dead letter {request.dead_letter_id!r}",
                )
            await self._store.replay_dead_letter(record)
            return pb.ReplayDeadLetterResponse(
                dead_letter=self._dead(record),
                queue_length=await self._store.queue_length(record.user),
            )
        except (Invalid, RedisError) as exc:
            await self._fail(context, exc)
