"""Fixtures of the console's tests: the real stack, users in Redis, a client per test."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx2
import pytest
from starlette.testclient import TestClient

from harness.redis_servers import RedisServer
from mesh.redis_client import connect
from mesh.tenants import Tenants
from services.gateway.admin import AdminSettings, GrpcAdminBackends, create_admin_app
from services.gateway.admin.lockout import LoginThrottle
from services.gateway.admin.users import UserStore
from tests.admin.stack import Stack

PREFIX = "admintest:"
ROOT = ("root", "root-password-1")
# name: (role, tenants, password)
USERS = {
    "ann": ("admin", ["acme"], "ann-password-1"),
    "vic": ("viewer", ["acme"], "vic-password-1"),
    "gus": ("viewer", ["globex"], "gus-password-1"),
}
SETTINGS = AdminSettings(
    bootstrap_username=ROOT[0],
    bootstrap_password=ROOT[1],
    lockout_attempts=3,
    lockout_ip_attempts=50,
    lockout_window_seconds=60,
    login_delay_seconds=30.0,
    live_poll_seconds=0.2,
    redis_prefix=PREFIX,
)


@pytest.fixture(scope="session")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/5"
    found = Stack(tmp_path_factory.mktemp("admin"), redis_url)
    try:
        yield found
    finally:
        found.stop()


def run(coroutine_factory: Callable[[Any], Any], redis_url: str) -> Any:
    async def main() -> Any:
        redis = await connect(redis_url)
        try:
            return await coroutine_factory(redis)
        finally:
            await redis.aclose()

    return asyncio.run(main())


@pytest.fixture(scope="session")
def users(stack: Stack) -> dict[str, tuple[str, list[str], str]]:
    async def create(redis: Any) -> None:
        store = UserStore(redis, PREFIX)
        for name in await store.names():
            await store.delete(name)
        for name, (role, tenants, password) in USERS.items():
            await store.put(name, role=role, tenants=tenants, password=password)

    run(create, stack.redis_url)
    return USERS


@pytest.fixture
def clear_lockouts(stack: Stack) -> Iterator[None]:
    async def clear(redis: Any) -> None:
        # Only the prefix names the keys; the limits play no part in clearing.
        await LoginThrottle(redis, free_attempts=1, ip_limit=1, window=1, prefix=PREFIX).clear_all()

    run(clear, stack.redis_url)
    yield
    run(clear, stack.redis_url)


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(
    stack: Stack, users: dict[str, Any], clear_lockouts: None
) -> Iterator[ClientFactory]:
    clients: list[TestClient] = []

    def make(
        base_url: str = "http://testserver", address: str = "testclient", **changes: Any
    ) -> TestClient:
        console = create_admin_app(
            replace(SETTINGS, **changes),
            Tenants.from_file(stack.tenants_file),
            GrpcAdminBackends(stack.chatlog_address, stack.dialogue_address, stack.redis_url),
        )
        client = TestClient(
            console.app, base_url=base_url, follow_redirects=False, client=(address, 50000)
        )
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


def login(client: TestClient, name: str, password: str, next_page: str = "") -> httpx2.Response:
    form = client.get("/admin/login")
    assert form.status_code == 200
    match = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert match is not None
    return client.post(
        "/admin/login",
        data={
            "username": name,
            "password": password,
            "csrf_token": match.group(1),
            "next": next_page,
        },
    )


def signed_in(client: TestClient, name: str) -> str:
    """Signs ``name`` in; returns the session's CSRF token."""
    password = ROOT[1] if name == ROOT[0] else USERS[name][2]
    answer = login(client, name, password)
    assert answer.status_code == 303, answer.text
    me = client.get("/api/admin/me")
    assert me.status_code == 200
    return str(me.json()["csrf_token"])
