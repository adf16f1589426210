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
from pathlib import Path

import httpx
import redis

from harness.redis_servers import RedisServer
from harness.standins import GraphApi, KeywordNlu, RecordingChatlog
from harness.support import REPO, free_port

PYTHONPATH = f"{REPO}:{REPO / 'build' / 'gen' / 'py'}"
TENANT = "default"
APP_SECRET = "faults-app-secret-2c9d"


class FaultRedis(RedisServer):
    """``redis-server`` append-only with ``appendfsync always``: whatever it
    acknowledged is on disk, so even SIGKILL may lose nothing."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, args=["--appendfsync", "always"])

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


class SwitchableNlu(KeywordNlu):
    """The keyword NLU stand-in, which can also stop listening (clients get
    connection refused) and listen again on the same port."""

    def stop_serving(self) -> None:
        self._server.stop(0).wait()

    def serve_again(self) -> None:
        self._server = self._serve()


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
