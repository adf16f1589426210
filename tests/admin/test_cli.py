"""``chatbot users``: adding, listing, unlocking and removing console users in real Redis."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.testclient import TestClient
from typer.testing import CliRunner

from cli.users import users_app
from tests.admin.conftest import PREFIX, ClientFactory, login
from tests.admin.stack import Stack


def _cli(stack: Stack, *args: str, stdin: str = "") -> Any:
    return CliRunner().invoke(
        users_app, [*args, "--redis-url", stack.redis_url, "--prefix", PREFIX], input=stdin
    )


def test_users_add_list_and_remove(stack: Stack, make_client: ClientFactory) -> None:
    added = _cli(
        stack, "add", "Olga", "--role", "viewer", "--tenant", "globex", "--password-stdin",
        stdin="olga-password-1\n",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "saved olga: viewer of globex" in added.output
    client: TestClient = make_client()
    assert login(client, "olga", "olga-password-1").status_code == 303
    assert client.get("/api/admin/me").json()["tenants"] == ["globex"]

    again = _cli(stack, "add", "olga", "--tenant", "globex", "--password-stdin", stdin="x" * 9)
    assert again.exit_code == 1 and "exists" in again.output
    updated = _cli(
        stack, "add", "olga", "--role", "admin", "--tenant", "*", "--update", "--password-stdin",
        stdin="olga-password-2\n",
    )  # fmt: skip
    assert updated.exit_code == 0, updated.output
    assert client.get("/api/admin/me").status_code == 401  # the change ended the session
    assert "olga  admin  *" in _cli(stack, "list").output

    removed = _cli(stack, "remove", "olga")
    assert removed.exit_code == 0
    assert login(make_client(), "olga", "olga-password-2").status_code == 401
    assert _cli(stack, "remove", "olga").exit_code == 1


def test_users_add_refuses_bad_input(stack: Stack) -> None:
    assert _cli(stack, "add", "x y", "--tenant", "acme").exit_code == 2
    assert _cli(stack, "add", "zed", "--role", "owner", "--tenant", "acme").exit_code == 2
    assert _cli(stack, "add", "zed").exit_code == 2  # no tenant
    short = _cli(stack, "add", "zed", "--tenant", "acme", "--password-stdin", stdin="short\n")
    assert short.exit_code == 2 and "at least 8" in short.output
    prompted = _cli(
        stack, "add", "zed", "--tenant", "acme", stdin="zed-password-1\nzed-password-2\n"
    )
    assert prompted.exit_code != 0  # the two typings differ


def test_users_unlock(stack: Stack, make_client: ClientFactory) -> None:
    client = make_client()
    for _ in range(3):
        assert login(client, "vic", "wrong-password").status_code == 401
    assert login(client, "vic", "vic-password-1").status_code == 429
    assert _cli(stack, "unlock", "vic").exit_code == 0
    assert login(client, "vic", "vic-password-1").status_code == 303


def test_unreachable_redis_is_a_clear_error() -> None:
    result = CliRunner().invoke(users_app, ["list", "--redis-url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 1 and "cannot be reached" in result.output


def _chatbot(stack: Stack, *args: str, stdin: str = "") -> Any:
    from cli.main import app

    return CliRunner().invoke(app, [*args, "--address", stack.chatlog_address], input=stdin)


def test_retention_show_and_set(stack: Stack) -> None:
    try:
        saved = _chatbot(stack, "retention", "set", "45", "--tenant", "globex")
        assert saved.exit_code == 0, saved.output
        assert "globex: messages are kept 45 days after they are stored (set " in saved.output
        shown = _chatbot(stack, "retention", "show", "--tenant", "globex")
        assert shown.exit_code == 0 and "kept 45 days" in shown.output
        unknown = _chatbot(stack, "retention", "set", "5", "--tenant", "no-such-tenant")
        assert unknown.exit_code == 2 and "INVALID_ARGUMENT" in unknown.output
        assert _chatbot(stack, "retention", "set", "-3", "--tenant", "globex").exit_code == 2
        assert _chatbot(stack, "retention", "set", "5").exit_code == 2  # no tenant
    finally:
        assert _chatbot(stack, "retention", "set", "0", "--tenant", "globex").exit_code == 0
    shown = _chatbot(stack, "retention", "show", "--tenant", "globex")
    assert "globex: messages are kept until deleted" in shown.output


def test_erase_user_asks_then_erases_one_tenant_only(stack: Stack) -> None:
    user_id = f"psid-{uuid.uuid4().hex[:10]}"
    mine, theirs = stack.talk("acme", user_id), stack.talk("globex", user_id)
    args = ("erase-user", user_id, "--tenant", "acme", "--channel", "messenger")
    declined = _chatbot(stack, *args, stdin="n\n")
    assert declined.exit_code == 1 and "nothing erased" in declined.output
    assert len(stack.transcript("acme", mine)) >= 2
    erased = _chatbot(stack, *args, stdin="y\n")
    assert erased.exit_code == 0, erased.output
    assert "erased 2 messages in 1 conversations" in erased.output
    assert stack.transcript("acme", mine) == []
    assert len(stack.transcript("globex", theirs)) >= 2
    again = _chatbot(stack, *args, "--yes")
    assert again.exit_code == 0 and "erased 0 messages" in again.output
    bad = _chatbot(stack, "erase-user", user_id, "--tenant", "acme", "--channel", "fax", "--yes")
    assert bad.exit_code == 2


def test_data_commands_explain_themselves() -> None:
    from cli.main import app

    for args, words in [
        (["erase-user", "--help"], "Erase one customer"),
        (["retention", "--help"], "how long a tenant's messages are kept"),
        (["retention", "set", "--help"], "0: until deleted"),
    ]:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0 and words in result.output, args
