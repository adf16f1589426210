"""The real NLU server for the test session, in its own Python 3.10
environment, with the model `make train` built from the repository's data."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from grpc_health.v1 import health_pb2

from harness.support import REPO, ServiceProcess, free_port

SERVING = health_pb2.HealthCheckResponse.SERVING


def nlu_python() -> str:
    python = os.environ.get("NLU_PYTHON")
    if not python or not Path(python).exists():
        pytest.fail("NLU_PYTHON must name the NLU environment's python (run through `make test`)")
    return python


def nlu_env(**extra: str) -> dict[str, str]:
    return {
        "PYTHONPATH": f"{REPO}:{REPO / 'build' / 'gen' / 'nlu'}",
        "RASA_TELEMETRY_ENABLED": "false",
        "METRICS_PORT": "0",
        "GRPC_HOST": "127.0.0.1",
        **extra,
    }


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The default model's path, as the server resolves it."""
    out = subprocess.run(
        [
            nlu_python(),
            "-c",
            "from services.nlu.server import NluSettings; print(NluSettings.from_env().model_path)",
        ],
        cwd=REPO,
        env={**os.environ, **nlu_env()},
        capture_output=True,
        text=True,
        check=True,
    )
    path = Path(out.stdout.strip())
    if not path.exists():
        pytest.fail(f"no trained model at {path}: run `make train`")
    return path


@pytest.fixture(scope="session")
def nlu_server(
    default_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The real server with three tenants: two on the default model, one on its own."""
    work = tmp_path_factory.mktemp("nlu")
    own_model = work / "globex-model.tar.gz"
    shutil.copyfile(default_model, own_model)
    tenants = work / "tenants.yml"
    tenants.write_text(
        yaml.safe_dump(
            {
                "tenants": [
                    {"id": "default"},
                    {"id": "acme", "page_id": "111"},
                    {"id": "globex", "page_id": "222", "nlu_model": own_model.name},
                ]
            }
        )
    )
    port, metrics_port = free_port(), free_port()
    server = ServiceProcess(
        [nlu_python(), "-m", "services.nlu", "serve"],
        nlu_env(
            NLU_PORT=str(port),
            TENANTS_FILE=str(tenants),
            NLU_MAX_TEXT_LENGTH="500",
            METRICS_PORT=str(metrics_port),
        ),
        work / "nlu.log",
        port,
    )
    server.metrics_port = metrics_port
    try:
        server.wait_for_status(SERVING, timeout=240)
        yield server
    finally:
        server.stop()
