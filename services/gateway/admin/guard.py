"""What every console request goes through before its endpoint.

`Guard` wraps the pages and the API (plain ASGI, so streamed answers pass
untouched): it adds the security headers (a strict Content-Security-Policy,
no framing, no sniffing, no referrer to other sites, no caching of data), finds the signed-in
user, and answers itself when there is none, with a redirect to the login
page or a 401, for every path but the login page and the static files. Errors
of the console's tree raised by endpoints become error pages or JSON errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mesh import get_logger
from services.gateway.admin.auth import Identity
from services.gateway.admin.errors import AdminError, BackendUnavailable, NotAuthenticated
from services.gateway.responses import error_json

IDENTITY_KEY = "chatbot.admin.identity"
PUBLIC_PAGES = ("/login", "/static/")
_log = get_logger("gateway.admin")

Identify = Callable[[HTTPConnection], Awaitable[Identity | None]]
ErrorPage = Callable[[HTTPConnection, AdminError], Response]


def identity(conn: HTTPConnection) -> Identity:
    found = conn.scope.get(IDENTITY_KEY)
    if not isinstance(found, Identity):
        raise NotAuthenticated("sign in first")
    return found


def json_error(error: AdminError) -> JSONResponse:
    challenge = {"WWW-Authenticate": 'Cookie realm="chatbot-admin"'}
    return error_json(error, headers=challenge if isinstance(error, NotAuthenticated) else None)


def relative_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        identify: Identify,
        api: bool,
        csp: str,
        login_path: str,
        error_page: ErrorPage | None = None,
    ) -> None:
        self.app = app
        self._identify = identify
        self._api = api
        self._csp = csp
        self._login_path = login_path
        self._error_page = error_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = relative_path(scope)
        public = not self._api and any(
            path == p or (p.endswith("/") and path.startswith(p)) for p in PUBLIC_PAGES
        )
        static = not self._api and path.startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", self._csp)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "same-origin")
                headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
                if not static:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        conn = HTTPConnection(scope)
        try:
            found = await self._identify(conn)
        except AdminError as exc:
            await self._respond(conn, exc, scope, receive, send_with_headers)
            return
        except Exception as exc:  # Redis down or unreachable: no one can be identified
            _log.warning("cannot check the session", extra={"error": type(exc).__name__})
            await self._respond(
                conn,
                BackendUnavailable("sessions cannot be checked right now; try again shortly"),
                scope,
                receive,
                send_with_headers,
            )
            return
        if found is not None:
            scope[IDENTITY_KEY] = found
        elif not public:
            await self._respond(
                conn, NotAuthenticated("sign in first"), scope, receive, send_with_headers
            )
            return
        try:
            await self.app(scope, receive, send_with_headers)
        except AdminError as exc:  # raised before the response started
            await self._respond(conn, exc, scope, receive, send_with_headers)

    async def _respond(
        self, conn: HTTPConnection, error: AdminError, scope: Scope, receive: Receive, send: Send
    ) -> None:
        response: Response
        if self._api:
            response = json_error(error)
        elif isinstance(error, NotAuthenticated):
            target = conn.url.path + (f"?{conn.url.query}" if conn.url.query else "")
            response = RedirectResponse(
                f"{self._login_path}?next={quote(target, safe='')}", status_code=303
            )
        elif self._error_page is not None:
            response = self._error_page(conn, error)
        else:
            response = Response(str(error), status_code=error.status)
        await response(scope, receive, send)


def exception_handlers(api: bool, error_page: ErrorPage) -> dict[Any, Any]:
    async def handle(conn: HTTPConnection, exc: Exception) -> Response:
        assert isinstance(exc, AdminError)
        return json_error(exc) if api else error_page(conn, exc)

    return {AdminError: handle}
