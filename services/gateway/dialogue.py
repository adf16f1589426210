"""The gateway's one outbound seam: the dialogue service.

`DialogueClient` is the interface the routes use; `GrpcDialogueClient` is the
real one (a channel to DIALOGUE_ADDRESS opened in the app's lifespan). Errors
arrive as the `DialogueError` tree, never as raw gRPC errors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Protocol

import grpc
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as dialogue_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2_grpc

from mesh.channels import open_channel
from services.gateway.errors import (
    DialogueError,
    DialogueFailed,
    DialogueRejected,
    DialogueTimeout,
    DialogueUnavailable,
)

# The contract's maximum batch.
MAX_BATCH = 1000

_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
}
_REJECTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
}


class DialogueClient(Protocol):
    async def submit_events(
        self, events: Sequence[event_pb2.ChatEvent], *, timeout: float
    ) -> Sequence[dialogue_pb2.SubmitEventResult]: ...

    async def converse(
        self, request: dialogue_pb2.ConverseRequest, *, timeout: float
    ) -> dialogue_pb2.ConverseResponse: ...


def error_from_rpc(exc: grpc.aio.AioRpcError) -> DialogueError:
    code = exc.code()
    message = f"dialogue service: {code.name}: {exc.details() or ''}".rstrip(": ")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DialogueTimeout(message, code.name)
    if code in _RETRYABLE:
        return DialogueUnavailable(message, code.name)
    if code in _REJECTED:
        return DialogueRejected(message, code.name)
    return DialogueFailed(message, code.name)


class GrpcDialogueClient:
    """``chatbot.dialogue.v1.DialogueService`` over a mesh channel (request ids included)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel: grpc.aio.Channel | None = None
        self._stub: dialogue_service_pb2_grpc.DialogueServiceAsyncStub | None = None

    async def start(self) -> None:
        # Opened here, in the running loop: a grpc.aio channel belongs to its loop.
        self._channel = open_channel(self.address)
        self._stub = dialogue_service_pb2_grpc.DialogueServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    def _require_stub(self) -> dialogue_service_pb2_grpc.DialogueServiceAsyncStub:
        if self._stub is None:
            raise DialogueUnavailable("dialogue client is not started")
        return self._stub

    async def submit_events(
        self, events: Sequence[event_pb2.ChatEvent], *, timeout: float
    ) -> Sequence[dialogue_pb2.SubmitEventResult]:
        request = dialogue_pb2.SubmitEventsRequest(events=events)
        try:
            response = await self._require_stub().SubmitEvents(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        return list(response.results)

    async def converse(
        self, request: dialogue_pb2.ConverseRequest, *, timeout: float
    ) -> dialogue_pb2.ConverseResponse:
        try:
            return await self._require_stub().Converse(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc


def chunks(
    events: Sequence[event_pb2.ChatEvent], max_events: int, max_bytes: int
) -> Iterator[Sequence[event_pb2.ChatEvent]]:
    """Consecutive slices of at most ``max_events`` events and about ``max_bytes``.

    An event bigger than ``max_bytes`` alone still goes, alone, in its own chunk.
    """
    max_events = max(1, min(max_events, MAX_BATCH))
    start, size = 0, 0
    for index, event in enumerate(events):
        event_size = event.ByteSize() + 8  # the field's tag and length
        if index > start and (index - start >= max_events or size + event_size > max_bytes):
            yield events[start:index]
            start, size = index, 0
        size += event_size
    if start < len(events):
        yield events[start:]


async def submit_all(
    client: DialogueClient,
    events: Sequence[event_pb2.ChatEvent],
    *,
    timeout: float,
    max_events: int,
    max_bytes: int,
) -> list[dialogue_pb2.SubmitEventResult]:
    """Submits the events chunk after chunk, within one overall ``timeout``.

    Chunks go one at a time, in order: a user's events may span two chunks and
    the dialogue service appends to a user's queue in the order it receives.
    A failure part-way raises; retrying the whole batch is safe (what was queued
    comes back DUPLICATE). Every result is checked against its event.
    """
    deadline = time.monotonic() + timeout
    results: list[dialogue_pb2.SubmitEventResult] = []
    for chunk in chunks(events, max_events, max_bytes):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DialogueTimeout("the submission deadline passed between chunks")
        answered = await client.submit_events(chunk, timeout=remaining)
        if len(answered) != len(chunk):
            raise DialogueFailed(
                f"dialogue service answered {len(answered)} results for {len(chunk)} events"
            )
        for event, result in zip(chunk, answered, strict=True):
            if result.event_id != event.event_id:
                raise DialogueFailed("dialogue service answered results out of order")
            if result.status not in _ACKNOWLEDGED:
                raise DialogueFailed(
                    f"dialogue service answered status {result.status} for an event"
                )
        results.extend(answered)
    return results


_ACKNOWLEDGED = {dialogue_pb2.SUBMIT_STATUS_ACCEPTED, dialogue_pb2.SUBMIT_STATUS_DUPLICATE}
