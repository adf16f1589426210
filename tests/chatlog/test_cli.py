"""``python -m services.chatlog``: --help, ``serve`` as its own process, ``schema``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from harness.cassandra import CassandraNode
from harness.support import REPO, ServiceProcess, free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
SERVICE = "chatbot.chatlog.v1.ChatlogService"
RPCS = [
    "AppendMessages",
    "DeleteUserData",
    "ExportTrainingData",
    "GetRetentionPolicy",
    "GetStats",
    "ListConversations",
    "ListMessages",
    "SearchMessages",
    "SetRetentionPolicy",
]
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def env(**extra: str) -> dict[str, str]:
    return {
        "PYTHONPATH": f"{REPO}:{REPO / 'build' / 'gen' / 'py'}",
        "METRICS_PORT": "0",
        "GRPC_HOST": "127.0.0.1",
        **extra,
    }


def run(*args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.chatlog", *args],
        cwd=REPO,
        env={**os.environ, **env(**extra)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def grpcurl(port: int, *args: str, data: str | None = None) -> str:
    flags = ["-d", data] if data is not None else []
    out = subprocess.run(
        [GRPCURL, "-plaintext", *flags, f"127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_help() -> None:
    out = run("--help")
    assert out.returncode == 0
    assert "serve" in out.stdout and "schema" in out.stdout
    serve = run("serve", "--help")
    assert "CHATLOG_PORT" in serve.stdout and "CHATLOG_BACKEND" in serve.stdout
    schema = run("schema", "--help")
    assert "CASSANDRA_KEYSPACE" in schema.stdout
    assert run("nonsense").returncode == 2


def test_bad_settings_are_named() -> None:
    out = run("serve", CHATLOG_BACKEND="mongodb")
    assert out.returncode == 2
    assert "CHATLOG_BACKEND" in out.stderr
    out = run("serve", CHATLOG_BACKEND="cassandra", CASSANDRA_CONSISTENCY="MOST")
    assert (out.returncode, "CASSANDRA_CONSISTENCY" in out.stderr) == (2, True)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServiceProcess]:
    port = free_port()
    server = ServiceProcess(
        [sys.executable, "-m", "services.chatlog", "serve"],
        env(
            CHATLOG_PORT=str(port),
            CHATLOG_SQLITE_PATH=str(tmp_path / "chatlog.sqlite3"),
            TENANT_ID="acme",
        ),
        tmp_path / "chatlog.log",
        port,
    )
    try:
        server.wait_for_status(SERVING, timeout=30)
        yield server
    finally:
        assert server.stop() == 0, server.tail()


def test_serve_lists_its_rpcs_and_keeps_a_transcript_once(served: ServiceProcess) -> None:
    assert grpcurl(served.port, "list").split() == [
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    assert grpcurl(served.port, "list", SERVICE).split() == [f"{SERVICE}.{rpc}" for rpc in RPCS]
    user = {"tenant_id": "acme", "channel": "CHANNEL_MESSENGER", "user_id": "psid-1"}
    batch = json.dumps(
        {
            "messages": [
                {
                    "user": user,
                    "conversation_id": "conv-1",
                    "message_id": "m_1",
                    "direction": "DIRECTION_INBOUND",
                    "text": "hello",
                    "create_time": "2026-03-02T09:00:00Z",
                },
                {
                    "user": user,
                    "conversation_id": "conv-1",
                    "message_id": "reply-1",
                    "direction": "DIRECTION_OUTBOUND",
                    "text": "hi! how can I help?",
                    "in_reply_to": "m_1",
                    "create_time": "2026-03-02T09:00:01Z",
                },
            ]
        }
    )
    statuses = []
    for _ in range(2):
        reply = json.loads(grpcurl(served.port, f"{SERVICE}/AppendMessages", data=batch))
        statuses.append([r["status"] for r in reply["results"]])
    assert statuses == [
        ["APPEND_STATUS_CREATED", "APPEND_STATUS_CREATED"],
        ["APPEND_STATUS_ALREADY_EXISTS", "APPEND_STATUS_ALREADY_EXISTS"],
    ]
    query = json.dumps({"tenant_id": "acme", "conversation_id": "conv-1"})
    transcript = json.loads(grpcurl(served.port, f"{SERVICE}/ListMessages", data=query))
    assert [m["message_id"] for m in transcript["messages"]] == ["m_1", "reply-1"]


@pytest.mark.cassandra
def test_schema_is_idempotent(cassandra_node: CassandraNode) -> None:
    settings = {"CASSANDRA_PORT": str(cassandra_node.port), "CASSANDRA_KEYSPACE": "chatlog_cli"}
    for _ in range(2):
        out = run("schema", timeout=120, **settings)
        assert out.returncode == 0, out.stderr
        assert "chatlog schema is in place (cassandra: chatlog_cli)" in out.stdout


def test_schema_without_cassandra_fails_fast() -> None:
    started = time.monotonic()
    out = run(
        "schema",
        CASSANDRA_PORT=str(free_port()),
        CASSANDRA_CONNECT_TIMEOUT_SECONDS="1",
    )
    assert out.returncode == 1
    assert "Cassandra cannot answer" in out.stderr
    assert time.monotonic() - started < 30
