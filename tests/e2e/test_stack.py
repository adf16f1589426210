"""The whole stack as `make run` starts it, played like Messenger by `chatbot simulate`.

Every message of several users, delivered with duplicates and batches through
signed webhooks, must be answered once and in order, and the conversation must
be in the chatlog.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.chatlog.v1 import chatlog_service_pb2_grpc

from cli.simulate import simulate
from tests.nlu_process import nlu_python
from tests.redis_servers import RedisServer
from tests.support import REPO, free_port

pytestmark = pytest.mark.slow


class Stack:
    def __init__(self, workdir: Path, redis_url: str) -> None:
        self.ports = {
            name: free_port() for name in ("gateway", "dialogue", "nlu", "chatlog", "graph")
        }
        self.env = {
            **os.environ,
            "NLU_PYTHON": nlu_python(),
            "GATEWAY_PORT": str(self.ports["gateway"]),
            "DIALOGUE_PORT": str(self.ports["dialogue"]),
            "NLU_PORT": str(self.ports["nlu"]),
            "CHATLOG_PORT": str(self.ports["chatlog"]),
            "NLU_METRICS_PORT": "0",
            "CHATLOG_METRICS_PORT": "0",
            "DIALOGUE_METRICS_PORT": "0",
            "REDIS_URL": redis_url,
            "CHATLOG_SQLITE_PATH": str(workdir / "chatlog.sqlite3"),
            "MESSENGER_GRAPH_API_URL": f"http://127.0.0.1:{self.ports['graph']}/v21.0",
            "ORDER_API_URL": f"http://127.0.0.1:{self.ports['graph']}",
            "WEATHER_API_URL": f"http://127.0.0.1:{self.ports['graph']}",
            "ADMIN_USERNAME": "admin",
            "ADMIN_PASSWORD": "admin-password-for-tests",
        }
        for key in ("MESSENGER_APP_SECRET", "TENANTS_FILE"):
            self.env.pop(key, None)
        self.log = (workdir / "stack.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "run"],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = workdir / "stack.log"

    def wait_up(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the stack stopped:\n" + self.log_path.read_text()[-4000:])
            if "The stack is up." in self.log_path.read_text(errors="replace"):
                return
            time.sleep(1)
        raise TimeoutError("the stack did not come up:\n" + self.log_path.read_text()[-4000:])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        return code


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    redis = RedisServer(workdir)
    running = Stack(workdir, redis.url)
    try:
        running.wait_up()
        yield running
    finally:
        code = running.stop()
        redis.stop()
    assert code == 0, running.log_path.read_text()[-4000:]


def test_simulated_messenger_traffic_is_answered_once_and_in_order(stack: Stack) -> None:
    gateway = f"http://127.0.0.1:{stack.ports['gateway']}"
    summary = simulate(
        gateway,
        "local-app-secret",
        "local-page",
        users=6,
        messages=8,
        graph_port=stack.ports["graph"],
        duplicate_rate=0.4,
        timeout_s=180,
        show=False,
    )
    assert summary.missing == []
    assert summary.duplicate_replies == 0
    assert summary.out_of_order_users == []
    assert summary.answered == 48
    # The conversations are in the chatlog, with their intents.
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports['chatlog']}") as channel:
        stub = chatlog_service_pb2_grpc.ChatlogServiceStub(channel)
        listed = stub.ListConversations(
            chatlog_pb.ListConversationsRequest(tenant_id="default", page_size=100)
        )
        assert len(listed.conversations) >= 6
        transcript = stub.ListMessages(
            chatlog_pb.ListMessagesRequest(
                tenant_id="default",
                conversation_id=listed.conversations[0].conversation_id,
                page_size=100,
            )
        )
        inbound = [m for m in transcript.messages if m.direction == chatlog_pb.DIRECTION_INBOUND]
        assert inbound and all(m.intent.name for m in inbound)


def test_admin_console_needs_a_login(stack: Stack) -> None:
    gateway = f"http://127.0.0.1:{stack.ports['gateway']}"
    page = httpx.get(f"{gateway}/admin", follow_redirects=False, timeout=10)
    assert page.status_code in (302, 303, 307, 401)
    api = httpx.get(f"{gateway}/api/admin/conversations", timeout=10)
    assert api.status_code == 401
