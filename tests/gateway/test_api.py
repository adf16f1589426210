"""The JSON channel of the real gateway: API keys, both modes, validation, rate limits."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from chatbot.common.v1 import event_pb2 as ev
from starlette.testclient import TestClient

from harness.dialogue_server import CANNED_REPLY
from harness.redis_servers import RedisCluster, RedisServer
from harness.support import free_port
from mesh.tenants import Tenants
from services.gateway import GatewaySettings, create_app
from services.gateway.dialogue import GrpcDialogueClient
from services.gateway.ratelimit import RedisRateLimiter
from tests.gateway.conftest import gateway_env
from tests.gateway.harness import ACME_KEY, GLOBEX_KEY, DialogueServer, Gateway

# ---- authentication -------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, "Bearer"),
        ({"Authorization": "Bearer not-a-key"}, 'Bearer error="invalid_token"'),
        ({"Authorization": "Bearer"}, 'Bearer error="invalid_token"'),
        ({"Authorization": f"Basic {ACME_KEY}"}, "Bearer"),
        ({"Authorization": f"Bearer {ACME_KEY}x"}, 'Bearer error="invalid_token"'),
    ],
)
def test_requests_without_a_valid_key_are_401(
    gateway: Gateway, dialogue: DialogueServer, headers: dict[str, str], challenge: str
) -> None:
    response = gateway.post_message({"user_id": "u1", "text": "hi"}, key=None, **headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge
    assert dialogue.calls() == []


def test_the_key_decides_the_tenant(gateway: Gateway, dialogue: DialogueServer) -> None:
    assert gateway.post_message({"user_id": "u1", "text": "a"}, key=ACME_KEY).status_code == 202
    assert gateway.post_message({"user_id": "u1", "text": "b"}, key=GLOBEX_KEY).status_code == 202
    assert [e.user.tenant_id for e in dialogue.events()] == ["acme", "globex"]


# ---- asynchronous mode -------------------------------------------------------------


def test_async_message_is_submitted_and_idempotent_by_message_id(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    body = {"user_id": "web-7", "text": "where is my order", "message_id": "client-1"}
    first = gateway.post_message(body)
    assert first.status_code == 202
    assert first.json() == {"event_id": "client-1", "status": "accepted"}
    again = gateway.post_message(body)
    assert again.status_code == 202
    assert again.json() == {"event_id": "client-1", "status": "duplicate"}
    event = dialogue.events()[0]
    assert event.user == ev.UserRef(tenant_id="acme", channel=ev.CHANNEL_API, user_id="web-7")
    assert event.message.text == "where is my order"
    assert event.message.mid == "client-1"
    assert event.event_time.seconds > 0


def test_payloads_become_postbacks_and_ids_are_generated(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    response = gateway.post_message({"user_id": "web-8", "payload": "BUY_NOW"})
    assert response.status_code == 202
    event_id = response.json()["event_id"]
    (event,) = dialogue.events()
    assert event.event_id == event_id and event_id.startswith("api-")
    assert event.postback.payload == "BUY_NOW"


# ---- synchronous mode --------------------------------------------------------------


def test_sync_returns_the_replies(gateway: Gateway, dialogue: DialogueServer) -> None:
    response = gateway.post_message(
        {"user_id": "web-9", "text": "hello", "message_id": "sync-1", "sync": True},
        **{"X-Request-Id": "sync-req-1"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["event_id"] == "sync-1" and body["duplicate"] is False
    assert [r["text"] for r in body["replies"]] == [CANNED_REPLY, "you sent 5 characters"]
    assert body["replies"][0]["quick_replies"] == [
        {"title": "Again", "payload": "AGAIN", "image_url": ""}
    ]
    (call,) = dialogue.calls("Converse")
    assert call.request_id == "sync-req-1"
    assert call.events[0].user.channel == ev.CHANNEL_API


def test_sync_timeout_is_504_and_unavailable_is_503(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    dialogue.set_mode("stall:3")
    slow = gateway.post_message({"user_id": "u", "text": "x", "message_id": "s2", "sync": True})
    assert slow.status_code == 504
    assert "same message_id" in slow.json()["message"]
    dialogue.set_mode("unavailable")
    down = gateway.post_message({"user_id": "u", "text": "x", "sync": True})
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
    queued = gateway.post_message({"user_id": "u", "text": "x"})
    assert queued.status_code == 503


# ---- validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        ([1, 2], 422, "JSON object"),
        ({"text": "hi"}, 422, "user_id is required"),
        ({"user_id": "", "text": "hi"}, 422, "user_id must not be empty"),
        ({"user_id": "a b", "text": "hi"}, 422, "spaces"),
        ({"user_id": 5, "text": "hi"}, 422, "user_id must be a string"),
        ({"user_id": "u"}, 422, "exactly one of text and payload"),
        ({"user_id": "u", "text": "a", "payload": "b"}, 422, "exactly one"),
        ({"user_id": "u", "text": "x" * 2001}, 422, "limit is 2000"),
        ({"user_id": "u", "payload": "x" * 1001}, 422, "limit is 1000"),
        ({"user_id": "u", "text": "hi", "sync": "yes"}, 422, "sync must be true or false"),
        ({"user_id": "u", "text": "hi", "extra": 1}, 422, "unknown field 'extra'"),
        ({"user_id": "u", "text": "hi", "message_id": 12}, 422, "message_id must be a string"),
        (b'{"user_id": "u", "text": "\\ud800"}', 422, "not valid Unicode"),
        (b'{"user_id": "u", "text": "x", "n": 1' + b"0" * 5000 + b"}", 400, "not valid JSON"),
    ],
)
def test_invalid_requests_are_4xx_with_a_reason(
    gateway: Gateway, dialogue: DialogueServer, body: Any, status: int, fragment: str
) -> None:
    response = gateway.post_message(body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["message"]
    assert dialogue.calls() == []


def test_a_large_body_is_413(gateway: Gateway) -> None:
    response = gateway.post_message(b'{"user_id": "u", "text": "' + b"x" * 70_000 + b'"}')
    assert response.status_code == 413


# ---- rate limits -------------------------------------------------------------------


class ManualClock:
    """Unix time that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))  # whole seconds: window ends fall on exact ms

    def __call__(self) -> float:
        return self.now


