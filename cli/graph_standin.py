"""A local stand-in for Facebook's Graph API (and the demo actions' APIs).

``chatbot simulate`` runs it so the bot's replies can be seen without a
Facebook page: ``POST /<version>/me/messages`` is recorded and answered like
the Send API; ``GET /orders/<id>`` and ``GET /weather?city=`` answer the
starter bot's actions.
"""

from __future__ import annotations

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
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> GraphStandIn:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: object) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    return self._json(400, {"error": {"message": "bad JSON", "code": 100}})
                if not urlparse(self.path).path.endswith("/me/messages"):
                    return self._json(404, {"error": {"message": "unknown path", "code": 100}})
                recipient = str(body.get("recipient", {}).get("id", ""))
                if "message" in body:
                    message = body["message"]
                    metadata = json.loads(message.get("metadata") or "{}")
                    text = message.get("text") or json.dumps(message.get("attachment", {}))
                    sent = Sent(recipient, text, metadata.get("in_reply_to", ""), time.monotonic())
                    with owner.lock:
                        owner.sent.append(sent)
                        count = len(owner.sent)
                    if owner.on_send:
                        owner.on_send(sent)
                    return self._json(
                        200, {"recipient_id": recipient, "message_id": f"m_out_{count}"}
                    )
                self._json(200, {"recipient_id": recipient})

            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path.startswith("/orders/"):
                    order = DEMO_ORDERS.get(url.path.rsplit("/", 1)[1])
                    return self._json(200, order) if order else self._json(404, {"error": "none"})
                if url.path == "/weather":
                    city = parse_qs(url.query).get("city", ["?"])[0]
                    return self._json(200, {"city": city, "temperature_c": 18, "summary": "cloudy"})
                self._json(404, {})

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
