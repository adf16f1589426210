"""The console over real services: events go through the real dialogue service
(keyword NLU, Graph API stand-in) into the real SQLite chatlog, and the pages and
the API show and act on them."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterator

import pytest
import yaml
from chatbot.common.v1 import event_pb2
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from services.gateway.admin import API_PREFIX
from tests.admin.conftest import signed_in
from tests.admin.stack import Stack, event, wait_for


def _user() -> str:
    return f"psid-{uuid.uuid4().hex[:10]}"


def _conversation(user_id: str) -> str:
    return f"1:{user_id}"  # the dialogue service's conversation id: channel:user


def _played(stack: Stack, user_id: str, count: int) -> None:
    wait_for(
        lambda: len(stack.transcript("acme", _conversation(user_id))) >= count,
        what=f"{count} messages of {user_id} in the chatlog",
    )


def _read_receipt(user_id: str) -> event_pb2.ChatEvent:
    """Messenger's read receipt: everything sent until a second from now was read."""
    read = event_pb2.ChatEvent(
        event_id=f"read:{user_id}",
        user=event_pb2.UserRef(
            tenant_id="acme", channel=event_pb2.CHANNEL_MESSENGER, user_id=user_id
        ),
        read=event_pb2.Read(),
    )
    read.read.watermark_time.FromMilliseconds(int(time.time() * 1000) + 1000)
    return read


@pytest.fixture
def talk(stack: Stack) -> Iterator[str]:
    """A user who said hello, sent a picture and asked something the bot does not know."""
    user_id = _user()
    stack.submit(
        event("acme", user_id, f"m-{user_id}-1", "hello there, see https://example.com/a?b=1"),
        event("acme", user_id, f"m-{user_id}-2", image=stack.images.url),
        event("acme", user_id, f"m-{user_id}-3", "zebra crossing <script>alert(1)</script>"),
    )
    _played(stack, user_id, 6)  # three inbound, three replies
    yield user_id


def test_conversations_list_the_latest_first_with_filters(client: TestClient, talk: str) -> None:
    signed_in(client, "vic")
    page = client.get("/admin/t/acme/conversations")
    assert page.status_code == 200
    assert talk in page.text
    api = client.get("/api/admin/tenants/acme/conversations").json()
    first = api["conversations"][0]
    assert first["user"]["user_id"] == talk  # the latest activity first
    assert first["has_fallback"] is True
    assert int(first["message_count"]) == 6

    def listed(**query: str) -> list[str]:
        found = client.get("/api/admin/tenants/acme/conversations", params=query).json()
        return [c["user"]["user_id"] for c in found.get("conversations", [])]

    assert talk in listed(intent="greet")
    assert talk not in listed(intent="weather")
    assert talk in listed(fallback="true")
    assert talk in listed(user=talk) and listed(user=talk) == [talk]
    assert talk in listed(channel="messenger")
    assert talk not in listed(channel="api")
    assert talk in listed(handed_off="false")
    assert talk not in listed(handed_off="true")
    today = dt.datetime.now(dt.timezone.utc).date()
    assert talk in listed(start=today.isoformat(), end=today.isoformat())
    assert talk not in listed(end=(today - dt.timedelta(days=2)).isoformat())
    assert "Fallback only" in page.text and 'for="f-fallback"' in page.text


def test_conversations_page_in_pages(client: TestClient, stack: Stack) -> None:
    signed_in(client, "vic")
    users = [_user() for _ in range(3)]
    for user_id in users:
        stack.submit(event("acme", user_id, f"m-{user_id}", "thanks"))
    for user_id in users:
        _played(stack, user_id, 2)
    first = client.get("/api/admin/tenants/acme/conversations", params={"page_size": 2}).json()
    assert len(first["conversations"]) == 2 and first["next_page_token"]
    page = client.get(
        "/admin/t/acme/conversations", params={"page_token": first["next_page_token"]}
    )
    assert page.status_code == 200 and "First page" in page.text
    bad = client.get("/api/admin/tenants/acme/conversations", params={"page_token": "forged"})
    assert bad.status_code == 400


