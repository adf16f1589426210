"""A live transcript ends with its session: after a logout or a password change the
stream says so and stops at its next poll, well before its own time is up."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from services.gateway.admin.users import RedisClient, UserStore
from tests.admin.conftest import PREFIX, ClientFactory, login, run, signed_in
from tests.admin.stack import Stack, event, wait_for

STREAM_SECONDS = "120"  # far longer than the test: only the session can end it


@pytest.fixture
def conversation(stack: Stack) -> Iterator[str]:
    user_id = f"psid-{uuid.uuid4().hex[:10]}"
    stack.submit(event("acme", user_id, f"m-{user_id}-1", "hello there"))
    conversation_id = f"1:{user_id}"
    wait_for(lambda: len(stack.transcript("acme", conversation_id)) >= 2, what="a reply")
    yield conversation_id


def _follow(client: TestClient, conversation_id: str, after_start: Callable[[], Any]) -> list[str]:
    """Opens the live stream, runs ``after_start`` once it is serving, returns the event kinds."""
    kinds: list[str] = []
    with client.stream(
        "GET",
        "/api/admin/tenants/acme/live",
        params={"conversation_id": conversation_id, "max_seconds": STREAM_SECONDS},
    ) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if not line.startswith("event: "):
                continue
            kinds.append(line[7:])
            if kinds[-1] == "state" and kinds.count("state") == 1:
                after_start()  # the first poll went through: the stream is live
    return kinds


def test_a_logout_ends_the_open_stream(
    client: TestClient, make_client: ClientFactory, conversation: str
) -> None:
    csrf = signed_in(client, "vic")
    other_tab = make_client()
    other_tab.cookies.update(client.cookies)

    def logout() -> None:
        assert other_tab.post("/admin/logout", data={"csrf_token": csrf}).status_code == 303

    kinds = _follow(client, conversation, logout)
    assert kinds[-1] == "signed-out", kinds
    again = client.get("/api/admin/tenants/acme/live", params={"conversation_id": conversation})
    assert again.status_code == 401


def test_a_password_change_ends_the_open_stream(
    stack: Stack, make_client: ClientFactory, conversation: str
) -> None:
    async def put(redis: RedisClient, password: str) -> None:
        await UserStore(redis, PREFIX).put(
            "lena", role="viewer", tenants=["acme"], password=password
        )

    run(lambda redis: put(redis, "lena-password-1"), stack.redis_url)
    client = make_client()
    assert login(client, "lena", "lena-password-1").status_code == 303

    kinds = _follow(
        client,
        conversation,
        lambda: run(lambda redis: put(redis, "lena-password-2"), stack.redis_url),
    )
    assert kinds[-1] == "signed-out", kinds
    answer = client.get(
        "/api/admin/tenants/acme/messages", params={"conversation_id": conversation}
    )
    assert answer.status_code == 401
