"""An agent answering from the console after Messenger's windows: tagged within 7
days of the customer's last message, and past them a refusal that says why, on the
page and in the API, with nothing sent. The customer's last-message time is set in
Redis, where the dialogue service keeps it."""

from __future__ import annotations

import time
import uuid

import httpx2
import redis
from chatbot.common.v1 import event_pb2
from starlette.testclient import TestClient

from services.dialogue.keys import UserId, UserKeys
from tests.admin.conftest import signed_in
from tests.admin.stack import Stack, event, wait_for

DAY_MS = 24 * 3600 * 1000


def test_the_console_tags_late_answers_and_refuses_them_after_7_days(
    client: TestClient, stack: Stack
) -> None:
    user_id = f"psid-{uuid.uuid4().hex[:10]}"
    conversation = f"1:{user_id}"
    stack.submit(event("acme", user_id, f"m-{user_id}-1", "hello"))
    wait_for(lambda: len(stack.transcript("acme", conversation)) >= 2, what="the bot's greeting")
    csrf = signed_in(client, "ann")
    taken = client.post(
        "/api/admin/tenants/acme/handoff",
        json={"channel": "messenger", "user_id": user_id, "handed_off": True},
        headers={"X-CSRF-Token": csrf},
    )
    assert taken.status_code == 200
    store = redis.Redis.from_url(stack.redis_url)
    handoff = UserKeys(UserId("acme", event_pb2.CHANNEL_MESSENGER, user_id)).handoff
    assert store.hget(handoff, "user_ms")  # written when the customer's message was processed

    def reply(text: str, request_id: str) -> httpx2.Response:
        return client.post(
            "/admin/t/acme/reply",
            data={
                "csrf_token": csrf,
                "channel": "messenger",
                "user_id": user_id,
                "conversation_id": conversation,
                "text": text,
                "request_id": request_id,
            },
        )

    store.hset(handoff, "user_ms", str(int(time.time() * 1000) - 2 * DAY_MS))
    late = reply("Sorry for the wait", "late-1")
    assert late.status_code == 303
    [sent] = [
        m for m in stack.graph.sent if m.recipient == user_id and m.text == "Sorry for the wait"
    ]
    assert sent.body["messaging_type"] == "MESSAGE_TAG" and sent.body["tag"] == "HUMAN_AGENT"

    store.hset(handoff, "user_ms", str(int(time.time() * 1000) - 9 * DAY_MS))
    sent_before = len(stack.graph.sent)
    page = reply("Still there?", "late-2")
    assert page.status_code == 409
    assert "9 days ago" in page.text and "within 7 days" in page.text
    api = client.post(
        "/api/admin/tenants/acme/agent-messages",
        json={"channel": "messenger", "user_id": user_id, "text": "Still there?"},
        headers={"X-CSRF-Token": csrf},
    )
    assert api.status_code == 409
    assert api.json()["error"] == "conflict" and "within 7 days" in api.json()["message"]
    assert len(stack.graph.sent) == sent_before
    store.close()