def test_search_finds_messages_by_text(client: TestClient, talk: str) -> None:
    signed_in(client, "vic")
    page = client.get("/admin/t/acme/conversations", params={"q": "zebra"})
    assert page.status_code == 200
    assert talk in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>alert" not in page.text
    found = client.get("/api/admin/tenants/acme/search", params={"q": "zebra crossing"}).json()
    assert {m["user"]["user_id"] for m in found["messages"]} >= {talk}
    assert client.get("/api/admin/tenants/acme/search").status_code == 400


def test_transcript_shows_bubbles_with_their_understanding(
    client: TestClient, stack: Stack, talk: str
) -> None:
    signed_in(client, "vic")
    page = client.get("/admin/t/acme/conversation", params={"id": _conversation(talk)})
    assert page.status_code == 200
    html = page.text
    assert f'<img src="{stack.images.url}"' in html and 'alt="Image sent by the user"' in html
    assert '<span class="intent">greet</span> (95%)' in html
    assert "keyword-1" in html  # the model version
    assert "Answered by" in html and f'href="#msg-m-{talk}-1:r0"' in html
    assert 'href="https://example.com/a?b=1" rel="noopener noreferrer nofollow"' in html
    assert "Quick reply" in html and "/order_status" in html  # the greeting's offers
    assert "&lt;script&gt;" in html and "<script>alert" not in html
    assert '<span class="badge warn">Fallback</span>' in html
    assert "Processing" in html
    assert "data-live=" in html
    assert "Take over" not in html  # a viewer
    missing = client.get("/admin/t/acme/conversation", params={"id": "1:nobody-at-all"})
    assert missing.status_code == 404


def test_api_transcript_in_both_orders(client: TestClient, talk: str) -> None:
    signed_in(client, "vic")
    oldest = client.get(
        "/api/admin/tenants/acme/messages", params={"conversation_id": _conversation(talk)}
    ).json()["messages"]
    newest = client.get(
        "/api/admin/tenants/acme/messages",
        params={"conversation_id": _conversation(talk), "order": "newest_first"},
    ).json()["messages"]
    assert [m["message_id"] for m in oldest] == [m["message_id"] for m in reversed(newest)]
    assert oldest[0]["intent"]["name"] == "greet"
    assert oldest[0]["direction"] == "DIRECTION_INBOUND"


