"""Customers by name and picture: Meta's User Profile API through a real stand-in,
the cache in real Redis, erasure from the console and the CLI, and logs without names."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from harness.standins import GraphApi
from services.gateway.admin.profiles import cache_key
from tests.admin.conftest import PREFIX, ClientFactory, run, signed_in
from tests.admin.stack import ACME_SECRET, Stack, wait_for

PICTURE = "https://scontent.example.invalid/v/t1.30497-1/{}.jpg?stp=dst-jpg"


@pytest.fixture(scope="module")
def graph() -> Iterator[GraphApi]:
    """The Graph API, answering for acme's page only (its token, with its app's proof)."""
    api = GraphApi().start()
    api.app_secret = ACME_SECRET
    api.page_tokens = {"acme-page-token"}
    yield api
    api.stop()


def _calls(graph: GraphApi, psid: str) -> int:
    with graph.lock:
        return graph.people_calls.count(psid)


def _console(make_client: ClientFactory, graph: GraphApi, **changes: Any) -> TestClient:
    settings: dict[str, Any] = {
        "graph_api_url": f"{graph.url}/v21.0",
        "profile_wait_seconds": 10.0,
        "profile_refused_ttl_seconds": 600,
        **changes,
    }
    return make_client(**settings)


def _person(graph: GraphApi) -> tuple[str, str, str]:
    """A new customer the page may know: (psid, first name, last name)."""
    psid = f"psid-{uuid.uuid4().hex[:10]}"
    first, last = "Ada", f"Lovelace{uuid.uuid4().hex[:6]}"
    graph.people[psid] = {
        "first_name": first,
        "last_name": last,
        "profile_pic": PICTURE.format(psid),
    }
    return psid, first, last


def _ttl(stack: Stack, psid: str) -> int:
    async def read(redis: Any) -> int:
        return int(await redis.ttl(cache_key(PREFIX, "acme", psid)))

    return int(run(read, stack.redis_url))


def _listing(client: TestClient, psid: str) -> str:
    page = client.get("/admin/t/acme/conversations", params={"user": psid})
    assert page.status_code == 200
    return page.text


def test_list_transcript_and_api_show_the_name_and_picture_once_fetched(
    make_client: ClientFactory, stack: Stack, graph: GraphApi
) -> None:
    psid, first, last = _person(graph)
    conversation = stack.talk("acme", psid)
    client = _console(make_client, graph)
    signed_in(client, "vic")

    page = client.get("/admin/t/acme/conversations", params={"user": psid})
    assert page.status_code == 200
    assert f'<span class="customer-name">{first} {last}</span>' in page.text
    assert f'<span class="user-id">{psid}</span>' in page.text  # the id stays for support
    picture = PICTURE.format(psid).replace("&", "&amp;")
    assert f'src="{picture}"' in page.text and 'referrerpolicy="no-referrer"' in page.text
    assert "https:" in page.headers["content-security-policy"].split("img-src", 1)[1]
    assert _calls(graph, psid) == 1
    assert 86400 - 60 < _ttl(stack, psid) <= 86400

    transcript = client.get("/admin/t/acme/conversation", params={"id": conversation})
    assert transcript.status_code == 200
    assert f"<title>{first} {last} · acme" in transcript.text
    assert f'<span class="customer-name">{first} {last}</span>' in transcript.text
    assert f'title="{psid}"' in transcript.text and f'src="{picture}"' in transcript.text

    listed = client.get("/api/admin/tenants/acme/conversations", params={"user": psid})
    assert listed.status_code == 200
    (item,) = listed.json()["conversations"]
    assert item["user"]["user_id"] == psid
    assert item["customer"] == {
        "name": f"{first} {last}",
        "first_name": first,
        "last_name": last,
        "picture": PICTURE.format(psid),
    }

    # Another console (another gateway replica) reads the same cache.
    other = _console(make_client, graph)
    signed_in(other, "ann")
    assert f"{first} {last}" in _listing(other, psid)
    assert _calls(graph, psid) == 1
    assert graph.refusals == []  # every call had the token in its header, and the proof


def test_a_refused_lookup_shows_the_id_and_is_remembered_for_a_shorter_time(
    make_client: ClientFactory, stack: Stack, graph: GraphApi
) -> None:
    unknown = f"psid-{uuid.uuid4().hex[:10]}"  # not among the page's graph: 100/2018218
    forbidden = f"psid-{uuid.uuid4().hex[:10]}"
    graph.people_failures[forbidden] = (
        403,
        {"error": {"message": "(#200) Requires pages_messaging permission", "code": 200}},
    )
    flaky = f"psid-{uuid.uuid4().hex[:10]}"
    graph.people_failures[flaky] = (500, {"error": {"message": "An unexpected error", "code": 2}})
    for psid in (unknown, forbidden, flaky):
        stack.talk("acme", psid)
    client = _console(make_client, graph)
    signed_in(client, "vic")

    for psid in (unknown, forbidden, flaky):
        text = _listing(client, psid)
        assert f'<span class="user-id">{psid}</span>' in text
        assert 'class="customer"' not in text
    for psid in (unknown, forbidden):
        assert 0 < _ttl(stack, psid) <= 600
        _listing(client, psid)
        assert _calls(graph, psid) == 1  # the refusal came from the cache
    assert _ttl(stack, flaky) == -2  # a temporary failure is not remembered
    _listing(client, flaky)
    assert _calls(graph, flaky) == 2
    listed = client.get("/api/admin/tenants/acme/conversations", params={"user": unknown})
    assert "customer" not in listed.json()["conversations"][0]


def test_a_slow_lookup_does_not_hold_the_page_and_fills_the_cache_later(
    make_client: ClientFactory, stack: Stack, graph: GraphApi
) -> None:
    psid, first, last = _person(graph)
    stack.talk("acme", psid)
    client = _console(make_client, graph, profile_wait_seconds=0.1, profile_fetch_timeout=30.0)
    signed_in(client, "vic")
    graph.answer_delay_s = 2.0
    try:
        first_view = _listing(client, psid)
        assert f'<span class="user-id">{psid}</span>' in first_view
        assert f"{first} {last}" not in first_view  # the page did not wait for Meta
        wait_for(lambda: f"{first} {last}" in _listing(client, psid), what="the name, later")
    finally:
        graph.answer_delay_s = 0.0
    assert _calls(graph, psid) == 1  # views meanwhile joined the lookup under way


def test_erasing_a_customer_deletes_the_cached_profile(
    make_client: ClientFactory, stack: Stack, graph: GraphApi
) -> None:
    psid, first, last = _person(graph)
    stack.talk("acme", psid)
    client = _console(make_client, graph)
    csrf = signed_in(client, "ann")
    assert f"{first} {last}" in _listing(client, psid)
    assert _ttl(stack, psid) > 0
    form = {"csrf_token": csrf, "user_id": psid, "channel": "messenger", "confirm": psid}
    assert client.post("/admin/t/acme/data/erase", data=form).status_code == 303
    assert _ttl(stack, psid) == -2

    # The CLI's erase-user does the same.
    from cli.main import app

    other, first, last = _person(graph)
    stack.talk("acme", other)
    assert f"{first} {last}" in _listing(client, other)
    assert _ttl(stack, other) > 0
    erased = CliRunner().invoke(
        app,
        [
            "erase-user", other, "--tenant", "acme", "--yes",
            "--address", stack.chatlog_address,
            "--redis-url", stack.redis_url, "--prefix", PREFIX,
        ],
    )  # fmt: skip
    assert erased.exit_code == 0, erased.output
    assert "cached name and picture erased" in erased.output
    assert _ttl(stack, other) == -2


def test_no_log_line_carries_a_name_or_the_page_token(
    make_client: ClientFactory,
    stack: Stack,
    graph: GraphApi,
    caplog: pytest.LogCaptureFixture,
) -> None:
    psid, first, last = _person(graph)
    refused = f"psid-{uuid.uuid4().hex[:10]}"
    stack.talk("acme", psid)
    stack.talk("acme", refused)
    with caplog.at_level(logging.DEBUG):
        client = _console(make_client, graph)
        csrf = signed_in(client, "ann")
        assert f"{first} {last}" in _listing(client, psid)
        _listing(client, refused)
        client.get("/api/admin/tenants/acme/conversations", params={"user": psid})
        form = {"csrf_token": csrf, "user_id": psid, "channel": "messenger", "confirm": psid}
        assert client.post("/admin/t/acme/data/erase", data=form).status_code == 303
    lines = [f"{r.getMessage()} {r.__dict__}" for r in caplog.records]
    assert any("customer profile refused" in line for line in lines)  # logging was on
    for line in lines:
        assert last not in line and PICTURE.format(psid) not in line
        assert "acme-page-token" not in line


def test_erase_user_says_what_became_of_the_cached_profile(stack: Stack) -> None:
    from cli.main import app

    psid = f"psid-{uuid.uuid4().hex[:10]}"
    stack.talk("acme", psid)
    base = ["erase-user", psid, "--tenant", "acme", "--yes", "--address", stack.chatlog_address]
    unreachable = CliRunner().invoke(
        app, [*base, "--redis-url", "redis://:hunter2@127.0.0.1:1/0", "--prefix", PREFIX]
    )
    assert unreachable.exit_code == 1
    assert "the cached name and picture are not erased" in unreachable.output
    assert "hunter2" not in unreachable.output
    nothing = CliRunner().invoke(app, [*base, "--redis-url", stack.redis_url, "--prefix", PREFIX])
    assert nothing.exit_code == 0 and "no cached name and picture" in nothing.output
    other_channel = CliRunner().invoke(
        app, [*base, "--channel", "api", "--redis-url", "redis://127.0.0.1:1/0"]
    )
    assert other_channel.exit_code == 0  # only Messenger customers have a cached profile


def test_settings_ask_meta_unless_told_not_to() -> None:
    from mesh import ConfigError, Env
    from mesh.graph import DEFAULT_GRAPH_API_URL
    from services.gateway.admin.settings import AdminSettings

    assert AdminSettings.from_env(Env({})).graph_api_url == DEFAULT_GRAPH_API_URL
    assert AdminSettings.from_env(Env({"ADMIN_PROFILES": "false"})).graph_api_url == ""
    tuned = AdminSettings.from_env(
        Env(
            {
                "MESSENGER_GRAPH_API_URL": "http://127.0.0.1:9/v21.0",
                "ADMIN_PROFILE_TTL_SECONDS": "7200",
                "ADMIN_PROFILE_WAIT_SECONDS": "0.25",
            }
        )
    )
    assert (tuned.graph_api_url, tuned.profile_ttl_seconds, tuned.profile_wait_seconds) == (
        "http://127.0.0.1:9/v21.0",
        7200,
        0.25,
    )
    with pytest.raises(ConfigError):
        AdminSettings.from_env(Env({"ADMIN_PROFILE_WAIT_SECONDS": "0"}))
