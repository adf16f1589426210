"""Signing in and out, sessions, CSRF, lockout, roles and tenant grants, against real Redis."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.admin.conftest import ROOT, USERS, ClientFactory, login, signed_in
from tests.admin.stack import Stack

PAGES = [
    "/admin/",
    "/admin/t/acme/conversations",
    "/admin/t/acme/conversation?id=1:someone",
    "/admin/t/acme/handoffs",
    "/admin/t/acme/stats",
    "/admin/t/acme/dead-letters",
    "/admin/t/acme/training-data",
    "/admin/no-such-page",
]
API = [
    "/api/admin/openapi.json",
    "/api/admin/me",
    "/api/admin/tenants/acme/conversations",
    "/api/admin/tenants/acme/messages?conversation_id=1:someone",
    "/api/admin/tenants/acme/live?conversation_id=1:someone",
    "/api/admin/tenants/acme/stats?start=2026-01-01&end=2026-01-02",
    "/api/admin/tenants/acme/dead-letters",
    "/api/admin/tenants/acme/training-data.yml",
    "/api/admin/no-such-call",
]


@pytest.mark.parametrize("path", PAGES)
def test_pages_redirect_to_login_without_a_session(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/admin/login?next=")
    assert answer.headers["cache-control"] == "no-store"
    assert "acme" not in answer.text


@pytest.mark.parametrize("path", API)
def test_api_answers_401_without_a_session(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthenticated"


def test_posts_without_a_session_change_nothing(client: TestClient) -> None:
    answer = client.post(
        "/api/admin/tenants/acme/handoff",
        json={"channel": "messenger", "user_id": "u", "handed_off": True},
    )
    assert answer.status_code == 401
    assert client.post("/admin/t/acme/handoff", data={}).status_code == 303


def test_login_page_and_assets_are_public_and_locked_down(client: TestClient) -> None:
    page = client.get("/admin/login")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert '<label for="username">' in page.text and '<label for="password">' in page.text
    assert 'class="skip-link" id="skip-link" href="#main"' in page.text
    css = client.get("/admin/static/admin.css")
    assert css.status_code == 200 and ":focus-visible" in css.text
    assert client.get("/admin/static/admin.js").status_code == 200


def test_login_sets_a_strict_http_only_cookie(client: TestClient) -> None:
    answer = login(client, *ROOT, next_page="/admin/t/acme/stats")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/admin/t/acme/stats"
    cookie = next(
        v for k, v in answer.headers.multi_items() if k == "set-cookie" and "chatbot_admin=" in v
    )
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered and "path=/" in lowered
    assert "secure" not in lowered  # plain http in this test: auto leaves it off
    me = client.get("/api/admin/me").json()
    assert me["name"] == "root" and me["role"] == "admin"
    assert me["tenants"] == ["acme", "globex"]


def test_over_https_the_cookie_is_secure_and_host_bound(make_client: ClientFactory) -> None:
    client = make_client(base_url="https://testserver")
    answer = login(client, *ROOT)
    cookies = [v for k, v in answer.headers.multi_items() if k == "set-cookie"]
    session = next(c for c in cookies if c.startswith("__Host-chatbot_admin="))
    assert "Secure" in session and "HttpOnly" in session
    assert client.get("/api/admin/me").status_code == 200


def test_cookies_are_secure_when_configured_even_behind_plain_http(
    make_client: ClientFactory,
) -> None:
    # Behind a proxy that terminates TLS the app may see http: true still means Secure.
    page = make_client(cookie_secure="true").get("/admin/login")
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("__Host-chatbot_admin_login=") and "Secure" in cookie


def test_a_next_page_outside_the_console_is_ignored(make_client: ClientFactory) -> None:
    for target in ("https://evil.example/", "//evil.example/admin/", "/api/admin/me"):
        answer = login(make_client(), *ROOT, next_page=target)
        assert answer.headers["location"] == "/admin/"


def test_wrong_password_and_unknown_user_look_the_same(client: TestClient) -> None:
    wrong = login(client, "root", "not-the-password")
    unknown = login(client, "nobody", "not-the-password")
    assert wrong.status_code == unknown.status_code == 401
    assert "The user name or the password is wrong." in wrong.text
    assert "The user name or the password is wrong." in unknown.text
    assert client.get("/api/admin/me").status_code == 401


def test_login_needs_the_forms_token(client: TestClient) -> None:
    client.get("/admin/login")
    answer = client.post(
        "/admin/login", data={"username": ROOT[0], "password": ROOT[1], "csrf_token": "forged"}
    )
    assert answer.status_code == 403
    assert client.get("/api/admin/me").status_code == 401


def test_login_from_another_site_is_refused(client: TestClient) -> None:
    form = client.get("/admin/login")
    token = form.text.split('name="csrf_token" value="')[1].split('"')[0]
    answer = client.post(
        "/admin/login",
        data={"username": ROOT[0], "password": ROOT[1], "csrf_token": token},
        headers={"Origin": "https://evil.example"},
    )
    assert answer.status_code == 403


def test_repeated_failures_lock_the_user_even_with_the_right_password(
    client: TestClient, make_client: ClientFactory
) -> None:
    for _ in range(3):
        assert login(client, "vic", "wrong-password").status_code == 401
    locked = login(client, "vic", USERS["vic"][2])
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.text
    # Other users still sign in from the same address.
    assert login(make_client(), "ann", USERS["ann"][2]).status_code == 303


def test_repeated_failures_from_one_address_lock_it(make_client: ClientFactory) -> None:
    client = make_client(lockout_ip_attempts=4)
    for name in ("a1", "a2", "a3", "a4"):
        assert login(client, name, "guess-password").status_code == 401
    assert login(client, "ann", USERS["ann"][2]).status_code == 429


def test_logout_needs_csrf_and_ends_the_session(client: TestClient) -> None:
    csrf = signed_in(client, "ann")
    assert client.post("/admin/logout", data={}).status_code == 403
    assert client.get("/api/admin/me").status_code == 200
    answer = client.post("/admin/logout", data={"csrf_token": csrf})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/admin/login?done=signed-out"
    assert client.get("/api/admin/me").status_code == 401


def test_a_stolen_cookie_stops_working_after_logout(
    client: TestClient, make_client: ClientFactory
) -> None:
    csrf = signed_in(client, "ann")
    thief = make_client()
    thief.cookies.update(client.cookies)
    assert thief.get("/api/admin/me").status_code == 200
    client.post("/admin/logout", data={"csrf_token": csrf})
    assert thief.get("/api/admin/me").status_code == 401


def test_a_forged_session_cookie_is_refused(client: TestClient) -> None:
    client.cookies.set("chatbot_admin", "forged-token")
    assert client.get("/api/admin/me").status_code == 401
    assert client.get("/admin/").status_code == 303


def test_api_posts_need_the_csrf_header(client: TestClient) -> None:
    csrf = signed_in(client, "ann")
    body = {"channel": "messenger", "user_id": "nobody-1", "handed_off": False}
    assert client.post("/api/admin/tenants/acme/handoff", json=body).status_code == 403
    wrong = client.post(
        "/api/admin/tenants/acme/handoff", json=body, headers={"X-CSRF-Token": "nope"}
    )
    assert wrong.status_code == 403 and wrong.json()["error"] == "csrf_rejected"
    other_site = client.post(
        "/api/admin/tenants/acme/handoff",
        json=body,
        headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
    )
    assert other_site.status_code == 403
    good = client.post("/api/admin/tenants/acme/handoff", json=body, headers={"X-CSRF-Token": csrf})
    assert good.status_code == 200, good.text


def test_viewers_read_but_do_not_act(client: TestClient) -> None:
    csrf = signed_in(client, "vic")
    assert client.get("/admin/t/acme/dead-letters").status_code == 200
    user = {"channel": "messenger", "user_id": "u"}
    for path, body in [
        ("/api/admin/tenants/acme/handoff", {**user, "handed_off": True}),
        ("/api/admin/tenants/acme/agent-messages", {**user, "text": "hi"}),
        ("/api/admin/tenants/acme/dead-letters/x/replay", {}),
    ]:
        answer = client.post(path, json=body, headers={"X-CSRF-Token": csrf})
        assert answer.status_code == 403, path
        assert answer.json()["error"] == "forbidden"
    page = client.post(
        "/admin/t/acme/handoff",
        data={"csrf_token": csrf, "channel": "messenger", "user_id": "u", "handed_off": "true"},
    )
    assert page.status_code == 403
    assert "Not allowed" in page.text


def test_tenants_not_granted_do_not_exist(client: TestClient) -> None:
    signed_in(client, "gus")
    assert client.get("/api/admin/me").json()["tenants"] == ["globex"]
    assert client.get("/admin/").headers["location"] == "/admin/t/globex/conversations"
    assert client.get("/admin/?tenant=acme").headers["location"] == (
        "/admin/t/globex/conversations"
    )
    for path in ("/admin/t/acme/conversations", "/admin/t/acme/stats"):
        assert client.get(path).status_code == 404
    assert client.get("/api/admin/tenants/acme/conversations").status_code == 404
    assert client.get("/api/admin/tenants/globex/conversations").status_code == 200


def test_the_first_admin_follows_the_environment(stack: Stack, make_client: ClientFactory) -> None:
    client = make_client(bootstrap_password="a-new-root-password")
    assert login(client, "root", ROOT[1]).status_code == 401
    assert login(client, "root", "a-new-root-password").status_code == 303
    # Back to the usual password for the other tests (and old sessions end).
    other = make_client()
    assert login(other, *ROOT).status_code == 303
    assert client.get("/api/admin/me").status_code == 401


def test_changing_a_users_role_ends_their_sessions(client: TestClient, stack: Stack) -> None:
    from services.gateway.admin.users import RedisClient, UserStore
    from tests.admin.conftest import PREFIX, run

    signed_in(client, "vic")
    role, tenants, _ = USERS["vic"]

    async def change(redis: RedisClient, role: str) -> None:
        await UserStore(redis, PREFIX).put("vic", role=role, tenants=tenants)

    run(lambda redis: change(redis, "admin"), stack.redis_url)
    try:
        assert client.get("/api/admin/me").status_code == 401
    finally:
        run(lambda redis: change(redis, role), stack.redis_url)
