"""A local stand-in for Facebook's Graph API (and the demo actions' APIs).

``chatbot simulate`` runs it so the bot's replies can be seen without a
Facebook page: ``POST /<version>/me/messages`` is recorded and answered like
the Send API; ``GET /<version>/me`` answers the page's id (the dialogue's
Send API breaker asks it whether the API answers); the Handover Protocol's
``POST /me/pass_thread_control``, ``take_thread_control`` and
``request_thread_control`` succeed, ``GET /me/thread_owner`` names the app
last passed a thread and ``GET /me/secondary_receivers`` lists the Page Inbox;
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


def route(method: str, target: str, body: bytes) -> tuple[int, object, tuple[str, str, str] | None]:
    """One request's answer: (status, JSON body, (recipient, text, in_reply_to) of a reply sent)."""
    url = urlparse(target)
    if method == "POST":
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            return 400, {"error": {"message": "bad JSON", "code": 100}}, None
        edge = url.path.rsplit("/", 1)[-1]
        if edge in _THREAD_EDGES:
            status, answer = _thread_control(edge, doc)
            return status, answer, None
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
    if url.path.endswith("/me/thread_owner"):
        owner = _thread_owners.get(parse_qs(url.query).get("recipient", [""])[0])
        return 200, {"data": [{"thread_owner": {"app_id": owner}}] if owner else []}, None
    if url.path.endswith("/me/secondary_receivers"):
        return 200, {"data": [{"id": PAGE_INBOX_APP_ID, "name": "Page Inbox"}]}, None
    if url.path.startswith("/orders/"):
        order = DEMO_ORDERS.get(url.path.rsplit("/", 1)[1])
        return (200, order, None) if order else (404, {"error": "none"}, None)
    if url.path == "/weather":
        city = parse_qs(url.query).get("city", ["?"])[0]
        return 200, {"city": city, "temperature_c": 18, "summary": "cloudy"}, None
    return 404, {}, None


_sent_ids = itertools.count(1)
PAGE_INBOX_APP_ID = "263902037430900"
_THREAD_EDGES = ("pass_thread_control", "take_thread_control", "request_thread_control")
_thread_owners: dict[str, str] = {}  # recipient -> the app last passed the thread


def _thread_control(edge: str, doc: dict[str, Any]) -> tuple[int, object]:
    recipient = str((doc.get("recipient") or {}).get("id", ""))
    if not recipient:
        return 400, {
            "error": {"message": "(#100) The parameter recipient is required", "code": 100}
        }
    if edge == "pass_thread_control":
        _thread_owners[recipient] = str(doc.get("target_app_id") or "")
    elif edge == "take_thread_control":
        _thread_owners.pop(recipient, None)
    return 200, {"success": True}


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
                status, doc, reply = route(method, self.path, body)
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

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