def test_rate_limits_per_user_then_per_tenant(
    tenants_file: Path, dialogue: DialogueServer, redis_server: RedisServer
) -> None:
    # The app in-process with a real limiter on the real Redis, on a clock of
    # the test's own: a window cannot end half-way through the requests.
    clock = ManualClock()
    start = clock.now
    limiter = RedisRateLimiter(redis_server.url, prefix=f"tests:{uuid.uuid4().hex}:", clock=clock)
    settings = GatewaySettings(user_rate_limit=3, tenant_rate_limit=5, rate_limit_window=60.0)
    app = create_app(
        settings,
        Tenants.from_file(tenants_file),
        GrpcDialogueClient(dialogue.address),
        rate_limiter=limiter,
    )
    with TestClient(app) as client:

        def post(user_id: str, key: str = ACME_KEY) -> Any:
            return client.post(
                "/api/v1/messages",
                json={"user_id": user_id, "text": "hi"},
                headers={"Authorization": f"Bearer {key}"},
            )

        def limited(scope: str) -> float:
            series = f'gateway_rate_limited_total{{scope="{scope}"}} '
            lines = client.get("/metrics").text.splitlines()
            return sum(float(x.removeprefix(series)) for x in lines if x.startswith(series))

        assert [post("a").status_code for _ in range(4)] == [202, 202, 202, 429]
        clock.now = start + 15.5
        refused = post("a")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "45"  # 44.5 s of the window left, rounded up
        assert "user" in refused.json()["message"]
        # Another user of the same tenant still gets through, up to the tenant's limit.
        assert post("b").status_code == 202
        assert post("b").status_code == 202
        tenant_refused = post("c")
        assert tenant_refused.status_code == 429
        assert "tenant" in tenant_refused.json()["message"]
        # Another tenant has its own count.
        assert post("a", GLOBEX_KEY).status_code == 202
        assert (limited("user"), limited("tenant")) == (2, 1)
        # The window opened at the first request lasts 60 s to the millisecond.
        clock.now = start + 59.999
        last_moment = post("a")
        assert last_moment.status_code == 429
        assert last_moment.headers["retry-after"] == "1"
        clock.now = start + 60
        assert post("a").status_code == 202
    assert len(dialogue.events()) == 7


def test_rate_limits_fail_open_when_redis_is_down(
    gateway_workdir: Path, tenants_file: Path, dialogue_address: str, dialogue: DialogueServer
) -> None:
    env = gateway_env(
        tenants_file, dialogue_address, f"redis://127.0.0.1:{free_port()}/0",
        GATEWAY_USER_RATE_LIMIT="1",
    )  # fmt: skip
    process = Gateway(gateway_workdir, env, name="no-redis")
    try:
        statuses = [
            process.post_message({"user_id": "u", "text": "t"}).status_code for _ in range(3)
        ]
        assert statuses == [202, 202, 202]
        assert (
            process.metric(
                "gateway_rejections_total",
                route="/api/v1/messages",
                reason="rate_limiter_unavailable",
            )
            == 3
        )
        assert "rate limiter unavailable" in process.logs()
    finally:
        process.stop()


def test_rate_limits_on_a_redis_cluster(
    gateway_workdir: Path,
    tenants_file: Path,
    dialogue_address: str,
    redis_cluster: RedisCluster,
    dialogue: DialogueServer,
) -> None:
    env = gateway_env(
        tenants_file, dialogue_address, redis_cluster.url, GATEWAY_USER_RATE_LIMIT="2"
    )
    process = Gateway(gateway_workdir, env, name="cluster")
    try:
        # Users whose counters land on different masters.
        for user in ("alpha", "bravo", "charlie", "delta", "echo"):
            statuses = [
                process.post_message({"user_id": f"cl-{user}", "text": "t"}).status_code
                for _ in range(3)
            ]
            assert statuses == [202, 202, 429], user
        assert (
            process.metric(
                "gateway_rejections_total",
                route="/api/v1/messages",
                reason="rate_limiter_unavailable",
            )
            == 0
        )
    finally:
        process.stop()
