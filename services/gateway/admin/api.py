"""The console's JSON API under ``/api/admin`` (described at ``/api/admin/openapi.json``).

Answers are the contracts' messages in the proto3 JSON mapping (field names as
in the ``.proto`` files, enums by name, times in RFC 3339, 64-bit integers as
strings); errors are ``{"error": code, "message": why}``. Every call needs the
session cookie; every POST also its CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.common.v1 import event_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from services.gateway.admin import params
from services.gateway.admin.auth import Accounts, Identity, check_csrf
from services.gateway.admin.errors import BadInput
from services.gateway.admin.guard import identity
from services.gateway.admin.live import Follower, LiveRequest
from services.gateway.admin.openapi import document
from services.gateway.admin.params import ConversationFilter, export_filter
from services.gateway.admin.profiles import CustomerProfiles
from services.gateway.admin.service import MAX_RETENTION_DAYS, ConsoleService
from services.gateway.admin.settings import AdminSettings


def to_json(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


class Api:
    def __init__(
        self,
        service: ConsoleService,
        profiles: CustomerProfiles,
        accounts: Accounts,
        settings: AdminSettings,
        render_message: Callable[[chatlog_pb.ChatMessage], str],
    ) -> None:
        """``render_message`` gives a message's HTML for the live transcript."""
        self._service = service
        self._profiles = profiles
        self._accounts = accounts
        self._settings = settings
        self._render_message = render_message

    def routes(self) -> list[BaseRoute]:
        t = "/tenants/{tenant}"
        return [
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/me", self.me, methods=["GET"]),
            Route(f"{t}/conversations", self.conversations, methods=["GET"]),
            Route(f"{t}/search", self.search, methods=["GET"]),
            Route(f"{t}/messages", self.messages, methods=["GET"]),
            Route(f"{t}/live", self.live, methods=["GET"]),
            Route(f"{t}/state", self.state, methods=["GET"]),
            Route(f"{t}/handoff", self.handoff, methods=["POST"]),
            Route(f"{t}/agent-messages", self.agent_message, methods=["POST"]),
            Route(f"{t}/stats", self.stats, methods=["GET"]),
            Route(f"{t}/dead-letters", self.dead_letters, methods=["GET"]),
            Route(f"{t}/dead-letters/{{dead_letter_id}}/replay", self.replay, methods=["POST"]),
            Route(f"{t}/training-data", self.training, methods=["GET"]),
            Route(f"{t}/training-data.yml", self.training_yaml, methods=["GET"]),
            Route(f"{t}/retention", self.retention, methods=["GET"]),
            Route(f"{t}/retention", self.set_retention, methods=["POST"]),
            Route(f"{t}/erase", self.erase, methods=["POST"]),
        ]

    def _tenant(self, request: Request) -> tuple[Identity, str]:
        who = identity(request)
        return who, who.require_tenant(request.path_params["tenant"])

    async def _post(self, request: Request) -> tuple[Identity, str, dict[str, str]]:
        who, tenant = self._tenant(request)
        form = await params.form(request)
        check_csrf(request, who.session.csrf_token, form)
        return who, tenant, form

    async def openapi(self, request: Request) -> Response:
        identity(request)
        return JSONResponse(document())

    async def me(self, request: Request) -> Response:
        who = identity(request)
        return JSONResponse(
            {
                "name": who.name,
                "role": who.user.role,
                "tenants": who.tenants,
                "csrf_token": who.session.csrf_token,
            }
        )

    async def conversations(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        q = params.query(request)
        where = ConversationFilter(
            channel=params.channel(q),
            start=params.when(q, "start"),
            end=params.when(q, "end", end=True),
            intent=params.text(q, "intent"),
            fallback_only=bool(params.flag(q, "fallback")),
            handed_off=params.flag(q, "handed_off"),
            user_id=params.text(q, "user"),
        )
        found = await self._service.conversations(
            who,
            tenant,
            where,
            params.text(q, "page_token", limit=4096),
            params.integer(q, "page_size", 50, 1, 1000),
        )
        body = to_json(found)
        known = await self._profiles.lookup(tenant, [c.user for c in found.conversations])
        for conversation, item in zip(
            found.conversations, body.get("conversations", []), strict=True
        ):
            profile = known.get(conversation.user.user_id)
            if profile is not None and conversation.user.channel == event_pb2.CHANNEL_MESSENGER:
                item["customer"] = profile.to_json()
        return JSONResponse(body)

    async def search(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        q = params.query(request)
        words = params.text(q, "q", limit=200)
        if not words:
            raise BadInput("q (the words to find) is required")
        window = params.search_window(q)
        found = await self._service.search(
            who,
            tenant,
            words,
            window.start,
            window.end,
            params.channel(q),
            params.text(q, "page_token", limit=4096),
            params.integer(q, "page_size", 50, 1, 1000),
        )
        return JSONResponse(to_json(found))

    async def messages(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        q = params.query(request)
        order = params.text(q, "order") or "oldest_first"
        if order not in ("oldest_first", "newest_first"):
            raise BadInput("order must be oldest_first or newest_first")
        found = await self._service.messages(
            who,
            tenant,
            params.text(q, "conversation_id", limit=400),
            params.text(q, "page_token", limit=4096),
            params.integer(q, "page_size", 100, 1, 1000),
            newest_first=order == "newest_first",
        )
        return JSONResponse(to_json(found))

    async def live(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        q = params.query(request)
        settings = self._settings
        seconds = params.number(q, "max_seconds", 0.1, settings.live_stream_seconds)
        accounts = self._accounts

        async def signed_in() -> bool:
            now = await accounts.identify(request, touch=False)
            return now is not None and now.session.key == who.session.key

        live = LiveRequest(
            who=who,
            tenant=tenant,
            conversation_id=params.text(q, "conversation_id", limit=400),
            token=(
                request.headers.get("last-event-id") or params.text(q, "page_token", limit=4096)
            )[:4096],
            seconds=seconds or settings.live_stream_seconds,
            poll_seconds=settings.live_poll_seconds,
            signed_in=signed_in,
        )
        follower = Follower(self._service, self._render_message)
        token, sample = await follower.prepare(live)
        return StreamingResponse(
            follower.stream(live, token, sample),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def state(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        q = params.query(request)
        found = await self._service.state(
            who, tenant, params.channel(q), params.text(q, "user_id", limit=400)
        )
        return JSONResponse(to_json(found))

    async def handoff(self, request: Request) -> Response:
        who, tenant, form = await self._post(request)
        on = params.flag(form, "handed_off")
        if on is None:
            raise BadInput("handed_off (true or false) is required")
        found = await self._service.set_handoff(
            who,
            tenant,
            params.channel(form),
            params.text(form, "user_id", limit=400),
            on,
            params.text(form, "reason", limit=200),
        )
        return JSONResponse(to_json(found))

    async def agent_message(self, request: Request) -> Response:
        who, tenant, form = await self._post(request)
        sent = await self._service.send_agent_message(
            who,
            tenant,
            params.channel(form),
            params.text(form, "user_id", limit=400),
            form.get("text", ""),
            params.text(form, "request_id", limit=100),
        )
        return JSONResponse(to_json(sent))

    async def stats(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        q = params.query(request)
        start, end = params.when(q, "start"), params.when(q, "end", end=True)
        if start is None or end is None:
            raise BadInput("start and end are required")
        found = await self._service.stats(who, tenant, start, end, params.channel(q))
        return JSONResponse(to_json(found))

    async def dead_letters(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        q = params.query(request)
        found = await self._service.dead_letters(
            who,
            tenant,
            params.text(q, "page_token", limit=4096),
            params.integer(q, "page_size", 50, 1, 1000),
        )
        return JSONResponse(to_json(found))

    async def replay(self, request: Request) -> Response:
        who, tenant, _ = await self._post(request)
        found = await self._service.replay(who, tenant, request.path_params["dead_letter_id"])
        return JSONResponse(to_json(found))

    async def training(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        found = await self._service.export(who, tenant, export_filter(params.query(request)))
        return JSONResponse(to_json(found))

    async def training_yaml(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        found = await self._service.export(who, tenant, export_filter(params.query(request)))
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        return Response(
            found.rasa_nlu_yaml,
            media_type="application/x-yaml; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="nlu-{tenant}-{stamp}.yml"',
                "X-Truncated": "true" if found.truncated else "false",
            },
        )

    async def retention(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        return JSONResponse(to_json(await self._service.retention(who, tenant)))

    async def set_retention(self, request: Request) -> Response:
        who, tenant, form = await self._post(request)
        days = params.integer(form, "days", -1, 0, MAX_RETENTION_DAYS)
        if days < 0:
            raise BadInput("days is required (0 keeps messages until deleted)")
        found = await self._service.set_retention(who, tenant, days)
        return JSONResponse(to_json(found))

    async def erase(self, request: Request) -> Response:
        who, tenant, form = await self._post(request)
        user_id = params.text(form, "user_id", limit=400)
        if not user_id:
            raise BadInput("user_id is required")
        if params.text(form, "confirm", limit=400) != user_id:
            raise BadInput("confirm must repeat user_id: erasing cannot be undone")
        found = await self._service.erase_user(who, tenant, params.channel(form), user_id)
        return JSONResponse(to_json(found))
