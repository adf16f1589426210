"""Every service's Redis client authenticates from REDIS_* and speaks TLS for rediss://.

Real servers: one that knows only an ACL user, a cluster behind ``requirepass``,
and one with a TLS port that asks for client certificates (throwaway CA).
``mesh.redis_client.connect`` is used the ways the services use it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import RedisCluster
from redis.exceptions import AuthenticationError, RedisError

from harness.redis_servers import RedisCluster as ClusterServers
from harness.redis_servers import RedisServer
from harness.support import free_port
from mesh.config import ConfigError, Env
from mesh.logging import JsonFormatter
from mesh.redis_client import connect
from mesh.redis_options import redis_options
from services.gateway.ratelimit import RateLimiterUnavailable, RedisRateLimiter
from tests.mesh.certs import CertificateAuthority

PASSWORD = "s3cret-from-a-file"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("redis-auth")


@pytest.fixture(scope="module")
def password_file(workdir: Path) -> Path:
    path = workdir / "redis-password"
    path.write_text(PASSWORD + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def acl_redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir, username="chatbot", password=PASSWORD)
    yield server
    server.stop()


async def _bounded(url: str) -> Any:
    return await connect(url, max_connections=128)


async def _blocking(url: str) -> Any:
    return await connect(url, timeout=None, max_connections=1000)


async def _unbounded(url: str) -> Any:
    return await connect(url, timeout=2.0)


# The dialogue's two clients, the console's and the CLI's.
CONNECTORS: dict[str, Callable[[str], Awaitable[Any]]] = {
    "bounded-pool": _bounded,
    "blocking-pops": _blocking,
    "unbounded": _unbounded,
}


@pytest.mark.parametrize("service", sorted(CONNECTORS))
async def test_a_client_authenticates_with_the_password_file(
    service: str, acl_redis: RedisServer, password_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_USERNAME", "chatbot")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(password_file))
    client = await CONNECTORS[service](acl_redis.url)
    try:
        await client.set(f"auth:{service}", "yes")
        assert await client.get(f"auth:{service}") == b"yes"
    finally:
        await client.aclose()


@pytest.mark.parametrize("service", sorted(CONNECTORS))
async def test_a_client_without_the_password_is_refused(
    service: str, acl_redis: RedisServer, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await CONNECTORS[service](acl_redis.url)
    try:
        with pytest.raises(AuthenticationError):
            await client.ping()
    finally:
        await client.aclose()
    wrong = workdir / "wrong-password"
    wrong.write_text("guess", encoding="utf-8")
    monkeypatch.setenv("REDIS_USERNAME", "chatbot")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(wrong))
    client = await CONNECTORS[service](acl_redis.url)
    try:
        with pytest.raises(AuthenticationError):
            await client.ping()
    finally:
        await client.aclose()


async def test_the_rate_limiter_counts_with_the_password_and_fails_open_without(
    acl_redis: RedisServer, password_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = RedisRateLimiter(acl_redis.url)
    await refused.start()
    try:
        with pytest.raises(RateLimiterUnavailable):
            await refused.hit("auth-test", limit=5, window=60)
    finally:
        await refused.close()
    monkeypatch.setenv("REDIS_USERNAME", "chatbot")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(password_file))
    limiter = RedisRateLimiter(acl_redis.url)
    await limiter.start()
    try:
        first = await limiter.hit("auth-test", limit=5, window=60)
        second = await limiter.hit("auth-test", limit=5, window=60)
        assert (first.count, second.count) == (1, 2)
    finally:
        await limiter.close()


async def test_a_cluster_client_authenticates_on_every_node(
    workdir: Path, password_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = ClusterServers(workdir / "cluster", password=PASSWORD)
    try:
        monkeypatch.setenv("REDIS_PASSWORD_FILE", str(password_file))
        client = await _bounded(cluster.url)
        try:
            assert isinstance(client, RedisCluster)
            keys = [f"{{user-{n}}}:k" for n in range(30)]  # spread over every master's slots
            for key in keys:
                await client.set(key, key)
            assert [await client.get(key) for key in keys] == [key.encode() for key in keys]
        finally:
            await client.aclose()
        monkeypatch.delenv("REDIS_PASSWORD_FILE")
        # Without the password the cluster is not even recognised as one.
        refused = await _bounded(cluster.url)
        try:
            with pytest.raises(RedisError):
                await refused.ping()
        finally:
            await refused.aclose()
    finally:
        cluster.stop()


async def test_rediss_with_a_client_certificate(
    workdir: Path, password_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = CertificateAuthority(workdir / "pki", "redis")
    server_cert = ca.issue("redis-server", hosts=("localhost",))
    client_cert = ca.issue("client")
    tls_port = free_port()
    server = RedisServer(
        workdir,
        password=PASSWORD,
        args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(server_cert.cert),
            "--tls-key-file", str(server_cert.key),
            "--tls-ca-cert-file", str(ca.cert),
            "--tls-auth-clients", "yes",
        ],
    )  # fmt: skip
    url = f"rediss://localhost:{tls_port}/0"
    try:
        monkeypatch.setenv("REDIS_PASSWORD_FILE", str(password_file))
        monkeypatch.setenv("REDIS_TLS_CA", str(ca.cert))
        monkeypatch.setenv("REDIS_TLS_CERT", str(client_cert.cert))
        monkeypatch.setenv("REDIS_TLS_KEY", str(client_cert.key))
        client = await _bounded(url)
        try:
            assert await client.ping() is True
        finally:
            await client.aclose()
        # No client certificate: the TLS handshake is refused.
        monkeypatch.delenv("REDIS_TLS_CERT")
        monkeypatch.delenv("REDIS_TLS_KEY")
        refused = await _unbounded(url)
        try:
            with pytest.raises((RedisError, OSError)):
                await refused.ping()
        finally:
            await refused.aclose()
    finally:
        server.stop()


def test_options_that_cannot_work_are_named(password_file: Path, tmp_path: Path) -> None:
    cases = [
        (
            {"REDIS_PASSWORD_FILE": str(tmp_path / "absent")},
            "redis://h:6379",
            "REDIS_PASSWORD_FILE",
        ),
        ({"REDIS_TLS_CA": str(password_file)}, "redis://h:6379", "not a rediss:// URL"),
        ({"REDIS_PASSWORD": "x"}, "redis://:inline@h:6379", "one place"),
        ({"REDIS_TLS_CERT": str(password_file)}, "rediss://h:6379", "set together"),
        ({"REDIS_TLS_CA": str(tmp_path / "absent")}, "rediss://h:6379", "REDIS_TLS_CA="),
    ]
    for environ, url, reason in cases:
        with pytest.raises(ConfigError, match=reason):
            redis_options(url, Env(environ))
    assert redis_options("redis://h:6379", Env({})) == {}
    assert redis_options(
        "rediss://h:6379", Env({"REDIS_USERNAME": "u", "REDIS_PASSWORD_FILE": str(password_file)})
    ) == {"username": "u", "password": PASSWORD}


def test_a_password_in_a_url_never_reaches_a_log_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    log = logging.getLogger("tests.redis_auth")
    log.addHandler(handler)
    try:
        log.error(
            "cannot reach rediss://chatbot:%s@redis.internal:6379/0", PASSWORD,
            extra={"url": f"redis://:{PASSWORD}@10.0.0.7:6379"},
        )  # fmt: skip
    finally:
        log.removeHandler(handler)
    line = stream.getvalue()
    assert PASSWORD not in line
    assert "rediss://chatbot:[redacted]@redis.internal:6379/0" in line
