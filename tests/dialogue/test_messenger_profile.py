"""The page's Messenger profile from the domain file, and ``appsecret_proof`` on Graph calls.

``chatbot messenger-profile apply|show|diff`` runs against the recording Graph
API stand-in (a real HTTP server keeping the page's profile as Meta's API
does); the Send API client and a dialogue replica send through the same
stand-in when it requires the proof.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chatbot.common.v1 import event_pb2
from typer.testing import CliRunner, Result

from cli.messenger_profile import messenger_profile_app
from harness.standins import GraphApi
from harness.support import free_port
from mesh.config import ConfigError
from mesh.graph import appsecret_proof
from mesh.tenants import Tenant
from services.dialogue.channels import MessengerChannel, SendError
from services.dialogue.domain import DEFAULT_DOMAIN, load_domain
from services.dialogue.http import HttpClient
from services.dialogue.messenger_profile import parse_messenger_profile
from tests.dialogue.conftest import Replicas, message_event, submit, wait_for

TOKEN = "EAAGpagetokenPROFILE0123456789"
SECRET = "app-secret-for-profile-tests"
PROOF = hmac.new(SECRET.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()

DOMAIN = """
payloads: {GET_STARTED: greet}
responses:
  greet: [{text: "Hi!"}]
  order_status: [{text: "Which order?"}]
  fallback: [{text: "Sorry?"}]
"""

PROFILE = """
messenger_profile:
  get_started: GET_STARTED
  greeting:
    fr_FR: "Bonjour {{user_first_name}} !"
    default: "Hi {{user_first_name}}! Ask me about an order."
  persistent_menu:
    default:
      - {title: "Order status", payload: /order_status}
      - {title: "Our shop", url: "https://shop.example/", webview_height_ratio: full}
  ice_breakers:
    default:
      - {question: "Where is my order?", payload: /order_status}
