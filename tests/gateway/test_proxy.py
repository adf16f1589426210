"""Behind a TLS-terminating reverse proxy, through the real uvicorn server.

The proxy here is a client connecting from 127.0.0.2 (not uvicorn's default
trusted 127.0.0.1), as an ingress controller's pod connects from its own
address. Only when ``GATEWAY_FORWARDED_ALLOW_IPS`` names it are its
``X-Forwarded-For`` and ``X-Forwarded-Proto`` believed: then the console's
login lockout counts each browser's address, not the proxy's, and the scheme
the browser used decides Secure cookies and HSTS.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from harness.redis_servers import RedisServer
from tests.gateway.conftest import gateway_env
from tests.gateway.harness import Gateway

PROXY = "127.0.0.2"
ALICE, BOB = "203.0.113.7", "198.51.100.9"


@contextmanager
def _gateway_behind_proxy(
    workdir: Path, tenants_file: Path, dialogue_address: str, redis_url: str, trusted: str
) -> Iterator[tuple[Gateway, httpx.Client]]:
    env = gateway_env(
        tenants_file,
        dialogue_address,
        redis_url,
        GATEWAY_FORWARDED_ALLOW_IPS=trusted,
        GATEWAY_HSTS_SECONDS="600",
        ADMIN_USERNAME="root",
        ADMIN_PASSWORD="root-password-1",
        ADMIN_LOCKOUT_ATTEMPTS="100",
        ADMIN_LOCKOUT_IP_ATTEMPTS="2",
        ADMIN_REDIS_PREFIX=f"proxytest-{trusted}:",
    )
    process = Gateway(workdir, env, name="proxy")
    proxy = httpx.Client(
        base_url=process.url,
        transport=httpx.HTTPTransport(local_address=PROXY),
        timeout=15,
        follow_redirects=False,
    )
    try:
        yield process, proxy
    finally:
        proxy.close()
        process.stop()


def _login(proxy: httpx.Client, client_address: str, name: str) -> int:
    """One failed sign-in by a browser at ``client_address``, relayed by the proxy."""
    headers = {"X-Forwarded-For": client_address}
    form = proxy.get("/admin/login", headers=headers)
    assert form.status_code == 200
    match = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert match is not None
    answer = proxy.post(
        "/admin/login",
        data={"username": name, "password": "wrong-password", "csrf_token": match.group(1)},
        headers=headers,
    )
    proxy.cookies.clear()
    return answer.status_code


@pytest.mark.parametrize(
    ("trusted", "bob_after_alice"),
    [
        # The proxy is trusted: Alice's failures lock Alice's address only.
        (PROXY, 401),
        # It is not (the ingress lives elsewhere): the headers are anyone's to
        # forge, so every sign-in counts against the connecting peer.
        ("192.0.2.10", 429),
    ],
)
def test_the_lockout_keys_on_the_address_the_trusted_proxy_reports(
    gateway_workdir: Path,
    tenants_file: Path,
    dialogue_address: str,
    redis_server: RedisServer,
    trusted: str,
    bob_after_alice: int,
) -> None:
    with _gateway_behind_proxy(
        gateway_workdir, tenants_file, dialogue_address, redis_server.url, trusted
    ) as (_, proxy):
        assert _login(proxy, ALICE, "guess-1") == 401
        assert _login(proxy, ALICE, "guess-2") == 401
        assert _login(proxy, ALICE, "guess-3") == 429
        assert _login(proxy, BOB, "guess-4") == bob_after_alice


@pytest.mark.parametrize(("trusted", "https"), [(PROXY, True), ("192.0.2.10", False)])
def test_the_scheme_the_trusted_proxy_reports_decides_cookies_and_hsts(
    gateway_workdir: Path,
    tenants_file: Path,
    dialogue_address: str,
    redis_server: RedisServer,
    trusted: str,
    https: bool,
) -> None:
    with _gateway_behind_proxy(
        gateway_workdir, tenants_file, dialogue_address, redis_server.url, trusted
    ) as (_, proxy):
        page = proxy.get("/admin/login", headers={"X-Forwarded-Proto": "https"})
        assert page.status_code == 200
        cookie = page.headers["set-cookie"]
        hsts = page.headers.get("strict-transport-security")
        if https:
            assert cookie.startswith("__Host-chatbot_admin_login=") and "Secure" in cookie
            assert hsts == "max-age=600"
        else:
            assert cookie.startswith("chatbot_admin_login=") and "Secure" not in cookie
            assert hsts is None
