"""The property every fuzzed call must keep, and how to send raw bytes.

A call ends OK, or with a status a client can act on (its request was wrong,
or names something missing) and a message saying why: never UNKNOWN or
INTERNAL, which would mean the server did not expect the request.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

_M = TypeVar("_M", bound=Message)

OK = grpc.StatusCode.OK
CLIENT_ERRORS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


def _shown(request: Any, limit: int = 1500) -> str:
    text = repr(request) if isinstance(request, bytes) else str(request)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_call(
    method: Any, request: Any, *, timeout: float = 30.0, also: Collection[grpc.StatusCode] = ()
) -> tuple[grpc.StatusCode, Any]:
    """Calls ``method``; returns (OK, response) or (a client error code, None).

    ``also``: codes the contract documents for this RPC beyond the client errors
    (a Converse that did not finish within its deadline).
    """
    try:
        return OK, method(request, timeout=timeout)
    except grpc.RpcError as exc:
        error: Any = exc
        code, details = error.code(), error.details()
    assert code in CLIENT_ERRORS or code in also, f"{code}: {details}\n{_shown(request)}"
    assert details, f"{code} without a message\n{_shown(request)}"
    return code, None


class RawMethods:
    """Every method of a service, sending and receiving bytes as they are."""

    def __init__(self, channel: grpc.Channel, service: ServiceDescriptor) -> None:
        self.names = [method.name for method in service.methods]
        self._calls: dict[str, Any] = {
            method.name: channel.unary_unary(f"/{service.full_name}/{method.name}")
            for method in service.methods
        }

    def __getitem__(self, name: str) -> Any:
        return self._calls[name]


def decoded(message_type: type[_M], raw: bytes) -> _M | None:
    """``raw`` as the server reads it, or None when it is not a valid message."""
    try:
        return message_type.FromString(raw)
    except DecodeError:
        return None
