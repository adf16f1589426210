"""Mutual TLS inside the mesh: real services, configured from MESH_TLS_*, with throwaway CAs.

The chatlog and the dialogue service (whose Redis asks for an ACL user's
password, read from a file) serve over mutual TLS; the gateway reaches both
through its readiness check; a client with another CA's certificate, or none,
is refused. Kubernetes' plaintext gRPC probes use the health-only port.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2, chatlog_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.redis_servers import RedisServer
from harness.support import REPO, ServiceProcess, free_port, health_status
from mesh.channels import open_channel
from mesh.config import ConfigError, Env
from mesh.server import MeshServer
from mesh.tls import PLAINTEXT, MeshTls
from tests.gateway.harness import Gateway
from tests.mesh.certs import CertificateAuthority, Issued

SERVING = health_pb2.HealthCheckResponse.SERVING
CHATLOG = "chatbot.chatlog.v1.ChatlogService"
PYTHONPATH = f"{REPO}:{REPO / 'build' / 'gen' / 'py'}"
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    service: Issued
    intruder_ca: CertificateAuthority
    intruder: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory, "mesh")
    intruder_ca = CertificateAuthority(directory, "other")
    return Pki(
        ca,
        ca.issue("service", hosts=("localhost", "127.0.0.1")),
        intruder_ca,
        intruder_ca.issue("intruder", hosts=("localhost", "127.0.0.1")),
    )


def mesh_env(pki: Pki) -> dict[str, str]:
    return {
        "MESH_TLS_CERT": str(pki.service.cert),
        "MESH_TLS_KEY": str(pki.service.key),
        "MESH_TLS_CA": str(pki.ca.cert),
        "MESH_TLS_CLIENT_AUTH": "require",
    }


def client_tls(ca: Path, issued: Issued | None) -> MeshTls:
    return MeshTls.from_env(
        Env(
            {"MESH_TLS_CA": str(ca)}
            | (
                {"MESH_TLS_CERT": str(issued.cert), "MESH_TLS_KEY": str(issued.key)}
                if issued
                else {}
            )
        )
    )


@dataclass
class Mesh:
    chatlog: ServiceProcess
    chatlog_port: int
    dialogue: ServiceProcess
    dialogue_port: int
    gateway: Gateway


@pytest.fixture(scope="module")
def mesh(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    workdir = tmp_path_factory.mktemp("mesh-tls")
    redis = RedisServer(workdir, username="dialogue", password="correct-horse-battery")
    password_file = workdir / "redis-password"
    password_file.write_text("correct-horse-battery\n", encoding="utf-8")
    redis_env = {
        "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
        "REDIS_USERNAME": "dialogue",
        "REDIS_PASSWORD_FILE": str(password_file),
    }
    common = {"PYTHONPATH": PYTHONPATH, "METRICS_PORT": "0", "TENANT_ID": "acme", **mesh_env(pki)}
    started: list[ServiceProcess] = []
    gateway: Gateway | None = None
    try:
        chatlog_port, chatlog_health = free_port(), free_port()
        # The health-only port is plaintext: ServiceProcess waits on it as a probe would.
        chatlog = ServiceProcess(
            [sys.executable, "-m", "services.chatlog", "serve"],
            {
                **common,
                "CHATLOG_PORT": str(chatlog_port),
                "GRPC_HEALTH_PORT": str(chatlog_health),
                "CHATLOG_SQLITE_PATH": str(workdir / "chatlog.sqlite3"),
            },
            workdir / "chatlog.log",
            chatlog_health,
        )
        started.append(chatlog)
        dialogue_port, dialogue_health = free_port(), free_port()
        dialogue = ServiceProcess(
            [sys.executable, "-m", "services.dialogue", "serve"],
            {
                **common,
                **redis_env,
                "DIALOGUE_ROLE": "intake",
                "DIALOGUE_PORT": str(dialogue_port),
                "GRPC_HEALTH_PORT": str(dialogue_health),
                "CHATLOG_ADDRESS": f"localhost:{chatlog_port}",
            },
            workdir / "dialogue.log",
            dialogue_health,
        )
        started.append(dialogue)
        chatlog.wait_for_status(SERVING, timeout=60)
        dialogue.wait_for_status(SERVING, timeout=60)  # SERVING: its Redis took the password
        gateway = Gateway(
            workdir,
            {
                **common,
                **redis_env,
                "DIALOGUE_ADDRESS": f"localhost:{dialogue_port}",
                "CHATLOG_ADDRESS": f"localhost:{chatlog_port}",
                "GATEWAY_READY_REQUIRES": "dialogue,chatlog",
            },
        )
        yield Mesh(chatlog, chatlog_port, dialogue, dialogue_port, gateway)
    finally:
        if gateway is not None:
            gateway.stop()
        for process in started:
            process.stop()
        redis.stop()


@pytest.fixture
async def chatlog_over(
    mesh: Mesh, pki: Pki
) -> AsyncIterator[dict[str, chatlog_service_pb2_grpc.ChatlogServiceAsyncStub]]:
    """Stubs for the chatlog through channels with the mesh's, another CA's or no certificate."""
    channels = {
        "mesh": open_channel(
            f"localhost:{mesh.chatlog_port}", tls=client_tls(pki.ca.cert, pki.service)
        ),
        "no-cert": open_channel(
            f"localhost:{mesh.chatlog_port}", tls=client_tls(pki.ca.cert, None)
        ),
        "other-ca": open_channel(
            f"localhost:{mesh.chatlog_port}", tls=client_tls(pki.ca.cert, pki.intruder)
        ),
        "plaintext": open_channel(f"127.0.0.1:{mesh.chatlog_port}", tls=PLAINTEXT),
    }
    yield {name: chatlog_service_pb2_grpc.ChatlogServiceStub(ch) for name, ch in channels.items()}
    for channel in channels.values():
        await channel.close()


async def test_a_call_with_the_mesh_certificate_is_answered(
    chatlog_over: dict[str, chatlog_service_pb2_grpc.ChatlogServiceAsyncStub],
) -> None:
    reply = await chatlog_over["mesh"].ListConversations(
        chatlog_service_pb2.ListConversationsRequest(tenant_id="acme", page_size=10), timeout=10
    )
    assert list(reply.conversations) == []


@pytest.mark.parametrize("client", ["no-cert", "other-ca", "plaintext"])
async def test_a_client_without_a_mesh_certificate_is_refused(
    chatlog_over: dict[str, chatlog_service_pb2_grpc.ChatlogServiceAsyncStub], client: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await chatlog_over[client].ListConversations(
            chatlog_service_pb2.ListConversationsRequest(tenant_id="acme", page_size=10),
            timeout=10,
        )
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_server_outside_the_mesh_ca_is_not_trusted(mesh: Mesh, pki: Pki) -> None:
    # The client trusts only the other CA: the chatlog's certificate does not verify.
    channel = open_channel(
        f"localhost:{mesh.chatlog_port}", tls=client_tls(pki.intruder_ca.cert, pki.intruder)
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close()


async def test_health_over_tls_and_on_the_plaintext_health_port(mesh: Mesh, pki: Pki) -> None:
    channel = open_channel(
        f"localhost:{mesh.chatlog_port}", tls=client_tls(pki.ca.cert, pki.service)
    )
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=CHATLOG), timeout=10
        )
        assert reply.status == SERVING
    finally:
        await channel.close()
    assert health_status(mesh.chatlog.port, CHATLOG) == SERVING
    # The health-only port serves nothing else.
    with grpc.insecure_channel(f"127.0.0.1:{mesh.chatlog.port}") as plain:
        stub = chatlog_service_pb2_grpc.ChatlogServiceStub(plain)
        with pytest.raises(grpc.RpcError) as missing:
            stub.ListConversations(chatlog_service_pb2.ListConversationsRequest(), timeout=10)
        assert missing.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_the_gateway_reaches_the_services_over_mutual_tls(mesh: Mesh) -> None:
    ready = mesh.gateway.client.get("/readyz")
    assert ready.status_code == 200, mesh.gateway.logs()
    checks = ready.json()["checks"]
    assert (checks["dialogue"], checks["chatlog"]) == ("SERVING", "SERVING")


def test_grpcurl_lists_and_checks_health_with_the_tls_flags(mesh: Mesh, pki: Pki) -> None:
    flags = ["-cacert", str(pki.ca.cert), "-cert", str(pki.service.cert)]
    flags += ["-key", str(pki.service.key)]
    address = f"localhost:{mesh.chatlog_port}"
    listed = subprocess.run(
        [GRPCURL, *flags, address, "list"], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    assert CHATLOG in listed.stdout.split()
    health = subprocess.run(
        [GRPCURL, *flags, address, "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert '"SERVING"' in health.stdout, health.stderr
    refused = subprocess.run(
        [GRPCURL, "-cacert", str(pki.ca.cert), address, "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode != 0


@pytest.mark.parametrize("service", ["chatlog", "dialogue", "gateway"])
def test_a_missing_certificate_file_stops_the_start(service: str, pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "absent.pem"
    result = subprocess.run(
        [sys.executable, "-m", f"services.{service}", "serve"],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": PYTHONPATH,
            "TENANT_ID": "acme",
            "METRICS_PORT": "0",
            f"{service.upper()}_PORT": str(free_port()),
            "CHATLOG_SQLITE_PATH": str(tmp_path / "chatlog.sqlite3"),
            # A free port that nothing listens on: the check comes before any connection.
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            **mesh_env(pki),
            "MESH_TLS_CA": str(missing),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"MESH_TLS_CA={missing} cannot be read" in result.stderr


def test_tls_is_off_by_default() -> None:
    tls = MeshTls.from_env(Env({}))
    assert (tls.enabled, tls.mode) == (False, "off")


def test_settings_that_cannot_work_are_named(pki: Pki, tmp_path: Path) -> None:
    cases = [
        ({"MESH_TLS_CERT": str(pki.service.cert)}, "set together"),
        ({"MESH_TLS_CLIENT_AUTH": "require"}, "needs MESH_TLS_CA"),
        ({"MESH_TLS_CLIENT_AUTH": "sometimes", "MESH_TLS_CA": str(pki.ca.cert)}, "expected one"),
        ({"MESH_TLS_SERVER_NAME": "chatlog"}, "TLS is off"),
        (
            {"MESH_TLS_CERT": str(pki.service.cert), "MESH_TLS_KEY": str(pki.intruder.key)},
            "does not match",
        ),
        ({"MESH_TLS_CA": str(pki.service.key)}, "holds no valid certificate"),
    ]
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello", encoding="utf-8")
    cases.append(({"MESH_TLS_CA": str(not_pem)}, "is not a PEM file"))
    for environ, reason in cases:
        with pytest.raises(ConfigError, match=reason):
            MeshTls.from_env(Env(environ))


async def test_a_server_needs_its_own_certificate(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="MESH_TLS_CERT and MESH_TLS_KEY"):
        MeshServer(
            "test", host="127.0.0.1", port=0, service_names=[], tls=client_tls(pki.ca.cert, None)
        )
