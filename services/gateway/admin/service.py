"""What the console does, once for the pages and the JSON API alike.

Each operation takes the signed-in `Identity`, checks the tenant is granted
(and the admin role for actions), calls the chatlog or the dialogue service
with the console's deadline, and turns gRPC errors into the console's error
tree. Nothing here knows about HTML or JSON.

Changes to a tenant's data (retention, erasure) leave an audit line on the
``gateway.admin.audit`` logger: who, which tenant, what, and the result; the
erased customer appears only as the keyed hash every log uses.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable
from typing import TypeVar

import grpc
from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as dialogue_pb
from google.protobuf.duration_pb2 import Duration
from redis.exceptions import RedisError

from mesh import get_logger
from mesh.logging import hashed
from services.gateway.admin.auth import Identity
from services.gateway.admin.backends import Backends
from services.gateway.admin.errors import (
    AdminError,
    BackendTimeout,
    BackendUnavailable,
    BadInput,
    Conflict,
    NotFound,
)
from services.gateway.admin.params import ConversationFilter, ExportFilter, timestamp
from services.gateway.admin.profiles import CustomerProfiles
from services.gateway.admin.settings import AdminSettings

_T = TypeVar("_T")
_log = get_logger("gateway.admin")
_audit = get_logger("gateway.admin.audit")
MAX_RETENTION_DAYS = 20 * 366  # longer policies are stored as "20 years" by the chatlog
DAY_SECONDS = 86400
MAX_STATS_DAYS = 366


def error_from_rpc(exc: grpc.aio.AioRpcError) -> AdminError:
    code, details = exc.code(), exc.details() or ""
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return BadInput(details)
    if code is grpc.StatusCode.NOT_FOUND:
        return NotFound(details)
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return Conflict(details)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return BackendTimeout("the service did not answer in time")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return BackendUnavailable("the service is unavailable; try again shortly")
    return AdminError(f"{code.name}: {details}")


async def rpc(call: Awaitable[_T]) -> _T:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        error = error_from_rpc(exc)
        if not isinstance(error, (BadInput, NotFound, Conflict)):
            _log.warning("backend call failed", extra={"code": exc.code().name})
        raise error from exc


def user_ref(tenant_id: str, channel: int, user_id: str) -> event_pb2.UserRef:
    if not user_id:
        raise BadInput("user_id is required")
    if channel == event_pb2.CHANNEL_UNSPECIFIED:
        raise BadInput("channel is required")
    ref = event_pb2.UserRef(tenant_id=tenant_id, user_id=user_id)
    ref.channel = channel  # type: ignore[assignment]
    return ref


class ConsoleService:
    def __init__(
        self, settings: AdminSettings, backends: Backends, profiles: CustomerProfiles | None = None
    ) -> None:
        self._settings = settings
        self._backends = backends
        self._profiles = profiles

    @property
    def _timeout(self) -> float:
        return self._settings.rpc_timeout

    # ---- reading -----------------------------------------------------------

    async def conversations(
        self, who: Identity, tenant: str, where: ConversationFilter, page_token: str, size: int
    ) -> chatlog_pb.ListConversationsResponse:
        request = chatlog_pb.ListConversationsRequest(
            tenant_id=who.require_tenant(tenant),
            page_size=size,
            page_token=page_token,
            intent=where.intent,
            user_id=where.user_id,
        )
        request.channel = where.channel  # type: ignore[assignment]
        if where.start:
            request.start_time.CopyFrom(timestamp(where.start))
        if where.end:
            request.end_time.CopyFrom(timestamp(where.end))
        if where.fallback_only:
            request.has_fallback = True
        if where.handed_off is not None:
            request.handed_off = where.handed_off
        return await rpc(self._backends.chatlog.ListConversations(request, timeout=self._timeout))

    async def search(
        self,
        who: Identity,
        tenant: str,
        words: str,
        start: dt.datetime,
        end: dt.datetime,
        channel: int,
        page_token: str,
        size: int,
    ) -> chatlog_pb.SearchMessagesResponse:
        request = chatlog_pb.SearchMessagesRequest(
            tenant_id=who.require_tenant(tenant),
            query=words,
            page_size=size,
            page_token=page_token,
        )
        request.channel = channel  # type: ignore[assignment]
        request.start_time.CopyFrom(timestamp(start))
        request.end_time.CopyFrom(timestamp(end))
        return await rpc(self._backends.chatlog.SearchMessages(request, timeout=self._timeout))

    async def messages(
        self,
        who: Identity,
        tenant: str,
        conversation_id: str,
        page_token: str = "",
        size: int = 100,
        newest_first: bool = True,
    ) -> chatlog_pb.ListMessagesResponse:
        if not conversation_id:
            raise BadInput("conversation_id is required")
        request = chatlog_pb.ListMessagesRequest(
            tenant_id=who.require_tenant(tenant),
            conversation_id=conversation_id,
            page_size=size,
            page_token=page_token,
            order=(
                chatlog_pb.MESSAGE_ORDER_NEWEST_FIRST
                if newest_first
                else chatlog_pb.MESSAGE_ORDER_OLDEST_FIRST
            ),
        )
        return await rpc(self._backends.chatlog.ListMessages(request, timeout=self._timeout))

    async def state(
        self, who: Identity, tenant: str, channel: int, user_id: str
    ) -> dialogue_pb.ConversationState:
        ref = user_ref(who.require_tenant(tenant), channel, user_id)
        reply = await rpc(
            self._backends.dialogue.GetConversationState(
                dialogue_pb.GetConversationStateRequest(user=ref), timeout=self._timeout
            )
        )
        return reply.state

    async def stats(
        self, who: Identity, tenant: str, start: dt.datetime, end: dt.datetime, channel: int
    ) -> chatlog_pb.GetStatsResponse:
        if end <= start:
            raise BadInput("the end must be after the start")
        if end - start > dt.timedelta(days=MAX_STATS_DAYS):
            raise BadInput(f"stats cover at most {MAX_STATS_DAYS} days")
        request = chatlog_pb.GetStatsRequest(tenant_id=who.require_tenant(tenant))
        request.channel = channel  # type: ignore[assignment]
        request.start_time.CopyFrom(timestamp(start))
        request.end_time.CopyFrom(timestamp(end))
        return await rpc(self._backends.chatlog.GetStats(request, timeout=self._timeout))

    async def dead_letters(
        self, who: Identity, tenant: str, page_token: str, size: int
    ) -> dialogue_pb.ListDeadLettersResponse:
        request = dialogue_pb.ListDeadLettersRequest(
            tenant_id=who.require_tenant(tenant), page_size=size, page_token=page_token
        )
        return await rpc(self._backends.dialogue.ListDeadLetters(request, timeout=self._timeout))

    async def export(
        self, who: Identity, tenant: str, where: ExportFilter
    ) -> chatlog_pb.ExportTrainingDataResponse:
        request = chatlog_pb.ExportTrainingDataRequest(
            tenant_id=who.require_tenant(tenant), intents=list(where.intents), limit=where.limit
        )
        if where.start:
            request.start_time.CopyFrom(timestamp(where.start))
        if where.end:
            request.end_time.CopyFrom(timestamp(where.end))
        if where.min_confidence is not None:
            request.min_confidence = where.min_confidence
        if where.max_confidence is not None:
            request.max_confidence = where.max_confidence
        return await rpc(
            self._backends.chatlog.ExportTrainingData(request, timeout=self._timeout * 4)
        )

    # ---- acting (admins) ---------------------------------------------------

    async def replay(
        self, who: Identity, tenant: str, dead_letter_id: str
    ) -> dialogue_pb.ReplayDeadLetterResponse:
        who.require_admin()
        if not dead_letter_id:
            raise BadInput("dead_letter_id is required")
        request = dialogue_pb.ReplayDeadLetterRequest(
            tenant_id=who.require_tenant(tenant), dead_letter_id=dead_letter_id
        )
        reply = await rpc(self._backends.dialogue.ReplayDeadLetter(request, timeout=self._timeout))
        _log.info(
            "dead letter replayed",
            extra={"admin": who.name, "tenant": tenant, "dead_letter_id": dead_letter_id},
        )
        return reply

    async def set_handoff(
        self, who: Identity, tenant: str, channel: int, user_id: str, on: bool, reason: str
    ) -> dialogue_pb.ConversationState:
        who.require_admin()
        ref = user_ref(who.require_tenant(tenant), channel, user_id)
        request = dialogue_pb.SetHandoffRequest(
            user=ref, handed_off=on, reason=reason[:200], agent_id=who.name
        )
        reply = await rpc(self._backends.dialogue.SetHandoff(request, timeout=self._timeout))
        _log.info(
            "hand-off changed",
            extra={"admin": who.name, "tenant": tenant, "handed_off": on},
        )
        return reply.state

    async def send_agent_message(
        self,
        who: Identity,
        tenant: str,
        channel: int,
        user_id: str,
        message: str,
        request_id: str = "",
    ) -> dialogue_pb.SendAgentMessageResponse:
        who.require_admin()
        ref = user_ref(who.require_tenant(tenant), channel, user_id)
        message = message.strip()
        if not message:
            raise BadInput("the message is empty")
        if len(message) > 2000:
            raise BadInput("the message is over 2000 characters")
        request = dialogue_pb.SendAgentMessageRequest(
            user=ref,
            agent_id=who.name,
            request_id=(request_id or uuid.uuid4().hex)[:100],
            text=message,
        )
        return await rpc(
            self._backends.dialogue.SendAgentMessage(request, timeout=self._settings.agent_timeout)
        )

    # ---- the tenant's data (admins) -------------------------------------------

    async def retention(self, who: Identity, tenant: str) -> chatlog_pb.RetentionPolicy:
        who.require_admin()
        request = chatlog_pb.GetRetentionPolicyRequest(tenant_id=who.require_tenant(tenant))
        reply = await rpc(self._backends.chatlog.GetRetentionPolicy(request, timeout=self._timeout))
        return reply.policy

    async def set_retention(
        self, who: Identity, tenant: str, days: int
    ) -> chatlog_pb.RetentionPolicy:
        """Keeps messages stored from now on ``days`` days; 0 keeps them until deleted."""
        who.require_admin()
        if not 0 <= days <= MAX_RETENTION_DAYS:
            raise BadInput(f"days must be between 0 (keep until deleted) and {MAX_RETENTION_DAYS}")
        policy = chatlog_pb.RetentionPolicy(
            tenant_id=who.require_tenant(tenant), message_ttl=Duration(seconds=days * DAY_SECONDS)
        )
        reply = await rpc(
            self._backends.chatlog.SetRetentionPolicy(
                chatlog_pb.SetRetentionPolicyRequest(policy=policy), timeout=self._timeout
            )
        )
        _audit.info(
            "audit: retention set",
            extra={"action": "set_retention", "admin": who.name, "tenant": tenant, "days": days},
        )
        return reply.policy

    async def erase_user(
        self, who: Identity, tenant: str, channel: int, user_id: str
    ) -> chatlog_pb.DeleteUserDataResponse:
        """Deletes a customer's messages and conversations (every channel when unspecified)."""
        who.require_admin()
        if not user_id:
            raise BadInput("user_id is required")
        request = chatlog_pb.DeleteUserDataRequest(
            tenant_id=who.require_tenant(tenant), user_id=user_id
        )
        request.channel = channel  # type: ignore[assignment]
        reply = await rpc(self._backends.chatlog.DeleteUserData(request, timeout=self._timeout * 4))
        _audit.info(
            "audit: customer data erased",
            extra={
                "action": "erase_user",
                "admin": who.name,
                "tenant": tenant,
                "user": hashed(user_id),
                "channel": event_pb2.Channel.Name(channel),  # type: ignore[arg-type]
                "messages": reply.deleted_message_count,
                "conversations": reply.deleted_conversation_count,
            },
        )
        if self._profiles is not None and channel in (
            event_pb2.CHANNEL_UNSPECIFIED,
            event_pb2.CHANNEL_MESSENGER,
        ):
            try:
                await self._profiles.forget(tenant, user_id)
            except (RedisError, OSError) as exc:
                _log.warning("cached profile not erased (Redis)", extra={"tenant": tenant})
                raise BackendUnavailable(
                    "the messages are erased but the cached name and picture are not "
                    "(Redis is unavailable): erase again shortly"
                ) from exc
        return reply