def test_live_updates_stream_new_messages(client: TestClient, stack: Stack, talk: str) -> None:
    signed_in(client, "vic")
    conversation = _conversation(talk)
    latest = client.get(
        "/api/admin/tenants/acme/messages",
        params={"conversation_id": conversation, "order": "newest_first", "page_size": 1},
    ).json()
    token = latest["previous_page_token"]
    stack.submit(event("acme", talk, f"m-{talk}-late", "bye now"))
    _played(stack, talk, 8)
    events: list[tuple[str, str, dict[str, object]]] = []
    with client.stream(
        "GET",
        "/api/admin/tenants/acme/live",
        params={"conversation_id": conversation, "page_token": token, "max_seconds": "1"},
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind, event_id = "", ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                events.append((kind, event_id, json.loads(line[6:])))
                event_id = ""
    messages = [data for kind, _, data in events if kind == "message"]
    assert [m["id"] for m in messages] == [f"m-{talk}-late", f"m-{talk}-late:r0"]
    assert "bye now" in str(messages[0]["html"])
    assert [e[1] for e in events if e[0] == "message"][-1]  # the batch's resume token
    states = [data for kind, _, data in events if kind == "state"]
    assert states == [{"handed_off": False, "agent_id": ""}]


def test_live_refuses_a_forged_token(client: TestClient, talk: str) -> None:
    signed_in(client, "vic")
    answer = client.get(
        "/api/admin/tenants/acme/live",
        params={"conversation_id": _conversation(talk), "page_token": "forged", "max_seconds": 1},
    )
    assert answer.status_code == 400


def test_handoff_and_agent_reply_reach_the_user(
    client: TestClient, stack: Stack, talk: str
) -> None:
    csrf = signed_in(client, "ann")
    conversation = _conversation(talk)
    page = client.get("/admin/t/acme/conversation", params={"id": conversation})
    assert "Take over" in page.text
    reply_without_handoff = client.post(
        "/api/admin/tenants/acme/agent-messages",
        json={"channel": "messenger", "user_id": talk, "text": "too early"},
        headers={"X-CSRF-Token": csrf},
    )
    assert reply_without_handoff.status_code == 409
    taken = client.post(
        "/admin/t/acme/handoff",
        data={
            "csrf_token": csrf,
            "channel": "messenger",
            "user_id": talk,
            "conversation_id": conversation,
            "handed_off": "true",
            "reason": "a complaint",
        },
    )
    assert taken.status_code == 303 and "done=taken" in taken.headers["location"]
    state = client.get(
        "/api/admin/tenants/acme/state", params={"channel": "messenger", "user_id": talk}
    ).json()
    assert state["handed_off"] is True and state["handoff_agent_id"] == "ann"
    # The bot stays silent now; the user's message is kept.
    sent_before = len(stack.graph.sent)
    stack.submit(event("acme", talk, f"m-{talk}-4", "is anyone there?"))
    _played(stack, talk, 8)  # 6, the hand-off note and the new message
    sent = client.post(
        "/admin/t/acme/reply",
        data={
            "csrf_token": csrf,
            "channel": "messenger",
            "user_id": talk,
            "conversation_id": conversation,
            "text": "Hello, Ann here: how can I help?",
            "request_id": "req-1",
        },
    )
    assert sent.status_code == 303 and "done=sent" in sent.headers["location"]
    delivered = [m for m in stack.graph.sent if m.recipient == talk]
    assert [m.text for m in delivered][-1] == "Hello, Ann here: how can I help?"
    assert len(stack.graph.sent) == sent_before + 1  # no bot reply to "is anyone there?"
    again = client.post(  # the same request id: sent once
        "/api/admin/tenants/acme/agent-messages",
        json={"channel": "messenger", "user_id": talk, "text": "x", "request_id": "req-1"},
        headers={"X-CSRF-Token": csrf},
    )
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert len(stack.graph.sent) == sent_before + 1
    html = client.get(
        "/admin/t/acme/conversation", params={"id": conversation, "done": "sent"}
    ).text
    assert "Your message was sent." in html
    assert "Agent ann" in html and "Hello, Ann here" in html
    assert "handed off to a person by ann: a complaint" in html
    released = client.post(
        "/api/admin/tenants/acme/handoff",
        json={"channel": "messenger", "user_id": talk, "handed_off": False},
        headers={"X-CSRF-Token": csrf},
    )
    assert released.status_code == 200 and released.json().get("handed_off") is not True
    stack.submit(event("acme", talk, f"m-{talk}-5", "thanks"))
    wait_for(
        lambda: any(m.in_reply_to == f"m-{talk}-5" for m in stack.graph.sent),
        what="the bot answering again",
    )


def test_handoffs_page_lists_handed_off_conversations(
    client: TestClient, stack: Stack, talk: str
) -> None:
    csrf = signed_in(client, "root")
    client.post(
        "/api/admin/tenants/acme/handoff",
        json={"channel": "messenger", "user_id": talk, "handed_off": True},
        headers={"X-CSRF-Token": csrf},
    )
    stack.submit(event("acme", talk, f"m-{talk}-h", "help me please"))
    wait_for(
        lambda: any(
            m.message_id == f"m-{talk}-h" and m.handed_off
            for m in stack.transcript("acme", _conversation(talk))
        ),
        what="the message stored as handed off",
    )
    page = client.get("/admin/t/acme/handoffs")
    assert page.status_code == 200 and talk in page.text


def test_stats_page_draws_charts(client: TestClient, talk: str) -> None:
    signed_in(client, "vic")
    page = client.get("/admin/t/acme/stats")
    assert page.status_code == 200
    for chart in ("chart-messages", "chart-latency", "chart-fallback", "chart-intents"):
        assert f'id="{chart}"' in page.text
    assert 'role="img"' in page.text and "greet" in page.text
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    stats = client.get(
        "/api/admin/tenants/acme/stats", params={"start": today, "end": today}
    ).json()
    assert int(stats["total"]["inbound_message_count"]) >= 3
    assert int(stats["total"]["intent_counts"]["greet"]) >= 1
    assert 0 < stats["total"]["fallback_rate"] < 1
    assert client.get("/api/admin/tenants/acme/stats").status_code == 400
    backwards = client.get("/admin/t/acme/stats", params={"start": today, "end": "2020-01-01"})
    assert backwards.status_code == 400


def test_dead_letters_are_listed_and_replayed(client: TestClient, stack: Stack) -> None:
    user_id = _user()
    stack.graph.rule = lambda body: (
        (500, {"error": {"message": "down", "code": 2}})
        if body["recipient"]["id"] == user_id
        else None
    )
    try:
        stack.submit(event("acme", user_id, f"m-{user_id}-dead", "hello, failing"))
        csrf = signed_in(client, "ann")

        def listed() -> list[dict[str, object]]:
            found = client.get("/api/admin/tenants/acme/dead-letters").json()
            dead = found.get("dead_letters", [])
            return [d for d in dead if d["event"]["event_id"].endswith(user_id + "-dead")]

        dead = wait_for(listed, what="a dead letter")[0]
        page = client.get("/admin/t/acme/dead-letters")
        assert "hello, failing" in page.text and ">Replay</button>" in page.text
    finally:
        stack.graph.rule = None
    replayed = client.post(
        "/admin/t/acme/dead-letters/replay",
        data={"csrf_token": csrf, "dead_letter_id": str(dead["dead_letter_id"])},
    )
    assert replayed.status_code == 303 and "done=replayed" in replayed.headers["location"]
    wait_for(
        lambda: any(m.in_reply_to == f"m-{user_id}-dead" for m in stack.graph.sent),
        what="the replayed event answered",
    )
    assert not listed()
    again = client.post(
        f"/api/admin/tenants/acme/dead-letters/{dead['dead_letter_id']}/replay",
        headers={"X-CSRF-Token": csrf},
    )
    assert again.status_code == 404


def test_training_data_downloads_as_rasa_yaml(client: TestClient, talk: str) -> None:
    signed_in(client, "vic")
    page = client.get("/admin/t/acme/training-data", params={"intents": "greet"})
    assert page.status_code == 200 and "hello there" in page.text
    download = client.get(
        "/api/admin/tenants/acme/training-data.yml", params={"intents": "greet", "limit": "50"}
    )
    assert download.status_code == 200
    assert download.headers["content-disposition"].startswith('attachment; filename="nlu-acme-')
    data = yaml.safe_load(download.text)
    assert data["version"] == "3.1"
    assert [item["intent"] for item in data["nlu"]] == ["greet"]
    low = client.get(
        "/api/admin/tenants/acme/training-data", params={"max_confidence": "0.5"}
    ).json()
    assert all(e["confidence"] <= 0.5 for e in low["examples"])
    assert any("zebra" in e["text"] for e in low["examples"])
    bad = client.get(
        "/api/admin/tenants/acme/training-data",
        params={"min_confidence": "0.9", "max_confidence": "0.1"},
    )
    assert bad.status_code == 400


def _mounted_operations(app: Starlette) -> set[tuple[str, str]]:
    """(path, method) of every route of the API as the console mounts it."""
    (api,) = [r for r in app.routes if isinstance(r, Mount) and r.path == API_PREFIX]
    return {
        (route.path, method.lower())
        for route in api.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"  # Starlette's own companion of every GET
    }


def test_openapi_documents_every_api_route_and_only_those(client: TestClient) -> None:
    signed_in(client, "vic")
    document = client.get("/api/admin/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert document["servers"] == [{"url": API_PREFIX}]
    documented = {
        (path, method) for path, operations in document["paths"].items() for method in operations
    }
    assert isinstance(client.app, Starlette)
    mounted = _mounted_operations(client.app)
    assert ("/tenants/{tenant}/retention", "post") in mounted
    assert sorted(mounted - documented) == [], "routes the document does not describe"
    assert sorted(documented - mounted) == [], "documented operations no route answers"
    for path, methods in document["paths"].items():
        named = set(re.findall(r"{(\w+)}", path))
        for method, operation in methods.items():
            assert operation["responses"]["200"], (path, method)
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == named, (path, method)


def test_a_service_down_is_a_clear_503(make_client: object, stack: Stack) -> None:
    from harness.support import free_port
    from mesh.tenants import Tenants
    from services.gateway.admin import AdminSettings, GrpcAdminBackends, create_admin_app
    from tests.admin.conftest import SETTINGS

    console = create_admin_app(
        SETTINGS,
        Tenants.from_file(stack.tenants_file),
        GrpcAdminBackends(f"127.0.0.1:{free_port()}", stack.dialogue_address, stack.redis_url),
    )
    assert isinstance(SETTINGS, AdminSettings)
    with TestClient(console.app, follow_redirects=False) as client:
        signed_in(client, "vic")
        page = client.get("/admin/t/acme/conversations")
        assert page.status_code == 503 and "unavailable" in page.text
        assert client.get("/api/admin/tenants/acme/conversations").json()["error"] == (
            "unavailable"
        )


def test_live_updates_redraw_a_reply_when_its_receipt_arrives(
    client: TestClient, stack: Stack
) -> None:
    user_id = _user()
    conversation = stack.talk("acme", user_id)
    signed_in(client, "vic")
    reply = stack.transcript("acme", conversation)[-1]
    updates: list[dict[str, str]] = []
    with client.stream(
        "GET",
        "/api/admin/tenants/acme/live",
        params={"conversation_id": conversation, "max_seconds": "30"},
    ) as stream:
        kind = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "update":
                updates.append(json.loads(line[6:]))
                if len(updates) == 1:  # every recent reply is drawn once as the stream starts
                    stack.submit(_read_receipt(user_id))
                elif ">Read</span>" in updates[-1]["html"]:
                    break
    assert [u["id"] for u in updates] == [reply.message_id, reply.message_id]
    assert ">Sent</span>" in updates[0]["html"] and ">Read</span>" in updates[1]["html"]
    assert updates[1]["html"].lstrip().startswith('<li class="bubble out')


def test_transcript_shows_how_far_each_reply_got_and_who_owns_the_thread(
    client: TestClient, stack: Stack
) -> None:
    user_id = _user()
    conversation = stack.talk("acme", user_id)
    csrf = signed_in(client, "ann")

    def replies() -> list[str]:
        html = client.get("/admin/t/acme/conversation", params={"id": conversation}).text
        return re.findall(r'<span class="badge delivery delivery-\d"[^>]*>(\w+)</span>', html)

    assert replies() == ["Sent"]
    stack.submit(_read_receipt(user_id))
    wait_for(lambda: replies() == ["Read"], what="the read receipt on the reply")

    # Messenger refuses to pass the thread: the bot is silent all the same, and
    # the console says what Messenger answered.
    def refuse(edge: str, body: dict[str, object]) -> tuple[int, dict[str, object]] | None:
        if edge != "pass_thread_control":
            return None
        error = {"message": "(#10) This message is sent outside of allowed window.",
                 "code": 10, "error_subcode": 2018278, "type": "OAuthException"}  # fmt: skip
        return 400, {"error": error}

    stack.graph.thread_rule = refuse
    try:
        taken = client.post(
            "/api/admin/tenants/acme/handoff",
            json={"channel": "messenger", "user_id": user_id, "handed_off": True},
            headers={"X-CSRF-Token": csrf},
        )
        assert taken.status_code == 200
    finally:
        stack.graph.thread_rule = None
    html = client.get("/admin/t/acme/conversation", params={"id": conversation}).text
    assert 'id="thread-error"' in html and "outside of allowed window" in html
    released = client.post(
        "/api/admin/tenants/acme/handoff",
        json={"channel": "messenger", "user_id": user_id, "handed_off": False},
        headers={"X-CSRF-Token": csrf},
    )
    assert released.status_code == 200
    taken = client.post(
        "/api/admin/tenants/acme/handoff",
        json={"channel": "messenger", "user_id": user_id, "handed_off": True},
        headers={"X-CSRF-Token": csrf},
    )
    html = client.get("/admin/t/acme/conversation", params={"id": conversation}).text
    assert 'id="thread-error"' not in html
    assert "On Messenger the conversation is with the Page Inbox" in html
