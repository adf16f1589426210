"""The console's HTML pages under ``/admin``: server-rendered, usable without script."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from typing import Any
from urllib.parse import urlencode

from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as dialogue_pb
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from mesh import get_logger
from services.gateway.admin import params, stats_view
from services.gateway.admin.auth import (
    COOKIE,
    LOGIN_COOKIE,
    SECURE_COOKIE,
    SECURE_LOGIN_COOKIE,
    Accounts,
    Identity,
    check_csrf,
    clear_cookie,
    set_cookie,
)
from services.gateway.admin.errors import (
    AdminError,
    BackendUnavailable,
    BadInput,
    CsrfRejected,
    LockedOut,
    NotAuthenticated,
    NotFound,
)
from services.gateway.admin.guard import identity
from services.gateway.admin.params import (
    API_PREFIX,
    MAX_SEARCH_DAYS,
    PAGES_PREFIX,
    SEARCH_DAYS,
    ConversationFilter,
    export_filter,
)
from services.gateway.admin.profiles import CustomerProfiles, Profile
from services.gateway.admin.render import Renderer
from services.gateway.admin.service import DAY_SECONDS, MAX_RETENTION_DAYS, ConsoleService
from services.gateway.admin.settings import AdminSettings
from services.gateway.admin.summaries import event_summary

SECTIONS = ("conversations", "handoffs", "stats", "dead-letters", "training-data", "data")
NOTICES = {
    "signed-out": "You are signed out.",
    "taken": "You have this conversation now: the bot stays silent until you hand it back.",
    "released": "The bot answers this conversation again.",
    "sent": "Your message was sent.",
    "replayed": "The event is queued again.",
    "retention-set": "The retention period is saved; it applies to messages stored from now on.",
    "erased": "The customer's data is erased.",
}
_log = get_logger("gateway.admin")
_HEADINGS = {
    400: "That request cannot be answered",
    403: "Not allowed",
    404: "Not found",
    409: "Not possible now",
    429: "Too many attempts",
    503: "A service is unavailable",
    504: "A service is too slow",
}


def _today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


class Pages:
    def __init__(
        self,
        *,
        service: ConsoleService,
        profiles: CustomerProfiles,
        renderer: Renderer,
        settings: AdminSettings,
        accounts: Accounts,
    ) -> None:
        self._service = service
        self._profile_cache = profiles
        self._renderer = renderer
        self._settings = settings
        self._accounts = accounts

    # ---- plumbing ----------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.home, methods=["GET"]),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/t/{tenant}/conversations", self.conversations, methods=["GET"]),
            Route("/t/{tenant}/conversation", self.transcript, methods=["GET"]),
            Route("/t/{tenant}/handoff", self.handoff, methods=["POST"]),
            Route("/t/{tenant}/reply", self.reply, methods=["POST"]),
            Route("/t/{tenant}/handoffs", self.handoffs, methods=["GET"]),
            Route("/t/{tenant}/stats", self.stats, methods=["GET"]),
            Route("/t/{tenant}/dead-letters", self.dead_letters, methods=["GET"]),
            Route("/t/{tenant}/dead-letters/replay", self.replay, methods=["POST"]),
            Route("/t/{tenant}/training-data", self.training, methods=["GET"]),
            Route("/t/{tenant}/data", self.data, methods=["GET"]),
            Route("/t/{tenant}/data/retention", self.set_retention, methods=["POST"]),
            Route("/t/{tenant}/data/erase", self.erase, methods=["POST"]),
            Mount("/static", app=StaticFiles(packages=[("services.gateway.admin", "static")])),
        ]

    def _html(
        self,
        conn: HTTPConnection,
        template: str,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        who = conn.scope.get("chatbot.admin.identity")
        done = conn.query_params.get("done", "")
        body = self._renderer.page(
            template,
            who=who,
            pages=PAGES_PREFIX,
            api=API_PREFIX,
            notice=NOTICES.get(done, ""),
            **context,
        )
        return HTMLResponse(body, status_code=status)

    def error_page(self, conn: HTTPConnection, error: AdminError) -> Response:
        status = error.status if error.status in _HEADINGS else 500
        message = str(error) if status != 500 else "Something went wrong; it was logged."
        if status == 500:
            _log.error("console error", exc_info=error)
        tenant = conn.path_params.get("tenant", "") if hasattr(conn, "path_params") else ""
        who = conn.scope.get("chatbot.admin.identity")
        if not isinstance(who, Identity) or tenant not in who.tenants:
            tenant = ""
        return self._html(
            conn,
            "error.html",
            status=status,
            heading=_HEADINGS.get(status, "Something went wrong"),
            message=message,
            tenant=tenant,
            section="",
        )

    def _tenant(self, request: Request) -> tuple[Identity, str]:
        who = identity(request)
        return who, who.require_tenant(request.path_params["tenant"])

    async def _post_form(self, request: Request, who: Identity) -> dict[str, str]:
        form = await params.form(request)
        check_csrf(request, who.session.csrf_token, form)
        return form

    async def _profiles(self, tenant: str, users: list[event_pb2.UserRef]) -> dict[str, Profile]:
        """Names and pictures known by now; the page shows ids for the others."""
        return await self._profile_cache.lookup(tenant, users)

    @staticmethod
    def _redirect(path: str, **query: str) -> RedirectResponse:
        clean = {k: v for k, v in query.items() if v}
        return RedirectResponse(
            PAGES_PREFIX + path + (f"?{urlencode(clean)}" if clean else ""), status_code=303
        )

    # ---- signing in and out ------------------------------------------------

    @staticmethod
    def _safe_next(target: str) -> str:
        if (
            target.startswith(PAGES_PREFIX + "/")
            and not target.startswith("//")
            and not any(c in target for c in "\\\r\n")
        ):
            return target
        return PAGES_PREFIX + "/"

    async def login_form(self, request: Request) -> Response:
        next_page = self._safe_next(request.query_params.get("next", ""))
        if request.scope.get("chatbot.admin.identity") is not None:
            return RedirectResponse(next_page, status_code=303)
        return self._login_page(request, next_page)

    def _login_page(
        self, request: Request, next_page: str, *, problem: str = "", username: str = "",
        status: int = 200,
    ) -> Response:  # fmt: skip
        token = secrets.token_urlsafe(24)
        response = self._html(
            request,
            "login.html",
            status=status,
            login_token=token,
            next=next_page,
            problem=problem,
            username=username,
            tenant="",
            section="",
        )
        set_cookie(
            response, self._settings, request, (LOGIN_COOKIE, SECURE_LOGIN_COOKIE), token, 3600
        )
        return response

    async def login(self, request: Request) -> Response:
        form = await params.form(request)
        next_page = self._safe_next(form.get("next", ""))
        username = form.get("username", "").strip()[:64]
        try:
            token = await self._accounts.sign_in(
                request, username, form.get("password", ""), form.get("csrf_token", "")
            )
        except (CsrfRejected, LockedOut, NotAuthenticated) as exc:
            refused = self._login_page(
                request, next_page, problem=str(exc), username=username, status=exc.status
            )
            if isinstance(exc, LockedOut):
                refused.headers["Retry-After"] = str(exc.retry_after)
            return refused
        response = RedirectResponse(next_page, status_code=303)
        settings = self._settings
        cookie = (COOKIE, SECURE_COOKIE)
        set_cookie(response, settings, request, cookie, token, settings.session_max_seconds)
        clear_cookie(response, settings, request, (LOGIN_COOKIE, SECURE_LOGIN_COOKIE))
        return response

    async def logout(self, request: Request) -> Response:
        who = identity(request)
        await self._post_form(request, who)
        await self._accounts.sign_out(who)
        response = self._redirect("/login", done="signed-out")
        clear_cookie(response, self._settings, request, (COOKIE, SECURE_COOKIE))
        return response

    async def home(self, request: Request) -> Response:
        who = identity(request)
        if not who.tenants:
            raise NotFound("no tenant is granted to you; ask an administrator")
        wanted = request.query_params.get("tenant", "")
        tenant = wanted if wanted in who.tenants else who.tenants[0]
        section = request.query_params.get("section", "")
        return self._redirect(f"/t/{tenant}/{section if section in SECTIONS else 'conversations'}")

    # ---- conversations ------------------------------------------------------

    async def conversations(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        q = params.query(request)
        words = params.text(q, "q", limit=200)
        channel = params.channel(q)
        token = params.text(q, "page_token", limit=4096)
        args = {k: v for k, v in q.items() if k != "done" and v}
        form = {
            "q": words,
            "user": params.text(q, "user"),
            "channel": params.text(q, "channel"),
            "start": params.text(q, "start"),
            "end": params.text(q, "end"),
            "intent": params.text(q, "intent"),
            "fallback": params.flag(q, "fallback"),
            "handed_off": params.text(q, "handed_off"),
        }
        service = self._service
        if words:
            window = params.search_window(q)
            start, end, note = window.start, window.end, ""
            if window.defaulted:
                note = f"Searching the {SEARCH_DAYS} days before {end:%Y-%m-%d %H:%M} UTC."
            if end - start > dt.timedelta(days=MAX_SEARCH_DAYS):
                start = end - dt.timedelta(days=MAX_SEARCH_DAYS)
                note = (
                    f"Text search covers at most {MAX_SEARCH_DAYS} days: from {start:%Y-%m-%d} on."
                )
            found = await service.search(who, tenant, words, start, end, channel, token, 50)
            return self._html(
                request,
                "conversations.html",
                tenant=tenant,
                section="conversations",
                f=form,
                args=args,
                search=found,
                search_note=note,
                profiles=await self._profiles(tenant, [m.user for m in found.messages]),
            )
        where = ConversationFilter(
            channel=channel,
            start=params.when(q, "start"),
            end=params.when(q, "end", end=True),
            intent=str(form["intent"] or ""),
            fallback_only=bool(form["fallback"]),
            handed_off=params.flag(q, "handed_off"),
            user_id=str(form["user"] or ""),
        )
        listing = await service.conversations(who, tenant, where, token, 50)
        return self._html(
            request,
            "conversations.html",
            tenant=tenant,
            section="conversations",
            f=form,
            args=args,
            search=None,
            listing=listing,
            profiles=await self._profiles(tenant, [c.user for c in listing.conversations]),
        )

    async def handoffs(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        token = params.text(params.query(request), "page_token", limit=4096)
        listing = await self._service.conversations(
            who, tenant, ConversationFilter(handed_off=True), token, 50
        )
        return self._html(
            request,
            "handoffs.html",
            tenant=tenant,
            section="handoffs",
            listing=listing,
            profiles=await self._profiles(tenant, [c.user for c in listing.conversations]),
        )

    async def transcript(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        q = params.query(request)
        conversation_id = params.text(q, "id", limit=400)
        if not conversation_id:
            raise BadInput("which conversation? (id is missing)")
        before = params.text(q, "before", limit=4096)
        service = self._service
        page = await service.messages(who, tenant, conversation_id, before, 100)
        messages = list(reversed(page.messages))
        if not messages:
            raise NotFound(f"no message in conversation {conversation_id!r}")
        user = messages[-1].user
        problem = ""
        try:
            state = await service.state(who, tenant, user.channel, user.user_id)
        except BackendUnavailable as exc:
            state = dialogue_pb.ConversationState(user=user)
            problem = f"The hand-off state is unknown: {exc}"
        live_url = ""
        if not before and page.previous_page_token:
            live_url = f"{API_PREFIX}/tenants/{tenant}/live?" + urlencode(
                {"conversation_id": conversation_id, "page_token": page.previous_page_token}
            )
        return self._html(
            request,
            "transcript.html",
            tenant=tenant,
            section="conversations",
            conversation_id=conversation_id,
            user=user,
            state=state,
            messages=messages,
            earlier_token=page.next_page_token,
            paged=bool(before),
            live_url=live_url,
            request_id=uuid.uuid4().hex,
            problem=problem,
            profiles=await self._profiles(tenant, [user]),
        )

    async def handoff(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        form = await self._post_form(request, who)
        on = params.flag(form, "handed_off")
        if on is None:
            raise BadInput("handed_off must be true or false")
        await self._service.set_handoff(
            who,
            tenant,
            params.channel(form),
            params.text(form, "user_id", limit=400),
            on,
            params.text(form, "reason", limit=200),
        )
        return self._redirect(
            f"/t/{tenant}/conversation",
            id=params.text(form, "conversation_id", limit=400),
            done="taken" if on else "released",
        )

    async def reply(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        form = await self._post_form(request, who)
        await self._service.send_agent_message(
            who,
            tenant,
            params.channel(form),
            params.text(form, "user_id", limit=400),
            form.get("text", ""),
            params.text(form, "request_id", limit=100),
        )
        return self._redirect(
            f"/t/{tenant}/conversation",
            id=params.text(form, "conversation_id", limit=400),
            done="sent",
        )

    # ---- the rest -----------------------------------------------------------

    async def stats(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        q = params.query(request)
        today = _today()
        start = params.when(q, "start") or dt.datetime.combine(
            today - dt.timedelta(days=13), dt.time(), dt.timezone.utc
        )
        end = params.when(q, "end", end=True) or dt.datetime.combine(
            today + dt.timedelta(days=1), dt.time(), dt.timezone.utc
        )
        channel = params.channel(q)
        found = await self._service.stats(who, tenant, start, end, channel)
        return self._html(
            request,
            "stats.html",
            tenant=tenant,
            section="stats",
            f={
                "start": start.date().isoformat(),
                "end": (end - dt.timedelta(days=1)).date().isoformat(),
                "channel": params.text(q, "channel"),
            },
            total=found.total,
            days=list(found.days),
            charts=stats_view.charts(found),
        )

    async def dead_letters(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        token = params.text(params.query(request), "page_token", limit=4096)
        listing = await self._service.dead_letters(who, tenant, token, 50)
        return self._html(
            request,
            "dead_letters.html",
            tenant=tenant,
            section="dead-letters",
            listing=listing,
            summaries=[event_summary(d.event) for d in listing.dead_letters],
        )

    async def replay(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        form = await self._post_form(request, who)
        await self._service.replay(who, tenant, params.text(form, "dead_letter_id", limit=400))
        return self._redirect(f"/t/{tenant}/dead-letters", done="replayed")

    async def training(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        q = params.query(request)
        where = export_filter(q)
        export: chatlog_pb.ExportTrainingDataResponse | None = None
        export = await self._service.export(who, tenant, where)
        return self._html(
            request,
            "training.html",
            tenant=tenant,
            section="training-data",
            f={
                key: params.text(q, key)
                for key in ("start", "end", "intents", "min_confidence", "max_confidence", "limit")
            },
            args={k: v for k, v in q.items() if k != "done" and v},
            export=export,
        )

    # ---- retention and erasure (admins) -------------------------------------

    async def data(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        who.require_admin()
        policy = await self._service.retention(who, tenant)
        q = params.query(request)
        erased = None
        if q.get("done") == "erased":
            erased = {
                "messages": params.integer(q, "messages", 0, 0, 2**62),
                "conversations": params.integer(q, "conversations", 0, 0, 2**62),
            }
        return self._html(
            request,
            "data.html",
            tenant=tenant,
            section="data",
            policy=policy,
            days=policy.message_ttl.seconds // DAY_SECONDS,
            max_days=MAX_RETENTION_DAYS,
            erased=erased,
            confirm=None,
        )

    async def set_retention(self, request: Request) -> Response:
        who, tenant = self._tenant(request)
        who.require_admin()
        form = await self._post_form(request, who)
        days = params.integer(form, "days", -1, 0, MAX_RETENTION_DAYS)
        if days < 0:
            raise BadInput("days is required (0 keeps messages until deleted)")
        await self._service.set_retention(who, tenant, days)
        return self._redirect(f"/t/{tenant}/data", done="retention-set")

    async def erase(self, request: Request) -> Response:
        """First the confirmation page; erases only when the id is typed again."""
        who, tenant = self._tenant(request)
        who.require_admin()
        form = await self._post_form(request, who)
        user_id = params.text(form, "user_id", limit=400)
        if not user_id:
            raise BadInput("which customer? (user_id is missing)")
        channel = params.channel(form)
        confirm = params.text(form, "confirm", limit=400)
        service = self._service
        if confirm != user_id:
            found = await service.conversations(
                who, tenant, ConversationFilter(channel=channel, user_id=user_id), "", 50
            )
            name = params.CHANNEL_NAMES.get(channel, "")
            return self._html(
                request,
                "data.html",
                status=400 if confirm else 200,
                tenant=tenant,
                section="data",
                problem="The id typed does not match; nothing was erased." if confirm else "",
                confirm={
                    "user_id": user_id,
                    "channel": name,
                    "channel_label": name or "every channel",
                    "conversations": list(found.conversations),
                },
            )
        result = await service.erase_user(who, tenant, channel, user_id)
        return self._redirect(
            f"/t/{tenant}/data",
            done="erased",
            messages=str(result.deleted_message_count),
            conversations=str(result.deleted_conversation_count),
        )
