"""Retention and erasure in the console: admins only, erasure after a confirmation, an
audit line, and nothing of another tenant touched; through the real chatlog."""

from __future__ import annotations

import logging
import uuid

import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from starlette.testclient import TestClient

from tests.admin.conftest import ClientFactory, signed_in
from tests.admin.stack import Stack

DATA = "/admin/t/acme/data"


def _policy_days(stack: Stack, tenant: str) -> int:
    reply = stack.chatlog_stub.GetRetentionPolicy(
        chatlog_pb.GetRetentionPolicyRequest(tenant_id=tenant), timeout=10
    )
    return int(reply.policy.message_ttl.seconds // 86400)


def test_only_signed_in_admins_reach_retention_and_erasure(
    client: TestClient, make_client: ClientFactory
) -> None:
    assert client.get(DATA).status_code == 303
    assert client.get("/api/admin/tenants/acme/retention").status_code == 401
    csrf = signed_in(client, "vic")
    assert "Retention and erasure" not in client.get("/admin/t/acme/conversations").text
    page = client.get(DATA)
    assert page.status_code == 403 and "Not allowed" in page.text
    erase = {"csrf_token": csrf, "user_id": "u-1", "channel": "messenger", "confirm": "u-1"}
    assert client.post(f"{DATA}/erase", data=erase).status_code == 403
    assert (
        client.post(f"{DATA}/retention", data={"csrf_token": csrf, "days": "5"}).status_code == 403
    )
    api = {"X-CSRF-Token": csrf}
    assert client.get("/api/admin/tenants/acme/retention").status_code == 403
    for path, body in [
        ("/api/admin/tenants/acme/retention", {"days": 5}),
        ("/api/admin/tenants/acme/erase", {"user_id": "u-1", "confirm": "u-1"}),
    ]:
        answer = client.post(path, json=body, headers=api)
        assert answer.status_code == 403 and answer.json()["error"] == "forbidden", path
    other = make_client()
    signed_in(other, "gus")  # a viewer of globex: acme does not exist for him
    assert other.get(DATA).status_code == 404
    admin = make_client()
    signed_in(admin, "ann")
    assert "Retention and erasure" in admin.get("/admin/t/acme/conversations").text


def test_retention_is_set_from_the_page(client: TestClient, stack: Stack) -> None:
    csrf = signed_in(client, "ann")
    try:
        saved = client.post(f"{DATA}/retention", data={"csrf_token": csrf, "days": "30"})
        assert saved.status_code == 303 and "done=retention-set" in saved.headers["location"]
        assert _policy_days(stack, "acme") == 30
        page = client.get(DATA)
        assert "Messages are kept 30 days after they are stored" in page.text
        shown = client.get("/api/admin/tenants/acme/retention").json()
        assert shown["message_ttl"] == f"{30 * 86400}s"
        api = {"X-CSRF-Token": csrf}
        for days in ("-1", "1.5", "x", "999999", ""):
            answer = client.post(
                "/api/admin/tenants/acme/retention", json={"days": days}, headers=api
            )
            assert answer.status_code == 400, days
        assert client.post(f"{DATA}/retention", data={"days": "7"}).status_code == 403  # no CSRF
        assert _policy_days(stack, "acme") == 30
    finally:
        kept = client.post(
            "/api/admin/tenants/acme/retention", json={"days": 0}, headers={"X-CSRF-Token": csrf}
        )
        assert kept.status_code == 200, kept.text
    assert _policy_days(stack, "acme") == 0
    assert "Messages are kept until they are deleted" in client.get(DATA).text


def test_erasing_a_customer_asks_first_and_spares_other_tenants(
    client: TestClient, stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    user_id = f"psid-{uuid.uuid4().hex[:10]}"
    mine = stack.talk("acme", user_id)
    theirs = stack.talk("globex", user_id)  # the same id on another tenant's page
    neighbour = stack.talk("acme", f"psid-{uuid.uuid4().hex[:10]}")
    csrf = signed_in(client, "ann")
    form = {"csrf_token": csrf, "user_id": user_id, "channel": "messenger"}

    asked = client.post(f"{DATA}/erase", data=form)
    assert asked.status_code == 200
    assert "Type the customer's id again to confirm" in asked.text
    assert "2 messages" in asked.text  # what will go
    mistyped = client.post(f"{DATA}/erase", data={**form, "confirm": user_id + "x"})
    assert mistyped.status_code == 400 and "nothing was erased" in mistyped.text
    unconfirmed = client.post(
        "/api/admin/tenants/acme/erase",
        json={"user_id": user_id, "channel": "messenger"},
        headers={"X-CSRF-Token": csrf},
    )
    assert unconfirmed.status_code == 400 and "confirm" in unconfirmed.json()["message"]
    assert len(stack.transcript("acme", mine)) >= 2

    with caplog.at_level(logging.INFO, logger="gateway.admin.audit"):
        erased = client.post(f"{DATA}/erase", data={**form, "confirm": user_id})
    assert erased.status_code == 303
    assert "done=erased" in erased.headers["location"]
    assert "messages=2" in erased.headers["location"]
    assert "Erased 2 messages in 1 conversations" in client.get(erased.headers["location"]).text
    assert stack.transcript("acme", mine) == []
    assert len(stack.transcript("globex", theirs)) >= 2
    assert len(stack.transcript("acme", neighbour)) >= 2

    audit = [r for r in caplog.records if r.name == "gateway.admin.audit"]
    assert len(audit) == 1
    line = audit[0].__dict__
    assert (line["action"], line["admin"], line["tenant"]) == ("erase_user", "ann", "acme")
    assert line["messages"] == 2 and line["channel"] == "CHANNEL_MESSENGER"
    assert user_id not in str(line["user"]) and line["user"]
