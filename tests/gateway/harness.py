"""Real processes for the gateway's tests: the gateway under uvicorn, the test
dialogue service, and what the tests need to talk to them."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from chatbot.common.v1 import event_pb2 as ev
from grpc_health.v1 import health_pb2

from harness.support import REPO, free_port, health_status
from services.gateway.messenger.signature import sign

PAYLOADS = Path(__file__).resolve().parent / "payloads"
PYTHONPATH = f"{REPO}:{REPO / 'build' / 'gen' / 'py'}"

# Three tenants, two apps: acme and initech are pages of one app (one secret).
ACME_SECRET = "acme-app-secret-5b1f"
GLOBEX_SECRET = "globex-app-secret-91c3"
ACME_VERIFY = "acme-verify-token"
GLOBEX_VERIFY = "globex-verify-token"
ACME_KEY = "acme-api-key-0f7e2d9c"
GLOBEX_KEY = "globex-api-key-a81b44"
# The key user ids are hashed under in the gateway's logs, so tests can find them.
LOG_ID_KEY = "gateway-tests-log-id-key-7c21e0"
TENANTS = {
    "tenants": [
        {
            "id": "acme",
            "page_id": "111",
            "app_secret": ACME_SECRET,
            "verify_token": ACME_VERIFY,
            "page_access_token": "acme-page-token",
            "api_keys": [ACME_KEY],
        },
        {
            "id": "globex",
            "page_id": "222",
            "app_secret": GLOBEX_SECRET,
            "verify_token": GLOBEX_VERIFY,
            "api_keys": [GLOBEX_KEY],
        },
        {"id": "initech", "page_id": "333", "app_secret": ACME_SECRET},
    ]
}


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def _python_env(extra: Mapping[str, str]) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": PYTHONPATH, **extra}


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class Call:
    method: str
    request_id: str
    events: list[ev.ChatEvent]


class DialogueServer:
    """``harness.dialogue_server`` as its own process, read and steered through Redis."""

    def __init__(self, workdir: Path, redis_url: str, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.prefix = f"gwtest:{self.port}:{os.getpid()}:"
        self.redis_url = redis_url
        self.redis = redis.Redis.from_url(redis_url)
        self.log_path = workdir / f"dialogue-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness.dialogue_server",
                "--port",
                str(self.port),
                "--redis-url",
                redis_url,
                "--prefix",
                self.prefix,
            ],
            cwd=REPO,
            env=_python_env({}),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while health_status(self.port) != health_pb2.HealthCheckResponse.SERVING:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"test dialogue did not start:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def calls(self, method: str | None = None) -> list[Call]:
        found = []
        for raw in self.redis.lrange(f"{self.prefix}calls", 0, -1):
            entry = json.loads(raw)
            if method and entry["method"] != method:
                continue
            events = [ev.ChatEvent.FromString(base64.b64decode(e)) for e in entry["events"]]
            found.append(Call(entry["method"], entry["request_id"], events))
        return found

    def events(self) -> list[ev.ChatEvent]:
        """Every event SubmitEvents received, in the order received."""
        return [e for call in self.calls("SubmitEvents") for e in call.events]

    def set_mode(self, mode: str) -> None:
        self.redis.set(f"{self.prefix}mode", mode)

    def reset(self) -> None:
        keys = list(self.redis.scan_iter(match=f"{self.prefix}*", count=1000))
        if keys:
            self.redis.delete(*keys)

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()
        self.redis.close()


class Gateway:
    """``python -m services.gateway serve`` on a free port, with a client for it."""

    def __init__(self, workdir: Path, env: Mapping[str, str], *, name: str = "gateway") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.gateway", "serve"],
            cwd=REPO,
            env=_python_env({"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(self.port), **env}),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=15)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start:\n{self.logs()}")
            time.sleep(0.1)

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def post_webhook(
        self,
        body: bytes,
        secret: str | None = ACME_SECRET,
        *,
        signature: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if signature is not None:
            sent["X-Hub-Signature-256"] = signature
        elif secret is not None:
            sent["X-Hub-Signature-256"] = sign(secret, body)
        return self.client.post("/webhooks/messenger", content=body, headers=sent)

    def post_message(
        self, body: object, key: str | None = ACME_KEY, **headers: str
    ) -> httpx.Response:
        sent = dict(headers)
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.post("/api/v1/messages", content=content, headers=sent)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one series in /metrics (0 when absent)."""
        text = self.client.get("/metrics").text
        for line in text.splitlines():
            match = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
            if not match or match.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(match.group(3))
        return 0.0

    def stop(self) -> int:
        self.client.close()
        code = _stop(self.proc)
        self._log.close()
        return code
