"""The gateway under test: a real uvicorn process talking gRPC to a real
DialogueService process, with the session's real Redis.

``dialogue_address`` is the one fixture to switch when the real dialogue
service lands (start ``python -m services.dialogue serve`` there instead);
tests that look at what the dialogue service received use ``dialogue``, the
test server's own records.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harness.redis_servers import RedisServer
from tests.gateway.harness import LOG_ID_KEY, TENANTS, DialogueServer, Gateway


@pytest.fixture(scope="session")
def gateway_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="session")
def tenants_file(gateway_workdir: Path) -> Path:
    path = gateway_workdir / "tenants.yml"
    path.write_text(yaml.safe_dump(TENANTS), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def dialogue_server(redis_server: RedisServer, gateway_workdir: Path) -> Iterator[DialogueServer]:
    server = DialogueServer(gateway_workdir, redis_server.url)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dialogue_address(dialogue_server: DialogueServer) -> str:
    """Where the gateway sends events: the one place to point at the real service."""
    return dialogue_server.address


@pytest.fixture
def dialogue(dialogue_server: DialogueServer) -> Iterator[DialogueServer]:
    """The test dialogue service, emptied and healthy for each test."""
    dialogue_server.reset()
    yield dialogue_server
    dialogue_server.reset()


def gateway_env(
    tenants_file: Path, dialogue_address: str, redis_url: str, **extra: str
) -> dict[str, str]:
    return {
        "TENANTS_FILE": str(tenants_file),
        "DIALOGUE_ADDRESS": dialogue_address,
        # Any gRPC server with a health service answers for these two here.
        "CHATLOG_ADDRESS": dialogue_address,
        "NLU_ADDRESS": dialogue_address,
        "REDIS_URL": redis_url,
        "GATEWAY_SUBMIT_TIMEOUT": "1",
        "GATEWAY_CONVERSE_TIMEOUT": "1",
        "GATEWAY_USER_RATE_LIMIT": "100000",
        "GATEWAY_TENANT_RATE_LIMIT": "1000000",
        "LOG_LEVEL": "INFO",
        "LOG_ID_KEY": LOG_ID_KEY,
        **extra,
    }


@pytest.fixture(scope="session")
def gateway(
    gateway_workdir: Path, tenants_file: Path, dialogue_address: str, redis_server: RedisServer
) -> Iterator[Gateway]:
    process = Gateway(
        gateway_workdir, gateway_env(tenants_file, dialogue_address, redis_server.url)
    )
    yield process
    process.stop()
