"""``chatbot users``: adding, listing, unlocking and removing console users in real Redis."""

from __future__ import annotations

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
