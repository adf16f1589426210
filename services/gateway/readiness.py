"""Readiness: are the services behind the gateway healthy (``grpc.health.v1``)?"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.channels import open_channel

UNREACHABLE = "UNREACHABLE"
SERVING = "SERVING"


class Readiness(Protocol):
    async def check(self) -> dict[str, str]:
        """Each dependency's health status name (SERVING, NOT_SERVING, UNREACHABLE...)."""
        ...


class GrpcReadiness:
    """Asks each dependency's health service, all at once, within ``timeout``."""

    def __init__(self, targets: Mapping[str, str], timeout: float) -> None:
        self._targets = dict(targets)
        self._timeout = timeout
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def start(self) -> None:
        self._channels = {name: open_channel(address) for name, address in self._targets.items()}

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()

    async def _one(self, name: str) -> str:
        channel = self._channels.get(name)
        if channel is None:
            return UNREACHABLE
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                return "TIMEOUT"
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                return UNREACHABLE
            return exc.code().name
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def check(self) -> dict[str, str]:
        names = list(self._targets)
        statuses = await asyncio.gather(*(self._one(name) for name in names))
        return dict(zip(names, statuses, strict=True))
