"""``chatbot.chatlog.v1.ChatlogService`` over a ``ChatlogStore``.

Each RPC checks its request (validation.py), turns it into a store query,
and maps the store's answer back to protos. Errors follow the contract:
``ChatlogError``s become their status codes (errors.py); anything else is a
bug, logged with its traceback and answered INTERNAL, never UNKNOWN.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.chatlog.v1 import chatlog_service_pb2_grpc
from chatbot.common.v1 import event_pb2, nlu_result_pb2

from mesh import get_logger
from mesh.page_tokens import PageTokens
from mesh.tenants import Tenants
from services.chatlog import validation as check
from services.chatlog.errors import (
    ChatlogError,
    InvalidArgument,
    NotFound,
    StaleFencingToken,
    StoreUnavailable,
)
from services.chatlog.export import rasa_nlu_yaml
from services.chatlog.metrics import APPENDED, RECEIPTS
from services.chatlog.records import (
    DAY_NS,
    ConversationSummary,
    MessageRecord,
    ReceiptRecord,
    RetentionRecord,
    ns_duration,
    ns_timestamp,
    timestamp_ns,
)
from services.chatlog.retention import RetentionPolicies
from services.chatlog.stats import StatsAggregator
from services.chatlog.store.base import (
    ChatlogStore,
    ConversationQuery,
    ExportQuery,
    SearchQuery,
    StatsQuery,
    StoredMessage,
    TranscriptQuery,
)
from services.chatlog.validation import Limits

_log = get_logger("chatlog.servicer")
_T = TypeVar("_T")
Context = grpc.aio.ServicerContext[Any, Any]

_CODES = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    StaleFencingToken: grpc.StatusCode.FAILED_PRECONDITION,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
}
# ListMessages tokens point past their anchor message one way or the other.
_NEXT, _PREVIOUS = "n", "p"


def _cursor(values: list[Any], *types: type) -> tuple[Any, ...]:
    """A decoded cursor with the expected shape (a signed token always has it)."""
    if len(values) != len(types) or not all(
        isinstance(v, t) and not isinstance(v, bool) for v, t in zip(values, types, strict=True)
    ):
        raise InvalidArgument("page_token is invalid: it does not fit this request")
    return tuple(values)


def conversation_proto(summary: ConversationSummary) -> pb.Conversation:
    conversation = pb.Conversation(
        conversation_id=summary.conversation_id,
        user=event_pb2.UserRef(
            tenant_id=summary.tenant_id,
            channel=summary.channel,  # type: ignore[arg-type]
            user_id=summary.user_id,
        ),
        first_message_time=ns_timestamp(summary.first_ns),
        last_message_time=ns_timestamp(summary.last_ns),
        message_count=summary.message_count,
        last_message_preview=summary.last_preview,
        last_message_direction=summary.last_direction,  # type: ignore[arg-type]
        has_fallback=summary.has_fallback,
        handed_off=summary.handed_off,
    )
    if summary.last_intent:
        conversation.last_intent.CopyFrom(
            nlu_result_pb2.Intent(
                name=summary.last_intent, confidence=summary.last_intent_confidence
            )
        )
    return conversation


def _messages(stored: list[StoredMessage]) -> list[pb.ChatMessage]:
    return [pb.ChatMessage.FromString(m.payload) for m in stored]


class ChatlogServicer(chatlog_service_pb2_grpc.ChatlogServiceServicer):
    def __init__(
        self,
        store: ChatlogStore,
        tenants: Tenants,
        tokens: PageTokens,
        retention: RetentionPolicies,
        *,
        limits: Limits | None = None,
        on_unavailable: Callable[[], None] = lambda: None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._store = store
        self._tenants = tenants
        self._tokens = tokens
        self._retention = retention
        self._limits = limits or Limits()
        self._on_unavailable = on_unavailable
        self._clock = clock

    async def _call(self, context: Context, work: Callable[[], Awaitable[_T]]) -> _T:
        try:
            return await work()
        except ChatlogError as exc:
            if isinstance(exc, StoreUnavailable):
                self._on_unavailable()
            await self._abort(context, _CODES[type(exc)], str(exc))
        except Exception:
            _log.exception("internal error")
            await self._abort(
                context, grpc.StatusCode.INTERNAL, "internal error: see the chatlog's log"
            )

    @staticmethod
    async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
        await context.abort(code, message)
        raise AssertionError("abort returned")

    def _tenant(self, tenant_id: str) -> str:
        return check.tenant(self._tenants, tenant_id)

    def _optional_time(self, request: Any, name: str) -> int | None:
        return check.timestamp(getattr(request, name), name) if request.HasField(name) else None

    # ------------------------------------------------------------------ writes

    async def AppendMessages(
        self, request: pb.AppendMessagesRequest, context: Context
    ) -> pb.AppendMessagesResponse:
        return await self._call(context, lambda: self._append(request))

    async def _append(self, request: pb.AppendMessagesRequest) -> pb.AppendMessagesResponse:
        messages = request.messages
        total = len(messages) + len(request.receipts)
        if not total:
            raise InvalidArgument("messages is empty: send 1 to 500 messages")
        if total > self._limits.max_batch:
            raise InvalidArgument(
                f"messages and receipts have {total} items; the maximum is {self._limits.max_batch}"
            )
        for index, message in enumerate(messages):
            check.message(index, message, self._tenants, self._limits)
        for index, receipt in enumerate(request.receipts):
            check.receipt(index, receipt, self._tenants, self._limits)
        if request.receipts:
            now = self._clock()
            await self._store.record_receipts(
                [ReceiptRecord.build(r, now) for r in request.receipts]
            )
            RECEIPTS.inc(len(request.receipts))
        if not messages:
            return pb.AppendMessagesResponse()
        records = [
            MessageRecord.build(
                message,
                await self._retention.expiry(
                    message.user.tenant_id, timestamp_ns(message.create_time)
                ),
            )
            for message in messages
        ]
        created = await self._store.append(records)
        results = []
        for message, is_new in zip(messages, created, strict=True):
            status = pb.APPEND_STATUS_CREATED if is_new else pb.APPEND_STATUS_ALREADY_EXISTS
            APPENDED.labels("created" if is_new else "already_exists").inc()
            results.append(pb.AppendResult(message_id=message.message_id, status=status))
        return pb.AppendMessagesResponse(results=results)

    async def DeleteUserData(
        self, request: pb.DeleteUserDataRequest, context: Context
    ) -> pb.DeleteUserDataResponse:
        async def work() -> pb.DeleteUserDataResponse:
            tenant = self._tenant(request.tenant_id)
            user = check.identifier(request.user_id, "user_id", self._limits)
            channel = check.channel(request.channel)
            result = await self._store.delete_user(tenant, user, channel, self._clock())
            _log.info(
                "user data deleted",
                extra={
                    "tenant": tenant,
                    "messages": result.messages,
                    "conversations": result.conversations,
                },
            )
            return pb.DeleteUserDataResponse(
                deleted_message_count=result.messages,
                deleted_conversation_count=result.conversations,
            )

        return await self._call(context, work)

    # ------------------------------------------------------------------ lists

    async def ListConversations(
        self, request: pb.ListConversationsRequest, context: Context
    ) -> pb.ListConversationsResponse:
        return await self._call(context, lambda: self._list_conversations(request))

    async def _list_conversations(
        self, request: pb.ListConversationsRequest
    ) -> pb.ListConversationsResponse:
        tenant = self._tenant(request.tenant_id)
        limit = check.page_size(request.page_size, self._limits)
        start = self._optional_time(request, "start_time")
        end = self._optional_time(request, "end_time")
        check.time_range(start, end)
        channel = check.channel(request.channel)
        intent = check.optional_text(request.intent, "intent", self._limits)
        user_id = check.optional_text(request.user_id, "user_id", self._limits)
        has_fallback = request.has_fallback if request.HasField("has_fallback") else None
        handed_off = request.handed_off if request.HasField("handed_off") else None
        binding = [
            tenant,
            channel,
            start,
            end,
            intent,
            has_fallback,
            handed_off,
            user_id,
        ]
        after = None
        if request.page_token:
            cursor = self._tokens.read(request.page_token, "ListConversations", binding)
            after = _cursor(cursor, int, str)
        page = await self._store.list_conversations(
            ConversationQuery(
                tenant_id=tenant,
                limit=limit,
                after=after,
                channel=channel,
                start_ns=start,
                end_ns=end,
                intent=intent,
                has_fallback=has_fallback,
                handed_off=handed_off,
                user_id=user_id,
                now_ns=self._clock(),
            )
        )
        return pb.ListConversationsResponse(
            conversations=[conversation_proto(s) for s in page.conversations],
            next_page_token=(
                self._tokens.issue("ListConversations", binding, list(page.next_after))
                if page.next_after
                else ""
            ),
        )

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: Context
    ) -> pb.ListMessagesResponse:
        return await self._call(context, lambda: self._list_messages(request))

    async def _list_messages(self, request: pb.ListMessagesRequest) -> pb.ListMessagesResponse:
        tenant = self._tenant(request.tenant_id)
        conversation = check.identifier(request.conversation_id, "conversation_id", self._limits)
        limit = check.page_size(request.page_size, self._limits)
        order = check.order(request.order)
        ascending = order != pb.MESSAGE_ORDER_NEWEST_FIRST
        binding = [tenant, conversation, int(order)]
        side, anchor = _NEXT, None
        if request.page_token:
            cursor = self._tokens.read(request.page_token, "ListMessages", binding)
            side, create_ns, message_id = _cursor(cursor, str, int, str)
            if side not in (_NEXT, _PREVIOUS):
                raise InvalidArgument("page_token is invalid: it does not fit this request")
            anchor = (create_ns, message_id)
        # A "previous" page is read backwards from its anchor, then shown in the order asked.
        backwards = side == _PREVIOUS
        scan = await self._store.scan_transcript(
            TranscriptQuery(
                tenant_id=tenant,
                conversation_id=conversation,
                limit=limit,
                ascending=ascending != backwards,
                after=anchor,
                now_ns=self._clock(),
            )
        )
        found = list(reversed(scan.messages)) if backwards else scan.messages
        if not found and anchor is None:
            raise NotFound(f"conversation {conversation!r} has no message for tenant {tenant!r}")
        messages = _messages(found)
        if any(m.direction == pb.DIRECTION_OUTBOUND for m in messages):
            marks = await self._store.watermarks(tenant, conversation)
            for message in messages:
                message.delivery_status = marks.status(message)
        response = pb.ListMessagesResponse(messages=messages)
        if found:
            first, last = found[0].key, found[-1].key
            # Forwards, more is known from the scan; a previous page always has its anchor after it.
            if backwards or scan.has_more:
                response.next_page_token = self._tokens.issue(
                    "ListMessages", binding, [_NEXT, *last]
                )
            response.previous_page_token = self._tokens.issue(
                "ListMessages", binding, [_PREVIOUS, *first]
            )
        return response

    async def SearchMessages(
        self, request: pb.SearchMessagesRequest, context: Context
    ) -> pb.SearchMessagesResponse:
        return await self._call(context, lambda: self._search(request))

    async def _search(self, request: pb.SearchMessagesRequest) -> pb.SearchMessagesResponse:
        tenant = self._tenant(request.tenant_id)
        words = check.words(request.query, self._limits)
        if not request.HasField("start_time"):
            raise InvalidArgument("start_time is required")
        start = check.timestamp(request.start_time, "start_time")
        given_end = self._optional_time(request, "end_time")
        now = self._clock()
        end = given_end if given_end is not None else now
        check.time_range(start, end, end_name="end_time (now when empty)")
        if end - start > self._limits.max_search_days * DAY_NS:
            raise InvalidArgument(
                f"the range from start_time to end_time is over the maximum "
                f"({self._limits.max_search_days} days)"
            )
        limit = check.page_size(request.page_size, self._limits)
        direction = check.direction(request.direction)
        channel = check.channel(request.channel)
        binding = [tenant, list(words), start, given_end, direction, channel]
        after = None
        if request.page_token:
            cursor = self._tokens.read(request.page_token, "SearchMessages", binding)
            after = _cursor(cursor, int, str)
        page = await self._store.search(
            SearchQuery(
                tenant_id=tenant,
                words=words,
                start_ns=start,
                end_ns=end,
                direction=direction,
                channel=channel,
                limit=limit,
                after=after,
                now_ns=now,
            )
        )
        return pb.SearchMessagesResponse(
            messages=_messages(page.messages),
            next_page_token=(
                self._tokens.issue("SearchMessages", binding, list(page.next_after))
                if page.next_after
                else ""
            ),
        )

    # ------------------------------------------------------------------ stats and export

    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> pb.GetStatsResponse:
        async def work() -> pb.GetStatsResponse:
            tenant = self._tenant(request.tenant_id)
            for name in ("start_time", "end_time"):
                if not request.HasField(name):
                    raise InvalidArgument(f"{name} is required")
            start = check.timestamp(request.start_time, "start_time")
            end = check.timestamp(request.end_time, "end_time")
            check.time_range(start, end)
            start_day, end_day = start // DAY_NS, -(-end // DAY_NS)  # down and up to 00:00 UTC
            if end_day - start_day > self._limits.max_stats_days:
                raise InvalidArgument(
                    f"the range covers {end_day - start_day} days; the maximum is "
                    f"{self._limits.max_stats_days}"
                )
            channel = check.channel(request.channel)
            aggregator = StatsAggregator(start_day, end_day)
            await self._store.stats(
                StatsQuery(tenant, start_day * DAY_NS, end_day * DAY_NS, channel, self._clock()),
                aggregator,
            )
            return aggregator.to_proto()

        return await self._call(context, work)

    async def ExportTrainingData(
        self, request: pb.ExportTrainingDataRequest, context: Context
    ) -> pb.ExportTrainingDataResponse:
        async def work() -> pb.ExportTrainingDataResponse:
            tenant = self._tenant(request.tenant_id)
            start = self._optional_time(request, "start_time")
            end = self._optional_time(request, "end_time")
            check.time_range(start, end)
            low = (
                check.confidence(request.min_confidence, "min_confidence")
                if request.HasField("min_confidence")
                else None
            )
            high = (
                check.confidence(request.max_confidence, "max_confidence")
                if request.HasField("max_confidence")
                else None
            )
            if low is not None and high is not None and low > high:
                raise InvalidArgument("min_confidence must not be above max_confidence")
            if request.limit < 0:
                raise InvalidArgument(f"limit must not be negative, got {request.limit}")
            if request.limit > self._limits.max_export_limit:
                raise InvalidArgument(
                    f"limit {request.limit} is over the maximum {self._limits.max_export_limit}"
                )
            result = await self._store.export(
                ExportQuery(
                    tenant_id=tenant,
                    start_ns=start,
                    end_ns=end,
                    intents=check.intents(request.intents, self._limits),
                    min_confidence=low,
                    max_confidence=high,
                    limit=request.limit or self._limits.default_export_limit,
                    now_ns=self._clock(),
                )
            )
            return pb.ExportTrainingDataResponse(
                rasa_nlu_yaml=rasa_nlu_yaml(result.rows),
                examples=[row.to_proto() for row in result.rows],
                truncated=result.truncated,
            )

        return await self._call(context, work)

    # ------------------------------------------------------------------ retention

    @staticmethod
    def _policy_proto(policy: RetentionRecord) -> pb.RetentionPolicy:
        proto = pb.RetentionPolicy(
            tenant_id=policy.tenant_id, message_ttl=ns_duration(policy.message_ttl_ns)
        )
        if policy.update_ns is not None:
            proto.update_time.CopyFrom(ns_timestamp(policy.update_ns))
        return proto

    async def GetRetentionPolicy(
        self, request: pb.GetRetentionPolicyRequest, context: Context
    ) -> pb.GetRetentionPolicyResponse:
        async def work() -> pb.GetRetentionPolicyResponse:
            policy = await self._retention.get(self._tenant(request.tenant_id), fresh=True)
            return pb.GetRetentionPolicyResponse(policy=self._policy_proto(policy))

        return await self._call(context, work)

    async def SetRetentionPolicy(
        self, request: pb.SetRetentionPolicyRequest, context: Context
    ) -> pb.SetRetentionPolicyResponse:
        async def work() -> pb.SetRetentionPolicyResponse:
            tenant = check.tenant(self._tenants, request.policy.tenant_id, "policy.tenant_id")
            ttl = check.duration(request.policy.message_ttl, "policy.message_ttl")
            if ttl < 0:
                raise InvalidArgument("policy.message_ttl must not be negative")
            if 0 < ttl < DAY_NS:
                raise InvalidArgument(
                    "policy.message_ttl must be at least one day (or zero: keep until deleted)"
                )
            policy = await self._retention.set(tenant, ttl, self._clock())
            _log.info("retention policy set", extra={"tenant": tenant, "message_ttl_ns": ttl})
            return pb.SetRetentionPolicyResponse(policy=self._policy_proto(policy))

        return await self._call(context, work)
