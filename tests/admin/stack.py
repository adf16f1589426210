"""The real services the console's tests run against.

A SQLite chatlog and a dialogue service as their own processes, the session's
real Redis, and the dialogue suite's real stand-ins for what we do not own:
the Graph API (it records every message sent) and a keyword NLU. A tiny HTTP
server serves the picture users "send", so a browser can load it.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import yaml
from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.chatlog.v1 import chatlog_service_pb2_grpc
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as dialogue_pb
from chatbot.dialogue.v1 import dialogue_service_pb2_grpc
from grpc_health.v1 import health_pb2

from harness.standins import GraphApi, KeywordNlu
from harness.support import REPO, ServiceProcess, free_port

PYTHONPATH = f"{REPO}:{REPO / 'build' / 'gen' / 'py'}"
SERVING = health_pb2.HealthCheckResponse.SERVING
ACME_SECRET = "acme-admin-tests-secret"
GLOBEX_SECRET = "globex-admin-tests-secret"
TENANTS = {
    "tenants": [
        {
            "id": "acme",
            "page_id": "9001",
            "app_secret": ACME_SECRET,
            "verify_token": "acme-verify",
            "page_access_token": "acme-page-token",
        },
        {
            "id": "globex",
            "page_id": "9002",
            "app_secret": GLOBEX_SECRET,
            "verify_token": "globex-verify",
            "page_access_token": "globex-page-token",
        },
    ]
}


def png(width: int = 48, height: int = 32) -> bytes:
    """A small orange PNG, made here (no image library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    row = b"\x00" + b"\xf0\x80\x20" * width
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


class ImageServer:
    """Serves ``/cat.png`` on 127.0.0.1, as a CDN would serve a user's picture."""

    def __init__(self) -> None:
        image = png()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/cat.png":
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(image)))
                self.end_headers()
                self.wfile.write(image)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cat.png"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Stack:
    """Chatlog and dialogue processes with their stand-ins; stubs to both."""

    def __init__(self, workdir: Path, redis_url: str) -> None:
        self.workdir = workdir
        self.redis_url = redis_url
        self.tenants_file = workdir / "tenants.yml"
        self.tenants_file.write_text(yaml.safe_dump(TENANTS), encoding="utf-8")
        self.graph = GraphApi().start()
        self.nlu = KeywordNlu()
        self.images = ImageServer()
        self.processes: list[ServiceProcess] = []
        try:
            self.chatlog = self._start(
                "chatlog",
                {
                    "CHATLOG_BACKEND": "sqlite",
                    "CHATLOG_SQLITE_PATH": str(workdir / "chatlog.sqlite3"),
                    "CHATLOG_PAGE_TOKEN_SECRET": "admin-tests-page-token-secret",
                },
            )
            self.dialogue = self._start(
                "dialogue",
                {
                    "REDIS_URL": redis_url,
                    "NLU_ADDRESS": self.nlu.address,
                    "CHATLOG_ADDRESS": self.chatlog_address,
                    "MESSENGER_GRAPH_API_URL": self.graph.url,
                    "ORDER_API_URL": self.graph.url,
                    "WEATHER_API_URL": self.graph.url,
                    "DIALOGUE_PAGE_TOKEN_SECRET": "admin-tests-page-tokens",
                    "DIALOGUE_MAX_ATTEMPTS": "2",
                    "DIALOGUE_RETRY_BACKOFF_MS": "50",
                },
            )
        except BaseException:
            self.stop()
            raise
        self._channels = [
            grpc.insecure_channel(self.chatlog_address),
            grpc.insecure_channel(self.dialogue_address),
        ]
        self.chatlog_stub = chatlog_service_pb2_grpc.ChatlogServiceStub(self._channels[0])
        self.dialogue_stub = dialogue_service_pb2_grpc.DialogueServiceStub(self._channels[1])

    def _start(self, service: str, env: dict[str, str]) -> ServiceProcess:
        port = free_port()
        process = ServiceProcess(
            [sys.executable, "-m", f"services.{service}", "serve"],
            {
                "PYTHONPATH": PYTHONPATH,
                "TENANTS_FILE": str(self.tenants_file),
                f"{service.upper()}_PORT": str(port),
                "METRICS_PORT": "0",
                "LOG_LEVEL": "INFO",
                **env,
            },
            self.workdir / f"{service}-{port}.log",
            port,
        )
        self.processes.append(process)
        process.wait_for_status(SERVING, timeout=60)
        return process

    @property
    def chatlog_address(self) -> str:
        return f"127.0.0.1:{self.chatlog.port}"

    @property
    def dialogue_address(self) -> str:
        return f"127.0.0.1:{self.dialogue.port}"

    def stop(self) -> None:
        for channel in getattr(self, "_channels", []):
            channel.close()
        for process in reversed(self.processes):
            process.stop()
        self.graph.stop()
        self.nlu.stop()
        self.images.stop()

    # ---- playing users ----------------------------------------------------

    def submit(self, *events: event_pb2.ChatEvent) -> None:
        reply = self.dialogue_stub.SubmitEvents(
            dialogue_pb.SubmitEventsRequest(events=list(events)), timeout=10
        )
        assert all(r.status == dialogue_pb.SUBMIT_STATUS_ACCEPTED for r in reply.results)

    def talk(self, tenant: str, user_id: str) -> str:
        """``user_id`` says hello on ``tenant``'s page; the conversation, once answered."""
        self.submit(event(tenant, user_id, f"m-{tenant}-{user_id}-1", "hello there"))
        conversation = f"1:{user_id}"
        wait_for(
            lambda: len(self.transcript(tenant, conversation)) >= 2, what=f"a reply on {tenant}"
        )
        return conversation

    def transcript(self, tenant: str, conversation_id: str) -> list[chatlog_pb.ChatMessage]:
        try:
            reply = self.chatlog_stub.ListMessages(
                chatlog_pb.ListMessagesRequest(
                    tenant_id=tenant, conversation_id=conversation_id, page_size=1000
                ),
                timeout=10,
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise
        return list(reply.messages)


def event(
    tenant: str,
    user_id: str,
    mid: str,
    text: str = "",
    *,
    image: str = "",
    quick_reply: str = "",
) -> event_pb2.ChatEvent:
    message = event_pb2.Message(mid=mid, text=text, quick_reply_payload=quick_reply)
    if image:
        message.attachments.append(
            event_pb2.Attachment(type=event_pb2.ATTACHMENT_TYPE_IMAGE, url=image)
        )
    found = event_pb2.ChatEvent(
        event_id=mid,
        user=event_pb2.UserRef(
            tenant_id=tenant, channel=event_pb2.CHANNEL_MESSENGER, user_id=user_id
        ),
        recipient_id="9001",
        message=message,
    )
    now = int(time.time() * 1000)
    found.event_time.FromMilliseconds(now)
    found.receive_time.FromMilliseconds(now)
    return found


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout} s")
        time.sleep(0.1)


def webhook_body(page_id: str, user_id: str, messages: list[dict[str, Any]]) -> bytes:
    now = int(time.time() * 1000)
    items = [
        {
            "sender": {"id": user_id},
            "recipient": {"id": page_id},
            "timestamp": now + index,
            "message": message,
        }
        for index, message in enumerate(messages)
    ]
    body = {"object": "page", "entry": [{"id": page_id, "time": now, "messaging": items}]}
    return json.dumps(body).encode()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
