"""A local stand-in for Facebook's Graph API (and the demo actions' APIs).

``chatbot simulate`` runs it so the bot's replies can be seen without a
Facebook page: ``POST /<version>/me/messages`` is recorded and answered like
the Send API; ``GET /<version>/me`` answers the page's id (the dialogue's
Send API breaker asks it whether the API answers); the Handover Protocol's
``POST /me/pass_thread_control``, ``take_thread_control`` and
``request_thread_control`` keep each thread's owner as Meta does (a pass to an
app that is not a receiver, or of a thread another app owns, is refused),
``GET /me/thread_owner`` names it and ``GET /me/secondary_receivers`` lists
the Page Inbox;
``/me/messenger_profile`` keeps the page's profile as the Messenger Profile API
does (GET with ``fields``, POST, DELETE with ``fields``, and Meta's refusals),
so ``chatbot messenger-profile apply`` can be tried against ``make run``;
``GET /orders/<id>`` and ``GET /weather?city=`` answer the starter bot's actions.

It speaks HTTP/1.1 with keep-alive, as the Graph API does;
``close_connections`` answers every request with ``Connection: close``
instead, which behind a lossy link loses answers in transit.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

DEMO_ORDERS = {
    "12345": {"status": "shipped", "eta": "tomorrow"},
    "55555": {"status": "being packed", "eta": "in 3 days"},
    "98765": {"status": "delivered", "eta": "already there"},
}


def route(
    method: str,
    target: str,
    body: bytes,
    profile: dict[str, Any] | None = None,
    thread_owners: dict[str, str] | None = None,
) -> tuple[int, object, tuple[str, str, str] | None]:
    """One request's answer: (status, JSON body, (recipient, text, in_reply_to) of a reply sent).

    ``profile``: the page's Messenger profile; ``thread_owners``: each
    recipient's thread owner; both kept in place (default: this process's).
    """
    owners = _thread_owners if thread_owners is None else thread_owners
    url = urlparse(target)
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return 400, {"error": {"message": "bad JSON", "code": 100}}, None
    if url.path.endswith("/me/messenger_profile"):
        page = _page_profile if profile is None else profile
        fields = doc if isinstance(doc, dict) else {}
        result = profile_call(page, method, parse_qs(url.query), fields)
        return (400 if "error" in result else 200), result, None
    if method == "DELETE":
        return 404, {"error": {"message": "unknown path", "code": 100}}, None
    if method == "POST":
        edge = url.path.rsplit("/", 1)[-1]
        if edge in _THREAD_EDGES:
            answer = _threads(owners, edge, doc if isinstance(doc, dict) else {})
            return (400 if "error" in answer else 200), answer, None
        if not url.path.endswith("/me/messages"):
            return 404, {"error": {"message": "unknown path", "code": 100}}, None
        recipient = str(doc.get("recipient", {}).get("id", ""))
        if "message" not in doc:
            return 200, {"recipient_id": recipient}, None
        message = doc["message"]
        metadata = json.loads(message.get("metadata") or "{}")
        text = message.get("text") or json.dumps(message.get("attachment", {}))
        message_id = f"m_out_{next(_sent_ids)}"
        reply = (recipient, text, str(metadata.get("in_reply_to", "")))
        return 200, {"recipient_id": recipient, "message_id": message_id}, reply
    if url.path.endswith("/me"):
        return 200, {"id": "page-1"}, None
    if url.path.endswith(("/me/thread_owner", "/me/secondary_receivers")):
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        answer = _threads(owners, url.path.rsplit("/", 1)[-1], query)
        return (400 if "error" in answer else 200), answer, None
    if url.path.startswith("/orders/"):
        order = DEMO_ORDERS.get(url.path.rsplit("/", 1)[1])
        return (200, order, None) if order else (404, {"error": "none"}, None)
    if url.path == "/weather":
        city = parse_qs(url.query).get("city", ["?"])[0]
        return 200, {"city": city, "temperature_c": 18, "summary": "cloudy"}, None
    return 404, {}, None


def _threads(owners: dict[str, str], edge: str, body: dict[str, Any]) -> dict[str, Any]:
    return thread_call(edge, body, app_id=STANDIN_APP_ID, receivers=_receivers, owners=owners)


_sent_ids = itertools.count(1)
_page_profile: dict[str, Any] = {}
PAGE_INBOX_APP_ID = "263902037430900"
STANDIN_APP_ID = "1111"  # the app the stand-in's page answers for
_THREAD_EDGES = ("pass_thread_control", "take_thread_control", "request_thread_control")
_thread_owners: dict[str, str] = {}  # recipient -> the thread's owner (absent: idle)
_receivers = {PAGE_INBOX_APP_ID: "Page Inbox"}


def thread_error(code: int, message: str, subcode: int = 0) -> dict[str, Any]:
    found: dict[str, Any] = {"message": f"(#{code}) {message}", "code": code}
    if subcode:
        found["error_subcode"] = subcode
    return {"error": found}


def thread_call(
    edge: str,
    body: dict[str, Any],
    *,
    app_id: str,
    receivers: dict[str, str],
    owners: dict[str, str],
    refuse: Callable[[str], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """The Handover Protocol on ``owners``, with the refusals Meta documents.

    ``edge``: a POST edge, or ``thread_owner`` / ``secondary_receivers`` (GET,
    ``body`` the query); ``refuse(psid)`` may refuse a change of owner first
    (the person is unavailable, the window has closed).
    """
    if edge == "secondary_receivers":
        return {"data": [{"id": i, "name": n} for i, n in receivers.items()]}
    recipient = body.get("recipient")
    if edge == "thread_owner":
        recipient = {"id": recipient} if isinstance(recipient, str) else None
    if not isinstance(recipient, dict) or not recipient.get("id"):
        return thread_error(100, "The parameter recipient is required")
    psid = str(recipient["id"])
    if edge == "thread_owner":
        owner = owners.get(psid)
        return {"data": [{"thread_owner": {"app_id": owner}}] if owner else []}
    refused = refuse(psid) if refuse else None
    if refused is not None:
        return refused
    owner = owners.get(psid, "")
    if edge == "pass_thread_control":
        target = str(body.get("target_app_id") or "")
        if not target:
            return thread_error(100, "The parameter target_app_id is required")
        if owner and owner != app_id:
            return thread_error(10, "The app is not the thread owner.", 2018300)
        if target not in receivers and target != app_id:
            return thread_error(100, "The target app is not a secondary receiver of the page.")
        owners[psid] = target
    elif edge == "take_thread_control":
        owners[psid] = app_id
    return {"success": True}  # request_thread_control: the owner is told; nothing changes


PROFILE_FIELDS = (
    "get_started", "greeting", "persistent_menu", "ice_breakers", "whitelisted_domains",
    "account_linking_url", "commands",
)  # fmt: skip


def profile_call(
    profile: dict[str, Any], method: str, query: dict[str, list[str]], body: dict[str, Any]
) -> dict[str, Any]:
    """The Messenger Profile API on ``profile``, with the refusals Meta documents."""

    def error(message: str, subcode: int = 0) -> dict[str, Any]:
        found: dict[str, Any] = {"message": f"(#100) {message}", "type": "OAuthException"}
        found["code"] = 100
        if subcode:
            found["error_subcode"] = subcode
        return {"error": found}

    if method == "GET":
        fields = [f for f in query.get("fields", [""])[0].split(",") if f]
        if not fields:
            return error("The parameter fields is required")
        found = {f: profile[f] for f in fields if f in profile}
        return {"data": [found] if found else []}
    if method == "DELETE":
        names = body.get("fields")
        if not isinstance(names, list) or not names:
            return error("param fields must be non-empty")
        if any(f not in PROFILE_FIELDS for f in names):
            return error(f"param fields[0] must be one of {{{', '.join(PROFILE_FIELDS)}}}")
        for name in names:
            profile.pop(name, None)
        return {"result": "success"}
    unknown = [k for k in body if k not in PROFILE_FIELDS]
    if not body or unknown:
        return error(f"Requires one of the params: {', '.join(PROFILE_FIELDS)}")
    if "persistent_menu" in body and "get_started" not in body and "get_started" not in profile:
        message = "You must set a Get Started button if you also wish to use persistent menu."
        return error(message, 2018145)
    for greeting in body.get("greeting") or []:
        if len(greeting.get("text", "")) > 160:
            return error("param greeting[0][text] must be at most 160 characters")
    for menu in body.get("persistent_menu") or []:
        if len(menu.get("call_to_actions") or []) > 20:
            return error("param persistent_menu[0][call_to_actions] must have at most 20 items")
    profile.update(json.loads(json.dumps(body)))
    return {"result": "success"}


@dataclass
class Sent:
    recipient: str
    text: str
    in_reply_to: str
    time: float


@dataclass
class GraphStandIn:
    port: int = 8091
    sent: list[Sent] = field(default_factory=list)
    on_send: Callable[[Sent], None] | None = None
    close_connections: bool = False
    profile: dict[str, Any] = field(default_factory=dict)  # the page's Messenger profile
    thread_owners: dict[str, str] = field(default_factory=dict)  # recipient -> owner app
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> GraphStandIn:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without TCP_NODELAY a kept-alive
            # connection waits for the client's delayed ACK (~40 ms) between them.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: object) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                if owner.close_connections:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(raw)

            def _answer(self, method: str, body: bytes) -> None:
                with owner.lock:
                    status, doc, reply = route(
                        method, self.path, body, owner.profile, owner.thread_owners
                    )
                if reply is not None:
                    sent = Sent(*reply, time.monotonic())
                    with owner.lock:
                        owner.sent.append(sent)
                    if owner.on_send:
                        owner.on_send(sent)
                self._json(status, doc)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._answer("POST", self.rfile.read(length))

            def do_GET(self) -> None:
                self._answer("GET", b"")

            def do_DELETE(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._answer("DELETE", self.rfile.read(length))

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
