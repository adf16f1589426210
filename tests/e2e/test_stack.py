"""The whole stack as `make run` starts it, played like Messenger by `chatbot simulate`.

Every message of several users, delivered with duplicates and batches through
signed webhooks, must be answered once and in order, and the conversation must
be in the chatlog.
"""

from __future__ import annotations

import json
import os
import secrets
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
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as dialogue_pb
from chatbot.dialogue.v1 import dialogue_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from cli.graph_standin import GraphStandIn
from cli.simulate import simulate
from harness.redis_servers import RedisServer
from harness.support import REPO, free_port
from services.gateway.messenger.signature import sign
from tests.dialogue.test_tracing import Collector
from tests.nlu_process import nlu_python

pytestmark = pytest.mark.slow


class Stack:
    def __init__(self, workdir: Path, redis_url: str, otlp_port: int) -> None:
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
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
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
def collector() -> Iterator[Collector]:
    server = Collector()
    yield server
    server.server.stop(0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    redis = RedisServer(workdir)
    running = Stack(workdir, redis.url, collector.port)
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


def test_one_webhook_makes_one_trace_across_the_services(
    stack: Stack, collector: Collector
) -> None:
    graph = GraphStandIn(port=stack.ports["graph"]).start()
    try:
        trace_id, root = secrets.token_hex(16), secrets.token_hex(8)
        body = json.dumps(
            {
                "object": "page",
                "entry": [
                    {
                        "id": "local-page",
                        "time": 1,
                        "messaging": [
                            {
                                "sender": {"id": "traced-user"},
                                "recipient": {"id": "local-page"},
                                "timestamp": int(time.time() * 1000),
                                "message": {"mid": "m_traced", "text": "hello"},
                            }
                        ],
                    }
                ],
            }
        ).encode()
        answer = httpx.post(
            f"http://127.0.0.1:{stack.ports['gateway']}/webhooks/messenger",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Hub-Signature-256": sign("local-app-secret", body),
                "traceparent": f"00-{trace_id}-{root}-01",
            },
            timeout=10,
        )
        assert answer.status_code == 200
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            s.in_reply_to == "m_traced" for s in graph.sent
        ):
            time.sleep(0.2)
    finally:
        graph.stop()
    expected = {
        "POST /webhooks/messenger",  # gateway
        "chatbot.dialogue.v1.DialogueService/SubmitEvents",  # gateway client and dialogue server
        "dialogue.process",  # the worker, after the queue
        "chatbot.nlu.v1.NluService/Parse",  # the dialogue's client span
        "chatbot.chatlog.v1.ChatlogService/AppendMessages",  # dialogue client and chatlog server
        "messenger.send",
    }

    def ours() -> dict[str, Span]:
        with collector.lock:
            return {s.span_id.hex(): s for s in collector.spans if s.trace_id.hex() == trace_id}

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not expected <= {s.name for s in ours().values()}:
        time.sleep(0.5)
    spans = ours()
    assert expected <= {s.name for s in spans.values()}
    for span in spans.values():
        parent = span.parent_span_id.hex()
        while parent in spans:
            parent = spans[parent].parent_span_id.hex()
        assert parent == root, span.name
    # Both sides of the chatlog call are in the trace: the chatlog service exported too.
    appends = [s for s in spans.values() if s.name.endswith("AppendMessages")]
    assert len(appends) >= 2


def _post_webhook(stack: Stack, *items: dict[str, object]) -> None:
    now = int(time.time() * 1000)
    body = json.dumps(
        {"object": "page", "entry": [{"id": "local-page", "time": now, "messaging": list(items)}]}
    ).encode()
    response = httpx.post(
        f"http://127.0.0.1:{stack.ports['gateway']}/webhooks/messenger",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign("local-app-secret", body),
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text


def test_the_chatlog_records_what_really_happened(stack: Stack) -> None:
    """Send times from the Send API, processing up to the send, links kept as links,
    and receipts as the replies' status, taking no turn of the user's queue."""
    user = f"fidelity-{secrets.token_hex(4)}"
    graph = GraphStandIn(port=stack.ports["graph"]).start()
    try:
        sent_at = int(time.time() * 1000)
        base = {"sender": {"id": user}, "recipient": {"id": "local-page"}}
        _post_webhook(
            stack,
            base | {"timestamp": sent_at, "message": {"mid": f"m_{user}", "text": "hello, see https://example.com/shoes?"}},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not any(s.recipient == user for s in graph.sent):
            assert time.monotonic() < deadline, "no reply was sent"
            time.sleep(0.1)
        with grpc.insecure_channel(f"127.0.0.1:{stack.ports['chatlog']}") as channel:
            stub = chatlog_service_pb2_grpc.ChatlogServiceStub(channel)
            request = chatlog_pb.ListMessagesRequest(
                tenant_id="default", conversation_id=f"1:{user}", page_size=100
            )

            def transcript() -> list[chatlog_pb.ChatMessage]:
                try:
                    return list(stub.ListMessages(request, timeout=10).messages)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    return []

            deadline = time.monotonic() + 60
            while len(messages := transcript()) < 2:
                assert time.monotonic() < deadline, f"the turn was not recorded: {messages}"
                time.sleep(0.2)
            inbound, *replies = messages
            assert inbound.type == chatlog_pb.MESSAGE_TYPE_LINK
            assert inbound.text == "hello, see https://example.com/shoes?"
            assert [a.url for a in inbound.attachments] == ["https://example.com/shoes"]
            assert replies and all(r.HasField("sent_time") for r in replies)
            last_sent = max(r.sent_time.ToMilliseconds() for r in replies)
            assert all(
                r.sent_time.ToMilliseconds() >= r.respond_time.ToMilliseconds() for r in replies
            )
            assert inbound.respond_time.ToMilliseconds() == last_sent
            assert inbound.processing_duration.ToMilliseconds() == (
                last_sent - inbound.received_time.ToMilliseconds()
            )
            assert {r.delivery_status for r in replies} == {chatlog_pb.DELIVERY_STATUS_SENT}

            # Messenger reports the replies delivered, then read (and repeats itself).
            receipts_at = int(time.time() * 1000) + 1000
            delivered = base | {"timestamp": receipts_at, "delivery": {"watermark": receipts_at}}
            read = base | {"timestamp": receipts_at + 1, "read": {"watermark": receipts_at}}
            _post_webhook(stack, delivered)
            _post_webhook(stack, delivered, read)
            deadline = time.monotonic() + 60
            while {m.delivery_status for m in transcript()[1:]} != {
                chatlog_pb.DELIVERY_STATUS_READ
            }:
                assert time.monotonic() < deadline, transcript()
                time.sleep(0.2)
            # No line for the receipts, and they never took a turn: the last
            # event the user's queue processed is still the message.
            assert len(transcript()) == len(messages)
        with grpc.insecure_channel(f"127.0.0.1:{stack.ports['dialogue']}") as channel:
            state = (
                dialogue_service_pb2_grpc.DialogueServiceStub(channel)
                .GetConversationState(
                    dialogue_pb.GetConversationStateRequest(
                        user=event_pb2.UserRef(
                            tenant_id="default", channel=event_pb2.CHANNEL_MESSENGER, user_id=user
                        )
                    ),
                    timeout=10,
                )
                .state
            )
            assert state.last_processed_event_id == f"m_{user}"
    finally:
        graph.stop()
