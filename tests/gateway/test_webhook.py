"""The Messenger webhook of the real gateway process, over HTTP, in front of a
real DialogueService over gRPC."""

from __future__ import annotations

import json
import socket
import time

import pytest

from services.gateway.messenger.signature import sign
from tests.gateway.harness import (
    ACME_SECRET,
    ACME_VERIFY,
    GLOBEX_SECRET,
    GLOBEX_VERIFY,
    DialogueServer,
    Gateway,
    payload,
)


def message_body(mid: str, page: str = "111", user: str = "4242", text: str = "hi") -> bytes:
    event = {
        "sender": {"id": user},
        "recipient": {"id": page},
        "timestamp": 1700000000000,
        "message": {"mid": mid, "text": text},
    }
    return json.dumps(
        {"object": "page", "entry": [{"id": page, "time": 1700000000000, "messaging": [event]}]}
    ).encode()


# ---- verification -------------------------------------------------------------


@pytest.mark.parametrize("token", [ACME_VERIFY, GLOBEX_VERIFY])
def test_verification_answers_the_challenge_as_plain_text(gateway: Gateway, token: str) -> None:
    response = gateway.client.get(
        "/webhooks/messenger",
        params={"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "1158201444"},
    )
    assert response.status_code == 200
    assert response.text == "1158201444"
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": ACME_VERIFY, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": ACME_VERIFY},
        {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {},
    ],
)
def test_verification_refuses_everything_else(gateway: Gateway, params: dict[str, str]) -> None:
    response = gateway.client.get("/webhooks/messenger", params=params)
    assert response.status_code == 403
    assert response.text != "1"


# ---- signatures ---------------------------------------------------------------


def test_missing_signature_is_403_and_nothing_is_queued(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    before = gateway.metric("gateway_signature_failures_total", reason="missing")
    response = gateway.post_webhook(message_body("m_unsigned"), secret=None)
    assert response.status_code == 403
    assert dialogue.events() == []
    assert gateway.metric("gateway_signature_failures_total", reason="missing") == before + 1


@pytest.mark.parametrize(
    "signature",
    [
        "sha256=" + "0" * 64,
        "sha256=zz",
        "sha1=" + "0" * 40,
        sign(ACME_SECRET, b"another body"),
        sign(ACME_SECRET, message_body("m_wrong")).upper().replace("SHA256=", "sha512="),
    ],
)
def test_wrong_signatures_are_403(
    gateway: Gateway, dialogue: DialogueServer, signature: str
) -> None:
    response = gateway.post_webhook(message_body("m_wrong"), signature=signature)
    assert response.status_code == 403
    assert dialogue.events() == []


def test_old_sha1_header_alone_is_not_accepted(gateway: Gateway, dialogue: DialogueServer) -> None:
    body = message_body("m_sha1")
    response = gateway.post_webhook(
        body, secret=None, headers={"X-Hub-Signature": "sha1=" + "a" * 40}
    )
    assert response.status_code == 403
    assert dialogue.events() == []


def test_escaped_unicode_is_verified_over_the_raw_bytes(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    raw = payload("escaped_unicode.json")
    assert b"\\u00e9" in raw and b"\\/" in raw
    reserialized = json.dumps(json.loads(raw), ensure_ascii=False).encode()
    # The frameworks' bug: signing what they re-serialized. Meta signs what it sent.
    refused = gateway.post_webhook(raw, signature=sign(ACME_SECRET, reserialized))
    assert refused.status_code == 403
    accepted = gateway.post_webhook(raw)
    assert accepted.status_code == 200
    (event,) = dialogue.events()
    assert event.message.text.startswith("café crème 😀 <b> 100% @home https://")


def test_one_apps_secret_never_vouches_for_another_apps_page(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    globex_body = message_body("m_globex", page="222")
    assert gateway.post_webhook(globex_body, secret=ACME_SECRET).status_code == 403
    assert gateway.post_webhook(globex_body, secret=GLOBEX_SECRET).status_code == 200
    mixed = json.dumps(
        {
            "object": "page",
            "entry": [
                json.loads(message_body("m_mix_1", page="111"))["entry"][0],
                json.loads(message_body("m_mix_2", page="222"))["entry"][0],
            ],
        }
    ).encode()
    assert gateway.post_webhook(mixed, secret=ACME_SECRET).status_code == 403
    assert gateway.post_webhook(mixed, secret=GLOBEX_SECRET).status_code == 403
    assert [(e.event_id, e.user.tenant_id) for e in dialogue.events()] == [("m_globex", "globex")]


def test_pages_of_one_app_share_its_secret(gateway: Gateway, dialogue: DialogueServer) -> None:
    response = gateway.post_webhook(payload("multiple_entries.json"), secret=ACME_SECRET)
    assert response.status_code == 200
    assert {e.user.tenant_id for e in dialogue.events()} == {"acme", "initech"}


# ---- bodies -------------------------------------------------------------------


def test_malformed_json_that_is_signed_is_400_with_a_reason(gateway: Gateway) -> None:
    response = gateway.post_webhook(b'{"object": "page", "entry": [')
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["message"]


def test_malformed_json_that_is_unsigned_is_403(gateway: Gateway) -> None:
    assert gateway.post_webhook(b"{nope", signature=sign("guess", b"{nope")).status_code == 403


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"[]", 400),
        (b'"page"', 400),
        (b'{"entry": []}', 400),
        (b'{"object": "page"}', 400),
        (b'{"object": "page", "entry": {}}', 400),
        (b'{"object": "page", "entry": [NaN]}', 400),
        (b"\xff\xfe{}", 400),
        (b"", 400),
        (b'{"object": "page", "entry": []}', 200),
        (b'{"object": "page", "entry": [1, "x", null, {"id": "111", "messaging": "no"}]}', 200),
    ],
)
def test_odd_shapes_are_answered_without_queueing(
    gateway: Gateway, dialogue: DialogueServer, body: bytes, status: int
) -> None:
    response = gateway.post_webhook(body)
    assert response.status_code == status, response.text
    assert dialogue.events() == []


