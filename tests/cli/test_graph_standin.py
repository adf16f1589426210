"""``chatbot messenger-profile`` against the local Graph API stand-in that ``make run`` uses.

The stand-in keeps the page's profile as Meta's Messenger Profile API does, so
an operator can try ``apply``, ``show`` and ``diff`` without a Facebook page.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from cli.graph_standin import GraphStandIn
from cli.main import app
from services.dialogue.domain import DEFAULT_DOMAIN, load_domain

ONLY_GET_STARTED = """
payloads: {GET_STARTED: greet}
responses:
  greet: [{text: "Hi!"}]
  fallback: [{text: "Sorry?"}]
messenger_profile:
  get_started: GET_STARTED
"""


@pytest.fixture
def graph() -> Iterator[GraphStandIn]:
    server = GraphStandIn(port=0).start()
    yield server
    server.stop()


def _url(graph: GraphStandIn) -> str:
    return f"http://127.0.0.1:{graph.port}/v21.0"


def chatbot(graph: GraphStandIn, *args: str, domain: Path = DEFAULT_DOMAIN) -> Result:
    environ: dict[str, str | None] = {
        "TENANTS_FILE": None,
        "TENANT_ID": "default",
        "MESSENGER_PAGE_ACCESS_TOKEN": "local-page-token",
        "MESSENGER_PAGE_ACCESS_TOKEN_FILE": None,
        "MESSENGER_APP_SECRET": "local-app-secret",
        "MESSENGER_APP_SECRET_FILE": None,
        "MESSENGER_GRAPH_API_URL": _url(graph),
        "DOMAIN_FILE": str(domain),
    }
    return CliRunner().invoke(app, ["messenger-profile", *args], env=environ)


def test_apply_then_show_and_diff_agree_with_the_starter_domain(graph: GraphStandIn) -> None:
    profile = load_domain(DEFAULT_DOMAIN).messenger_profile
    assert profile is not None
    desired = profile.graph()

    before = chatbot(graph, "diff")
    assert before.exit_code == 1, before.output
    assert "+ get_started (set)" in before.stdout and "+ persistent_menu (set)" in before.stdout

    applied = chatbot(graph, "apply")
    assert applied.exit_code == 0, applied.output
    assert "default: get_started set" in applied.stdout
    assert graph.profile == desired

    shown = chatbot(graph, "show", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == desired
    after = chatbot(graph, "diff")
    assert after.exit_code == 0 and "the page matches" in after.stdout
    again = chatbot(graph, "apply")
    assert again.exit_code == 0 and "already matches" in again.stdout


def test_apply_removes_what_the_domain_file_leaves_out(graph: GraphStandIn, tmp_path: Path) -> None:
    assert chatbot(graph, "apply").exit_code == 0
    smaller = tmp_path / "domain.yml"
    smaller.write_text(ONLY_GET_STARTED, encoding="utf-8")

    applied = chatbot(graph, "apply", domain=smaller)
    assert applied.exit_code == 0, applied.output
    assert "default: greeting removed" in applied.stdout
    assert "default: persistent_menu removed" in applied.stdout
    assert graph.profile == {"get_started": {"payload": "GET_STARTED"}}
    assert chatbot(graph, "diff", domain=smaller).exit_code == 0


@pytest.mark.parametrize(
    ("method", "params", "body", "subcode", "says"),
    [
        ("GET", {}, None, 0, "The parameter fields is required"),
        ("POST", {}, {}, 0, "Requires one of the params"),
        ("POST", {}, {"persistent_menu": []}, 2018145, "must set a Get Started button"),
        ("POST", {}, {"greeting": [{"locale": "default", "text": "x" * 161}]}, 0, "160"),
        ("DELETE", {}, {"fields": []}, 0, "param fields must be non-empty"),
        ("DELETE", {}, {"fields": ["colour"]}, 0, "param fields[0] must be one of"),
    ],
)
def test_the_profile_api_refuses_as_meta_documents(
    graph: GraphStandIn,
    method: str,
    params: dict[str, str],
    body: dict[str, Any] | None,
    subcode: int,
    says: str,
) -> None:
    answer = httpx.request(
        method, f"{_url(graph)}/me/messenger_profile", params=params, json=body, timeout=10
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == 100 and error["type"] == "OAuthException"
    assert error.get("error_subcode", 0) == subcode
    assert says in error["message"]
    assert graph.profile == {}


def test_each_stand_in_keeps_its_own_page(graph: GraphStandIn) -> None:
    other = GraphStandIn(port=0).start()
    try:
        assert chatbot(graph, "apply").exit_code == 0
        assert graph.profile and other.profile == {}
        answer = httpx.get(
            f"{_url(other)}/me/messenger_profile", params={"fields": "get_started"}, timeout=10
        )
        assert answer.status_code == 200 and answer.json() == {"data": []}
        gone = httpx.request("DELETE", f"{_url(other)}/me/messages", json={}, timeout=10)
        assert gone.status_code == 404
    finally:
        other.stop()


def test_the_stand_in_keeps_each_threads_owner_as_meta_does(graph: GraphStandIn) -> None:
    def call(edge: str, **body: Any) -> httpx.Response:
        return httpx.post(f"{_url(graph)}/me/{edge}", json=body, timeout=10)

    def owner(psid: str) -> Any:
        answer = httpx.get(f"{_url(graph)}/me/thread_owner", params={"recipient": psid}, timeout=10)
        return answer.json()["data"]

    inbox = "263902037430900"
    stranger = call("pass_thread_control", recipient={"id": "u1"}, target_app_id="4444")
    assert stranger.status_code == 400 and "not a secondary receiver" in stranger.text
    assert owner("u1") == []
    assert call("pass_thread_control", recipient={"id": "u1"}, target_app_id=inbox).is_success
    assert owner("u1") == [{"thread_owner": {"app_id": inbox}}]
    receivers = httpx.get(f"{_url(graph)}/me/secondary_receivers", timeout=10).json()["data"]
    assert inbox in [r["id"] for r in receivers]
    assert call("take_thread_control", recipient={"id": "u1"}).is_success
    assert owner("u1") == [{"thread_owner": {"app_id": "1111"}}]
    missing = call("take_thread_control")
    assert missing.status_code == 400 and missing.json()["error"]["code"] == 100
    assert graph.thread_owners == {"u1": "1111"}
