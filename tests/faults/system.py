"""Real parts the fault tests break: Redis, the NLU stand-in, the gateway, the chatlog.

Each can be stopped (gracefully or with SIGKILL) and started again on the same
port, so clients that hold its address see exactly what they would in
production: refused connections, resets, then the same server back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent import futures
from pathlib import Path

import grpc
import httpx
import redis
from chatbot.nlu.v1 import nlu_service_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from harness.standins import GraphApi, KeywordNlu, RecordingChatlog, _KeywordNluServicer
from harness.support import REPO, free_port

PYTHONPATH = f"{REPO}:{REPO / 'build' / 'gen' / 'py'}"
TENANT = "default"
APP_SECRET = "faults-app-secret-2c9d"


class FaultRedis:
    """``redis-server`` append-only with ``appendfsync always``: whatever it
    acknowledged is on disk, so even SIGKILL may lose nothing."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = free_port()
        self._start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _start(self) -> None:
        argv = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on {self.port}")
            time.sleep(0.05)

    def answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def restart(self, sig: signal.Signals, down_s: float) -> float:
        """Stops with ``sig``, stays down ``down_s``, starts on the same port;
        returns how long nothing answered."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(15)
        time.sleep(down_s)
        self._start()
        return time.monotonic() - started

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SwitchableNlu(KeywordNlu):
    """The keyword NLU stand-in, which can also stop listening (clients get
    connection refused) and listen again on the same port."""

    def stop_serving(self) -> None:
        self._server.stop(0).wait()

    def serve_again(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
        servicer = _KeywordNluServicer(self)  # type: ignore[abstract]
        nlu_service_pb2_grpc.add_NluServiceServicer_to_server(servicer, server)
        health_servicer = health.HealthServicer()
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        server.add_insecure_port(self.address)
        server.start()
        self._server = server


def dialogue_env(
    redis_url: str, graph: GraphApi, nlu_address: str, chatlog_address: str, **extra: str
) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "NLU_ADDRESS": nlu_address,
        "CHATLOG_ADDRESS": chatlog_address,
        "MESSENGER_GRAPH_API_URL": graph.url,
        "MESSENGER_PAGE_ACCESS_TOKEN": "page-token-for-faults",
        "ORDER_API_URL": graph.url,
        "WEATHER_API_URL": graph.url,
        "TENANT_ID": TENANT,
        "DIALOGUE_PAGE_TOKEN_SECRET": "faults-tests-page-tokens",
        "DIALOGUE_RETRY_BACKOFF_MS": "50",
        # A crashed replica's users are taken over within about a second.
        "DIALOGUE_STALL_GRACE_SECONDS": "1",
        "DIALOGUE_SWEEP_SECONDS": "0.5",
        "LOG_LEVEL": "INFO",
        **extra,
    }


def _spawn(argv: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": PYTHONPATH, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


class GatewayProcess:
    """``python -m services.gateway serve`` on a port that stays the same across restarts."""

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(self.port), **env}
        self.log_path = workdir / f"gateway-{self.port}.log"
        self.starts = 0
        self.start()

    def start(self, timeout: float = 30.0) -> float:
        """Starts and waits for /healthz; returns the seconds that took."""
        started = time.monotonic()
        self.proc = _spawn(
            [sys.executable, "-m", "services.gateway", "serve"], self.env, self.log_path
        )
        self.starts += 1
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() - started > timeout:
                raise RuntimeError(f"gateway did not start:\n{self.tail()}")
            time.sleep(0.05)

    def signal(self, sig: signal.Signals, timeout: float = 20.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


__all__ = [
    "APP_SECRET",
    "TENANT",
    "FaultRedis",
    "GatewayProcess",
    "GraphApi",
    "RecordingChatlog",
    "SwitchableNlu",
    "dialogue_env",
]
