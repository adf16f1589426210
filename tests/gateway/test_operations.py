"""Running the gateway: its command, probes, metrics, the one-tenant setup from
the environment, and a dialogue service that goes away and comes back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.redis_servers import RedisServer
from harness.support import REPO, free_port
from services.gateway.messenger.signature import sign
from tests.gateway.conftest import gateway_env
from tests.gateway.harness import PYTHONPATH, DialogueServer, Gateway, payload


def test_help_describes_the_command() -> None:
    for argv in (["--help"], ["serve", "--help"]):
        result = subprocess.run(
            [sys.executable, "-m", "services.gateway", *argv],
            cwd=REPO,
            env={"PYTHONPATH": PYTHONPATH, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "GATEWAY_PORT" in result.stdout or "serve" in result.stdout


def test_a_bad_setting_fails_loudly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.gateway", "serve"],
        cwd=REPO,
        env={"PYTHONPATH": PYTHONPATH, "GATEWAY_SUBMIT_TIMEOUT": "soon"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "GATEWAY_SUBMIT_TIMEOUT" in result.stderr


def test_healthz_and_readyz(gateway: Gateway) -> None:
    assert gateway.client.get("/healthz").json() == {"status": "ok"}
    ready = gateway.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"dialogue": "SERVING", "chatlog": "SERVING", "nlu": "SERVING"}


def test_metrics_are_prometheus_text(gateway: Gateway) -> None:
    gateway.client.get("/healthz")
    response = gateway.client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    for name in (
        "gateway_http_requests_total",
        "gateway_http_request_duration_seconds_bucket",
        "gateway_messenger_ack_seconds",
        "gateway_events_total",
        "gateway_events_duplicate_total",
        "gateway_signature_failures_total",
        "gateway_rejections_total",
        "gateway_rate_limited_total",
    ):
        assert name in response.text
    assert (
        gateway.metric("gateway_http_requests_total", route="/healthz", method="GET", status="200")
        >= 1
    )
    gateway.client.get("/no/such/path")
    assert (
        gateway.metric("gateway_http_requests_total", route="other", method="GET", status="404")
        >= 1
    )


# ---- one tenant from the environment ----------------------------------------------


@pytest.fixture(scope="module")
def env_gateway(
    gateway_workdir: Path, dialogue_address: str, redis_server: RedisServer
) -> Iterator[Gateway]:
    env = gateway_env(Path("/unused"), dialogue_address, redis_server.url)
    del env["TENANTS_FILE"]
    env.update(
        MESSENGER_APP_SECRET="env-secret",
        MESSENGER_VERIFY_TOKEN="env-verify",
        API_KEYS="env-key-1, env-key-2",
        TENANTS_FILE="",
    )
    process = Gateway(gateway_workdir, env, name="env")
    yield process
    process.stop()


def test_one_tenant_from_the_environment_serves_any_page(
    env_gateway: Gateway, dialogue: DialogueServer
) -> None:
    verify = env_gateway.client.get(
        "/webhooks/messenger",
        params={"hub.mode": "subscribe", "hub.verify_token": "env-verify", "hub.challenge": "c"},
    )
    assert verify.text == "c"
    response = env_gateway.post_webhook(payload("messenger_md_example.json"), secret="env-secret")
    assert response.status_code == 200
    assert {e.user.tenant_id for e in dialogue.events()} == {"default"}
    assert (
        env_gateway.post_message({"user_id": "u", "text": "t"}, key="env-key-2").status_code == 202
    )


def test_with_one_secret_unsigned_bodies_are_never_parsed(env_gateway: Gateway) -> None:
    assert env_gateway.post_webhook(b"{broken", secret="wrong").status_code == 403
    assert env_gateway.post_webhook(b"{broken", secret="env-secret").status_code == 400


def test_without_an_app_secret_webhooks_are_refused(
    gateway_workdir: Path, dialogue_address: str, redis_server: RedisServer
) -> None:
    env = gateway_env(
        Path("/unused"),
        dialogue_address,
        redis_server.url,
        TENANTS_FILE="",
        MESSENGER_APP_SECRET="",
    )
    process = Gateway(gateway_workdir, env, name="nosecret")
    try:
        body = payload("messenger_md_example.json")
        assert process.post_webhook(body, secret="").status_code == 403
        assert process.post_webhook(body, signature=sign("", body)).status_code == 403
        assert "no tenant has a Messenger app secret" in process.logs()
    finally:
        process.stop()


# ---- the dialogue service goes away and comes back ---------------------------------


def test_dialogue_down_then_back(
    gateway_workdir: Path, tenants_file: Path, redis_server: RedisServer
) -> None:
    port = free_port()
    dead_chatlog = f"127.0.0.1:{free_port()}"
    env = gateway_env(tenants_file, f"127.0.0.1:{port}", redis_server.url)
    env.update(CHATLOG_ADDRESS=dead_chatlog, NLU_ADDRESS=f"127.0.0.1:{port}")
    gateway = Gateway(gateway_workdir, env, name="down")
    server: DialogueServer | None = None
    try:
        body = json.dumps(
            {
                "object": "page",
                "entry": [
                    {
                        "id": "111",
                        "messaging": [
                            {"sender": {"id": "77"}, "timestamp": 1, "message": {"mid": "m_back"}}
                        ],
                    }
                ],
            }
        ).encode()
        started = time.monotonic()
        down = gateway.post_webhook(body)
        assert down.status_code == 503
        assert time.monotonic() - started < 2
        ready = gateway.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["dialogue"] == "UNREACHABLE"

        server = DialogueServer(gateway_workdir, redis_server.url, port=port)
        deadline = time.monotonic() + 20
        status = down.status_code
        while status != 200 and time.monotonic() < deadline:
            time.sleep(0.25)
            status = gateway.post_webhook(body).status_code
        assert status == 200
        assert [e.event_id for e in server.events()] == ["m_back"]
        checks = gateway.client.get("/readyz").json()["checks"]
        assert checks == {"dialogue": "SERVING", "chatlog": "UNREACHABLE", "nlu": "SERVING"}
    finally:
        gateway.stop()
        if server is not None:
            server.reset()
            server.stop()


def test_readiness_can_require_fewer_dependencies(
    gateway_workdir: Path, tenants_file: Path, dialogue_address: str, redis_server: RedisServer
) -> None:
    env = gateway_env(tenants_file, dialogue_address, redis_server.url)
    env.update(NLU_ADDRESS=f"127.0.0.1:{free_port()}", GATEWAY_READY_REQUIRES="dialogue")
    gateway = Gateway(gateway_workdir, env, name="ready")
    try:
        ready = gateway.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["nlu"] == "UNREACHABLE"
        assert ready.json()["requires"] == ["dialogue"]
    finally:
        gateway.stop()
