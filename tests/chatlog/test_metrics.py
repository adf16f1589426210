"""The chatlog's metrics move with its traffic, per backend and operation."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from tests.chatlog.conftest import Chatlog


def _count(backend: str, operation: str) -> float:
    labels = {"backend": backend, "operation": operation}
    return REGISTRY.get_sample_value("chatlog_store_operation_seconds_count", labels) or 0.0


@pytest.mark.parametrize("operation", ["append", "scan_transcript"])
def test_store_operations_are_timed(chatlog: Chatlog, operation: str) -> None:
    before = _count(chatlog.backend, operation)
    chatlog.append(chatlog.message("metrics-c1", "metrics-m1", at=1_000.0, text="hello"))
    chatlog.transcript("metrics-c1")
    assert _count(chatlog.backend, operation) >= before + 1