"""

# What Meta's API takes for PROFILE (and answers back).
GRAPH: dict[str, Any] = {
    "get_started": {"payload": "GET_STARTED"},
    "greeting": [
        {"locale": "default", "text": "Hi {{user_first_name}}! Ask me about an order."},
        {"locale": "fr_FR", "text": "Bonjour {{user_first_name}} !"},
    ],
    "persistent_menu": [
        {
            "locale": "default",
            "call_to_actions": [
                {"type": "postback", "title": "Order status", "payload": "/order_status"},
                {
                    "type": "web_url",
                    "title": "Our shop",
                    "url": "https://shop.example/",
                    "webview_height_ratio": "full",
                },
            ],
        }
    ],
    "ice_breakers": [
        {
            "locale": "default",
            "call_to_actions": [{"question": "Where is my order?", "payload": "/order_status"}],
        }
    ],
}


@pytest.fixture
def api() -> Iterator[GraphApi]:
    server = GraphApi().start()
    server.app_secret = SECRET
    server.page_tokens = {TOKEN}
    yield server
    server.stop()


def domain_file(tmp_path: Path, profile: str = PROFILE, name: str = "domain.yml") -> Path:
    path = tmp_path / name
    path.write_text(DOMAIN + textwrap.dedent(profile), encoding="utf-8")
    return path


def chatbot(api: GraphApi, domain: Path, *args: str, **env: str | None) -> Result:
    environ: dict[str, str | None] = {
        "TENANTS_FILE": None,
        "TENANT_ID": "default",
        "MESSENGER_PAGE_ACCESS_TOKEN": TOKEN,
        "MESSENGER_PAGE_ACCESS_TOKEN_FILE": None,
        "MESSENGER_APP_SECRET": SECRET,
        "MESSENGER_APP_SECRET_FILE": None,
        "MESSENGER_GRAPH_API_URL": api.url + "/v21.0",
        "DOMAIN_FILE": str(domain),
        **env,
    }
    result = CliRunner().invoke(messenger_profile_app, list(args), env=environ)
    assert TOKEN not in result.output  # never on the screen, whatever happened
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def methods(api: GraphApi) -> list[str]:
    with api.lock:
        return [call["method"] for call in api.profile_calls]


# ---- the domain file's section ------------------------------------------------


def test_the_section_becomes_what_the_api_takes(tmp_path: Path) -> None:
    domain = load_domain(domain_file(tmp_path))
    assert domain.messenger_profile is not None
    assert domain.messenger_profile.graph() == GRAPH
    assert load_domain(domain_file(tmp_path, "")).messenger_profile is None


def _items(count: int) -> list[dict[str, str]]:
    return [{"title": f"Item {n}", "payload": f"/item_{n}"} for n in range(count)]


def _menu(*items: dict[str, Any]) -> dict[str, Any]:
    return {"get_started": "GO", "persistent_menu": {"default": list(items)}}


def _ice(count: int) -> dict[str, Any]:
    return {"ice_breakers": {"default": [{"question": "Q?", "payload": "/q"}] * count}}


@pytest.mark.parametrize(
    ("section", "reason"),
    [
        ({"greeting": {"default": "x" * 161}}, "greeting text is 161 characters; Meta allows 160"),
        ({"greeting": {"fr_FR": "Bonjour"}}, "the 'default' locale is required"),
        ({"greeting": {"French": "Bonjour", "default": "Hi"}}, "'French' is not a locale"),
        ({"get_started": "P" * 1001}, "payload is 1001 characters; Meta allows 1000"),
        ({"get_started": ""}, "payload must be non-empty text"),
        (_menu(*_items(21)), "21 items; Meta allows 20 per locale"),
        ({"persistent_menu": {"default": _items(2)}}, "only with a Get Started button"),
        (_menu({"title": "T" * 31, "payload": "/x"}), "title is 31 characters; Meta allows 30"),
        (
            _menu({"type": "nested", "title": "More", "call_to_actions": []}),
            "nested menus were removed in Graph API v8.0",
        ),
        (_menu({"title": "Shop", "url": "ftp://x"}), "is not an http(s) address"),
        (_menu({"title": "Shop", "paylod": "/x"}), "unknown key 'paylod'"),
        (_menu({"title": "Shop", "url": "https://x.example", "payload": "/x"}), "not a payload"),
        (_ice(5), "5 ice breakers; Meta allows 4"),
        ({"ice_breakers": {"default": [{"question": "Q?"}]}}, "payload must be non-empty text"),
        ({"whitelisted_domains": ["https://shop.example"]}, "unknown key 'whitelisted_domains'"),
    ],
)
def test_a_section_beyond_metas_limits_is_refused_with_the_reason(
    section: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_messenger_profile(section, "domain.yml: messenger_profile")
    assert reason in str(raised.value)
    assert str(raised.value).startswith("domain.yml: messenger_profile")


# ---- apply, show, diff against the stand-in --------------------------------------


def test_apply_sets_exactly_the_fields_then_nothing_more(api: GraphApi, tmp_path: Path) -> None:
    path = domain_file(tmp_path)
    api.profile["whitelisted_domains"] = ["https://shop.example/"]  # not ours to touch
    applied = chatbot(api, path, "apply")
    assert applied.exit_code == 0, applied.output
    for field in ("get_started", "greeting", "persistent_menu", "ice_breakers"):
        assert f"default: {field} set" in applied.output
    assert methods(api) == ["GET", "POST"]
    assert api.profile_calls[1]["body"] == GRAPH
    assert api.profile == {**GRAPH, "whitelisted_domains": ["https://shop.example/"]}
    # Every call carried the page token in its header and the proof in its query.
    assert all(call["query"]["appsecret_proof"] == [PROOF] for call in api.profile_calls)
    assert "access_token" not in api.profile_calls[0]["query"]
    assert api.refusals == []

    again = chatbot(api, path, "apply")
    assert again.exit_code == 0 and "already matches" in again.output
    assert methods(api) == ["GET", "POST", "GET"]  # read, nothing written
    same = chatbot(api, path, "diff")
    assert same.exit_code == 0 and "the page matches" in same.output


def test_show_prints_what_the_page_has(api: GraphApi, tmp_path: Path) -> None:
    path = domain_file(tmp_path)
    empty = chatbot(api, path, "show")
    assert empty.exit_code == 0 and "has no Get Started button" in empty.output
    api.profile.update(json.loads(json.dumps(GRAPH)))
    shown = chatbot(api, path, "show")
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.stdout) == GRAPH
    as_json = chatbot(api, path, "show", "--json")
    assert json.loads(as_json.stdout) == GRAPH


def test_diff_reports_each_change_and_apply_makes_them(api: GraphApi, tmp_path: Path) -> None:
    api.profile.update(json.loads(json.dumps(GRAPH)))
    # The file drops the ice breakers and the French greeting, and renames a menu item.
    changed = PROFILE.replace('    fr_FR: "Bonjour {{user_first_name}} !"\n', "")
    changed = changed.replace("Order status", "My orders").split("  ice_breakers:")[0]
    path = domain_file(tmp_path, changed)
    found = chatbot(api, path, "diff")
    assert found.exit_code == 1, found.output
    lines = found.stdout.splitlines()
    assert "~ greeting (change)" in lines and "~ persistent_menu (change)" in lines
    assert "- ice_breakers (remove)" in lines and not any("get_started" in x for x in lines)
    at = lines.index("~ greeting (change)")
    assert lines[at + 3 :][:5] == [
        "    @@ -1,4 +1,2 @@",
        "     - locale: default",
        "       text: Hi {{user_first_name}}! Ask me about an order.",
        "    -- locale: fr_FR",
        "    -  text: Bonjour {{user_first_name}} !",
    ]
    assert "    -    title: Order status" in lines and "    +    title: My orders" in lines
    assert "    -  - question: Where is my order?" in lines
    assert methods(api) == ["GET"]  # diff only reads

    applied = chatbot(api, path, "apply")
    assert applied.exit_code == 0, applied.output
    assert "default: ice_breakers removed" in applied.output
    assert methods(api) == ["GET", "GET", "POST", "DELETE"]
    assert set(api.profile_calls[2]["body"]) == {"greeting", "persistent_menu"}
    assert api.profile_calls[3]["body"] == {"fields": ["ice_breakers"]}
    assert "ice_breakers" not in api.profile and api.profile["get_started"] == GRAPH["get_started"]
    assert api.profile["greeting"] == [GRAPH["greeting"][0]]
    assert chatbot(api, path, "diff").exit_code == 0


def test_an_empty_section_removes_the_profile_and_a_missing_one_is_an_error(
    api: GraphApi, tmp_path: Path
) -> None:
    api.profile.update(json.loads(json.dumps(GRAPH)))
    missing = chatbot(api, domain_file(tmp_path, ""), "apply")
    assert missing.exit_code == 2 and "has no messenger_profile section" in missing.output
    assert methods(api) == []
    cleared = chatbot(api, domain_file(tmp_path, "messenger_profile: {}\n", "empty.yml"), "apply")
    assert cleared.exit_code == 0, cleared.output
    assert api.profile_calls[-1]["body"] == {
        "fields": ["get_started", "greeting", "persistent_menu", "ice_breakers"]
    }
    assert api.profile == {}


def test_validation_errors_stop_before_any_call(api: GraphApi, tmp_path: Path) -> None:
    long = PROFILE.replace("Ask me about an order.", "x" * 200)
    for command in ("apply", "diff"):
        result = chatbot(api, domain_file(tmp_path, long), command)
        assert result.exit_code == 2
        assert "messenger_profile.greeting.default: greeting text is 224 characters; " in (
            result.output
        )
        assert "Meta allows 160" in result.output and "Traceback" not in result.output
    assert methods(api) == []


def test_a_payload_naming_no_intent_is_warned_about(api: GraphApi, tmp_path: Path) -> None:
    path = domain_file(tmp_path, PROFILE.replace("payload: /order_status}", "payload: /ordr}"))
    result = chatbot(api, path, "diff")
    assert result.exit_code == 1
    assert "warning: messenger_profile.persistent_menu.default[0]: payload '/ordr'" in (
        result.stderr
    )
    assert "ice_breakers.default[0]: payload '/ordr'" in result.stderr
    assert "get_started" not in result.stderr  # GET_STARTED is in `payloads:`


# ---- Graph errors -----------------------------------------------------------------


def test_an_invalid_token_is_a_clear_error(api: GraphApi, tmp_path: Path) -> None:
    api.page_tokens = {"EAAGsomeotherpagetoken"}
    for command in ("show", "diff", "apply"):
        result = chatbot(api, domain_file(tmp_path), command)
        assert result.exit_code == 2, result.output
        assert "HTTP 400, code 190" in result.stderr
        assert "Invalid OAuth access token" in result.stderr
        assert "invalid or has expired" in result.stderr
        assert "Traceback" not in result.output
    assert api.profile == {}


@pytest.mark.parametrize(
    ("env", "meta_says"),
    [
        ({"MESSENGER_APP_SECRET": "not-the-apps-secret"}, "Invalid appsecret_proof provided"),
        ({"MESSENGER_APP_SECRET": None}, "require an appsecret_proof argument"),
    ],
)
def test_a_wrong_or_missing_proof_is_refused_as_meta_does(
    api: GraphApi, tmp_path: Path, env: dict[str, str | None], meta_says: str
) -> None:
    result = chatbot(api, domain_file(tmp_path), "apply", **env)
    assert result.exit_code == 2
    assert "code 100" in result.stderr and meta_says in result.stderr
    assert "check the tenant's app_secret" in result.stderr
    assert [r["code"] for r in api.refusals] == [100]
    assert api.profile == {}


def test_a_refused_parameter_is_a_clear_error(api: GraphApi, tmp_path: Path) -> None:
    def refuse_menu(method: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        if method != "POST":
            return None
        error = {
            "message": "(#100) You must set a Get Started button if you also wish to use "
            "persistent menu.",
            "type": "OAuthException",
            "code": 100,
            "error_subcode": 2018145,
        }
        return 400, {"error": error}

    api.profile_rule = refuse_menu
    result = chatbot(api, domain_file(tmp_path), "apply")
    assert result.exit_code == 2
    assert "HTTP 400, code 100, subcode 2018145" in result.stderr
    assert "A persistent menu needs a Get Started button" in result.stderr


def test_a_removal_refused_after_the_set_says_what_was_done(api: GraphApi, tmp_path: Path) -> None:
    api.profile.update(json.loads(json.dumps(GRAPH)))
    api.profile_rule = lambda method, body: (
        (503, {"error": {"message": "Service temporarily unavailable", "code": 2}})
        if method == "DELETE"
        else None
    )
    path = domain_file(tmp_path, PROFILE.split("  ice_breakers:")[0].replace("Hi {{", "Hello {{"))
    result = chatbot(api, path, "apply")
    assert result.exit_code == 2
    assert "HTTP 503, code 2" in result.stderr and "try again" in result.stderr
    assert "Already set: greeting; `apply` again does the rest." in result.stderr


def test_an_unreachable_graph_api_and_a_missing_token_are_clear_errors(
    api: GraphApi, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}/v21.0"
    result = chatbot(api, domain_file(tmp_path), "diff", MESSENGER_GRAPH_API_URL=down)
    assert result.exit_code == 2 and "cannot be reached: ConnectError" in result.stderr
    no_token = chatbot(api, domain_file(tmp_path), "show", MESSENGER_PAGE_ACCESS_TOKEN=None)
    assert no_token.exit_code == 2 and "has no page access token" in no_token.stderr
    unknown = chatbot(api, domain_file(tmp_path), "show", "--tenant", "acme")
    assert unknown.exit_code == 2 and "no tenant 'acme' (known: default)" in unknown.stderr


def test_tenants_file_and_domain_option(api: GraphApi, tmp_path: Path) -> None:
    (tmp_path / "acme.token").write_text(TOKEN + "\n", encoding="utf-8")
    tenants = tmp_path / "tenants.yml"
    tenants.write_text(
        textwrap.dedent(
            f"""
            tenants:
              - id: acme
                app_secret: {SECRET}
                page_access_token_file: acme.token
                domain: {domain_file(tmp_path, "", "plain.yml")}
              - id: globex
                page_access_token: another-token
            """
        ),
        encoding="utf-8",
    )
    # The tenant's own domain has no section; --domain checks another file against the page.
    several = chatbot(api, tmp_path, "show", "--tenants-file", str(tenants))
    assert several.exit_code == 2 and "name the tenant with --tenant (acme, globex)" in (
        several.stderr
    )
    args = ("--tenant", "acme", "--tenants-file", str(tenants))
    assert chatbot(api, tmp_path, "diff", *args).exit_code == 2
    result = chatbot(api, tmp_path, "apply", *args, "--domain", str(domain_file(tmp_path)))
    assert result.exit_code == 0, result.output
    assert "acme: greeting set" in result.output and api.profile == GRAPH


def test_commands_explain_themselves() -> None:
    from cli.main import app

    for args, words in [
        (["messenger-profile", "--help"], "persistent menu and ice breakers"),
        (["messenger-profile", "apply", "--help"], "Fields the section leaves out are removed"),
        (["messenger-profile", "diff", "--help"], "exit 1 if anything"),
        (["messenger-profile", "show", "--help"], "--json"),
    ]:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0 and words in result.output, (args, result.output)


# ---- appsecret_proof on the Send API ------------------------------------------------


async def test_send_and_typing_carry_the_proof(api: GraphApi) -> None:
    tenant = Tenant(id="default", page_access_token=TOKEN, app_secret=SECRET)
    assert appsecret_proof(SECRET, TOKEN) == PROOF
    async with HttpClient() as client:
        channel = MessengerChannel(client, api.url, attempts=1)
        await channel.typing(tenant, "psid-1")
        assert await channel.send(tenant, "psid-1", event_pb2.Reply(text="hi"), "m_in_1")
    assert [m.text for m in api.sent] == ["hi"] and api.refusals == []


async def test_a_wrong_app_secret_is_refused_for_good(api: GraphApi) -> None:
    tenant = Tenant(id="default", page_access_token=TOKEN, app_secret="not-the-apps-secret")
    async with HttpClient() as client:
        channel = MessengerChannel(client, api.url, attempts=3, backoff_s=0.01)
        await channel.typing(tenant, "psid-1")
        with pytest.raises(SendError) as raised:
            await channel.send(tenant, "psid-1", event_pb2.Reply(text="hi"), "m_in_1")
    assert raised.value.permanent and raised.value.code == 100
    assert api.sent == []
    assert [(r["path"], r["code"]) for r in api.refusals] == [("/me/messages", 100)] * 2


def test_a_dialogue_replica_sends_with_the_proof(replicas: Replicas, graph_api: GraphApi) -> None:
    graph_api.app_secret = SECRET
    replicas.start(1, MESSENGER_APP_SECRET=SECRET, MESSENGER_PAGE_ACCESS_TOKEN=TOKEN)
    assert submit(replicas.stub(), message_event("psid-proof", "m_proof_1", "hello")) == [1]
    wait_for(lambda: any(m.in_reply_to == "m_proof_1" for m in graph_api.sent))
    assert graph_api.refusals == []
    assert TOKEN in graph_api.tokens


def test_the_starter_domain_has_a_profile_whose_payloads_all_route(
    api: GraphApi, tmp_path: Path
) -> None:
    result = chatbot(api, DEFAULT_DOMAIN, "diff")
    assert result.exit_code == 1 and result.stderr == ""
    assert "+ get_started (set)" in result.stdout and "+ persistent_menu (set)" in result.stdout
