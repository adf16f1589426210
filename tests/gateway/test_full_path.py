"""The full path: the gateway in front of the real dialogue service, whose NLU,
chatlog and Send API are the dialogue suite's real stand-in servers.

A Messenger POST is acknowledged, processed once, and answered through the
Send API in the user's order; echoes are never answered; the JSON channel's
synchronous mode returns the bot's replies.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from harness.redis_servers import RedisServer
from harness.standins import GraphApi, KeywordNlu, RecordingChatlog
from harness.support import ServiceProcess, free_port
from tests.gateway.conftest import gateway_env
from tests.gateway.harness import PYTHONPATH, Gateway, payload


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def graph_api() -> Iterator[GraphApi]:
    api = GraphApi().start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def standins() -> Iterator[tuple[KeywordNlu, RecordingChatlog]]:
    nlu, chatlog = KeywordNlu(), RecordingChatlog()
    yield nlu, chatlog
    nlu.stop()
    chatlog.stop()


@pytest.fixture(scope="module")
def full_path(
    gateway_workdir: Path,
    tenants_file: Path,
    redis_server: RedisServer,
    graph_api: GraphApi,
    standins: tuple[KeywordNlu, RecordingChatlog],
) -> Iterator[Gateway]:
    nlu, chatlog = standins
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/2"
    port = free_port()
    dialogue = ServiceProcess(
        [sys.executable, "-m", "services.dialogue", "serve"],
        {
            "PYTHONPATH": PYTHONPATH,
            "DIALOGUE_PORT": str(port),
            "METRICS_PORT": "0",
            "TENANTS_FILE": str(tenants_file),
            "REDIS_URL": redis_url,
            "NLU_ADDRESS": nlu.address,
            "CHATLOG_ADDRESS": chatlog.address,
            "MESSENGER_GRAPH_API_URL": graph_api.url,
            "DIALOGUE_PAGE_TOKEN_SECRET": "gateway-tests-page-tokens",
            "LOG_LEVEL": "INFO",
        },
        gateway_workdir / f"real-dialogue-{port}.log",
        port,
    )
    gateway: Gateway | None = None
    try:
        dialogue.wait_for_status(health_pb2.HealthCheckResponse.SERVING, timeout=60)
        env = gateway_env(tenants_file, f"127.0.0.1:{port}", redis_url)
        env.update(
            CHATLOG_ADDRESS=chatlog.address,
            NLU_ADDRESS=nlu.address,
            GATEWAY_SUBMIT_TIMEOUT="3",
            GATEWAY_CONVERSE_TIMEOUT="10",
        )
        gateway = Gateway(gateway_workdir, env, name="full-path")
        yield gateway
    finally:
        if gateway is not None:
            gateway.stop()
        dialogue.stop()


def test_webhook_to_send_api_in_order_once(full_path: Gateway, graph_api: GraphApi) -> None:
    checks = full_path.client.get("/readyz").json()["checks"]
    # The chatlog stand-in has no health service: reported, not hidden.
    assert checks == {"dialogue": "SERVING", "nlu": "SERVING", "chatlog": "UNIMPLEMENTED"}
    response = full_path.post_webhook(payload("messenger_md_example.json"))
    assert response.status_code == 200
    assert response.json()["accepted"] == 3
    wait_for(lambda: {"m_AAA", "m_CCC"} <= set(graph_api.replies_by_user().get("1001", [])))
    answered = graph_api.replies_by_user()["1001"]
    firsts = [answered.index(mid) for mid in ("m_AAA", "m_BBB", "m_CCC") if mid in answered]
    assert firsts == sorted(firsts), answered

    replies_before = len(graph_api.sent)
    again = full_path.post_webhook(payload("messenger_md_example.json"))
    assert again.json()["duplicates"] == 3
    time.sleep(1.0)
    assert len(graph_api.sent) == replies_before


def test_echoes_and_receipts_are_never_answered(full_path: Gateway, graph_api: GraphApi) -> None:
    for name in ("echo.json", "delivery_read.json", "reactions.json", "standby.json"):
        assert full_path.post_webhook(payload(name)).status_code == 200
    time.sleep(1.5)
    replied_to = {m.recipient for m in graph_api.sent}
    assert not replied_to & {"1010", "1011", "1015", "1003"}


def test_json_channel_sync_returns_the_bots_replies(full_path: Gateway) -> None:
    response = full_path.post_message(
        {"user_id": "web-full", "text": "hello there", "message_id": "full-1", "sync": True}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["event_id"] == "full-1"
    assert body["replies"] and body["replies"][0]["text"]
    assert body["intent"]["name"] == "greet"
    again = full_path.post_message(
        {"user_id": "web-full", "text": "hello there", "message_id": "full-1", "sync": True}
    )
    assert again.json()["duplicate"] is True