def test_other_objects_are_acknowledged_and_ignored(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    body = json.dumps({"object": "instagram", "entry": [{"id": "111", "messaging": []}]}).encode()
    response = gateway.post_webhook(body)
    assert response.status_code == 200
    assert "ignored" in response.json()
    assert dialogue.events() == []


def test_a_declared_oversized_body_is_413_before_it_is_sent(gateway: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as conn:
        conn.sendall(
            b"POST /webhooks/messenger HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\n"
            b"Content-Length: 5000000\r\n\r\n"
        )
        assert conn.recv(4096).startswith(b"HTTP/1.1 413")


def test_a_chunked_body_is_refused_while_it_is_read(gateway: Gateway) -> None:
    # 1.1 MiB sent, then the client goes quiet without ending the body: a
    # gateway that read everything before judging would wait forever.
    chunk = b"x" * 65536
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as conn:
        conn.sendall(
            b"POST /webhooks/messenger HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"X-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\n\r\n"
        )
        for _ in range(18):
            conn.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        started = time.monotonic()
        assert conn.recv(4096).startswith(b"HTTP/1.1 413")
        assert time.monotonic() - started < 3


def test_a_body_just_under_the_limit_is_read(gateway: Gateway) -> None:
    filler = "x" * (1024 * 1024 - 200)
    body = json.dumps({"object": "page", "entry": [], "pad": filler}).encode()
    assert len(body) < 1024 * 1024
    assert gateway.post_webhook(body).status_code == 200


# ---- the dialogue service's answers ---------------------------------------------


def test_duplicates_are_acknowledged_and_counted(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    before = gateway.metric("gateway_events_duplicate_total", channel="messenger")
    body = payload("messenger_md_example.json")
    first = gateway.post_webhook(body)
    again = gateway.post_webhook(body)
    assert first.status_code == again.status_code == 200
    assert first.json()["duplicates"] == 0
    assert again.json()["duplicates"] == 3
    assert gateway.metric("gateway_events_duplicate_total", channel="messenger") == before + 3


def test_unavailable_dialogue_is_503_with_retry_after(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    dialogue.set_mode("unavailable")
    response = gateway.post_webhook(message_body("m_while_down"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    dialogue.set_mode("ok")
    retried = gateway.post_webhook(message_body("m_while_down"))
    assert retried.status_code == 200
    assert retried.json()["accepted"] == 1


def test_a_stalled_dialogue_is_503_within_the_deadline(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    dialogue.set_mode("stall:5")
    started = time.monotonic()
    response = gateway.post_webhook(message_body("m_stalled"))
    elapsed = time.monotonic() - started
    dialogue.set_mode("ok")
    assert response.status_code == 503
    assert elapsed < 2.5  # GATEWAY_SUBMIT_TIMEOUT=1 here
    assert "retry-after" in response.headers


def test_the_request_id_travels_to_the_dialogue_service(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    response = gateway.post_webhook(message_body("m_rid"), headers={"X-Request-Id": "req-7f3a"})
    assert response.headers["x-request-id"] == "req-7f3a"
    (call,) = dialogue.calls()
    assert call.request_id == "req-7f3a"
    generated = gateway.post_webhook(message_body("m_rid_2"))
    assert len(generated.headers["x-request-id"]) == 32
    assert dialogue.calls()[-1].request_id == generated.headers["x-request-id"]


def test_metrics_count_events_by_kind_and_acks(gateway: Gateway, dialogue: DialogueServer) -> None:
    before = gateway.metric("gateway_events_total", channel="messenger", kind="echo")
    acks = gateway.metric("gateway_messenger_ack_seconds_count", status="200")
    assert gateway.post_webhook(payload("echo.json")).status_code == 200
    assert gateway.metric("gateway_events_total", channel="messenger", kind="echo") == before + 2
    assert gateway.metric("gateway_messenger_ack_seconds_count", status="200") == acks + 1
    assert (
        gateway.metric(
            "gateway_http_requests_total", route="/webhooks/messenger", method="POST", status="200"
        )
        >= 1
    )


def test_logs_hold_no_secrets_and_no_message_text(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    secret_text = "my secret word is platypus-quokka"
    assert gateway.post_webhook(message_body("m_private", text=secret_text)).status_code == 200
    gateway.post_webhook(message_body("m_private_2", text=secret_text), secret=GLOBEX_SECRET)
    logs = gateway.logs()
    for needle in (secret_text, "platypus", ACME_SECRET, GLOBEX_SECRET, ACME_VERIFY):
        assert needle not in logs
