"""Password guessing against the console: counted before verifying, slowed per name and
address, and stored hashes upgraded to the current scrypt cost, against real Redis."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

from mesh.tenants import Tenants
from services.gateway.admin import GrpcAdminBackends, create_admin_app, passwords
from services.gateway.admin.users import RedisClient, UserStore
from tests.admin.conftest import PREFIX, SETTINGS, USERS, ClientFactory, login, run
from tests.admin.stack import Stack, wait_for


async def _login_at_once(stack: Stack, name: str, password: str, count: int) -> list[int]:
    """``count`` sign-ins of ``name`` sent together to one console; their statuses."""
    console = create_admin_app(
        SETTINGS,
        Tenants.from_file(stack.tenants_file),
        GrpcAdminBackends(stack.chatlog_address, stack.dialogue_address, stack.redis_url),
    )
    await console.start()
    transport = httpx.ASGITransport(app=console.app, client=("203.0.113.7", 4000))
    clients = [
        httpx.AsyncClient(transport=transport, base_url="http://testserver") for _ in range(count)
    ]
    try:
        tokens = []
        for client in clients:
            form = await client.get("/admin/login")
            match = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert match is not None
            tokens.append(match.group(1))
        answers = await asyncio.gather(
            *(
                client.post(
                    "/admin/login",
                    data={"username": name, "password": password, "csrf_token": token},
                )
                for client, token in zip(clients, tokens, strict=True)
            )
        )
        return [answer.status_code for answer in answers]
    finally:
        for client in clients:
            await client.aclose()
        await console.close()


def test_parallel_guesses_are_counted_before_any_is_verified(
    stack: Stack, make_client: ClientFactory
) -> None:
    statuses = asyncio.run(_login_at_once(stack, "vic", "wrong-password", 20))
    # Only the attempts the throttle let through had their password checked.
    assert statuses.count(401) == SETTINGS.lockout_attempts, statuses
    assert statuses.count(429) == 20 - SETTINGS.lockout_attempts, statuses


def test_a_slowed_address_does_not_lock_the_user_out_elsewhere(
    make_client: ClientFactory,
) -> None:
    guesser = make_client(address="198.51.100.9")
    for _ in range(SETTINGS.lockout_attempts):
        assert login(guesser, "ann", "wrong-password").status_code == 401
    slowed = login(guesser, "ann", USERS["ann"][2])
    assert slowed.status_code == 429
    assert "Too many failed sign-ins" in slowed.text
    assert int(slowed.headers["retry-after"]) >= 1
    # The administrator, from their own address, is not held back.
    assert login(make_client(address="192.0.2.44"), "ann", USERS["ann"][2]).status_code == 303


def test_the_delay_doubles_per_failure(make_client: ClientFactory) -> None:
    client = make_client(address="198.51.100.10", login_delay_seconds=4.0)
    for _ in range(SETTINGS.lockout_attempts):
        assert login(client, "vic", "wrong-password").status_code == 401
    first = int(login(client, "vic", "wrong-password").headers["retry-after"])
    # Once the wait is over one more guess is let through, and fails.
    wait_for(lambda: login(client, "vic", "wrong-password").status_code == 401, what="a guess")
    second = int(login(client, "vic", "wrong-password").headers["retry-after"])
    assert first <= 4 < second <= 8


def test_a_success_clears_the_failures(make_client: ClientFactory) -> None:
    client = make_client(address="198.51.100.11")
    for _ in range(SETTINGS.lockout_attempts - 1):
        assert login(client, "vic", "wrong-password").status_code == 401
    assert login(client, "vic", USERS["vic"][2]).status_code == 303
    for _ in range(SETTINGS.lockout_attempts):
        assert login(make_client(address="198.51.100.11"), "vic", "wrong").status_code == 401


def test_an_older_cheaper_hash_is_upgraded_at_sign_in(
    stack: Stack, make_client: ClientFactory
) -> None:
    # A name of its own: the session's Redis is shared with the users CLI tests.
    name, password = "hugo", "hugo-password-1"
    old = passwords.hash_password(password, log2_n=14)

    async def create(redis: RedisClient) -> Any:
        store = UserStore(redis, PREFIX)
        await store.put(name, role="viewer", tenants=["acme"], password_hash=old)
        return await store.get(name)

    async def read(redis: RedisClient) -> Any:
        return await UserStore(redis, PREFIX).get(name)

    before = run(create, stack.redis_url)
    first = make_client()
    assert login(first, name, password).status_code == 303
    after = run(read, stack.redis_url)
    assert after.password_hash.startswith(f"scrypt${passwords.LOG2_N}$8$1$")
    assert not passwords.needs_rehash(after.password_hash)
    assert passwords.verify_password(password, after.password_hash)
    # The same password at a new cost is no change: the session opened stays valid.
    assert after.generation == before.generation
    assert first.get("/api/admin/me").status_code == 200
    assert login(make_client(), name, password).status_code == 303
