"""The gateway's one outbound seam: the dialogue service.

`DialogueClient` is the interface the routes use; `GrpcDialogueClient` is the
real one (a channel to DIALOGUE_ADDRESS opened in the app's lifespan). Errors
arrive as the `DialogueError` tree, never as raw gRPC errors.

``SubmitEvents`` is all or nothing: one invalid event and the call is refused
(INVALID_ARGUMENT naming the first invalid event's index and field), nothing
queued. `submit_batch` turns that into a verdict per event for the webhook:
it sets a refused event aside and submits the rest again, so one bad event
does not hold up the others (Messenger would retry the batch for an hour).
A transient failure still fails the whole batch, to be retried.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
        _check(chunk, answered)
        results.extend(answered)
    return results


_ACKNOWLEDGED = {dialogue_pb2.SUBMIT_STATUS_ACCEPTED, dialogue_pb2.SUBMIT_STATUS_DUPLICATE}


# The fields the contract names in a refusal; anything else counts as one reason.
_FIELDS = frozenset(
    {
        "event_id",
        "user.tenant_id",
        "user.channel",
        "user.user_id",
        "message.reply_to_mid",
        "reaction.mid",
        "kind",
    }
)
_NAMED = re.compile(r"events\[(\d+)\][.:]?\s*([a-z_.]*[a-z_])")
_MAX_DETAIL = 200


@dataclass(frozen=True)
class Refusal:
    """An event the dialogue service refused as invalid: dropped, not retried."""

    event: event_pb2.ChatEvent
    reason: str  # a bounded label: ``invalid_<field>`` or ``invalid_event``
    detail: str  # the service's words, cut short


@dataclass
class BatchOutcome:
    """Each event's fate: answered (ACCEPTED or DUPLICATE), or refused."""

    results: list[tuple[event_pb2.ChatEvent, dialogue_pb2.SubmitEventResult]] = field(
        default_factory=list
    )
    refused: list[Refusal] = field(default_factory=list)


def _per_event(exc: DialogueRejected) -> bool:
    """A refusal of some event's content, not of how the service is set up.

    A tenant the dialogue service does not know is configuration out of step
    with the gateway's: dropping its events would lose them, so it fails the
    batch and Messenger retries until the two agree.
    """
    return (
        exc.rpc_code == grpc.StatusCode.INVALID_ARGUMENT.name
        and "not a known tenant" not in str(exc)
    )


def _refusal(event: event_pb2.ChatEvent, exc: DialogueRejected) -> Refusal:
    match = _NAMED.search(str(exc))
    name = match.group(2) if match else ""
    reason = "invalid_" + name.replace(".", "_") if name in _FIELDS else "invalid_event"
    return Refusal(event, reason, str(exc)[:_MAX_DETAIL])


def _named_index(exc: DialogueRejected, size: int) -> int | None:
    match = _NAMED.search(str(exc))
    if match is None:
        return None
    index = int(match.group(1))
    return index if index < size else None


def _check(
    events: Sequence[event_pb2.ChatEvent], answered: Sequence[dialogue_pb2.SubmitEventResult]
) -> None:
    if len(answered) != len(events):
        raise DialogueFailed(
            f"dialogue service answered {len(answered)} results for {len(events)} events"
        )
    for event, result in zip(events, answered, strict=True):
        if result.event_id != event.event_id:
            raise DialogueFailed("dialogue service answered results out of order")
        if result.status not in _ACKNOWLEDGED:
            raise DialogueFailed(f"dialogue service answered status {result.status} for an event")


async def submit_batch(
    client: DialogueClient,
    events: Sequence[event_pb2.ChatEvent],
    *,
    timeout: float,
    max_events: int,
    max_bytes: int,
) -> BatchOutcome:
    """Submits the events as `submit_all` does, setting aside the ones refused as invalid.

    A refused call names its first invalid event: that one is set aside and the
    events around it go again, those before it first, so every user's events
    still arrive in order. A refusal that names no event splits the part in
    two, down to single events. Any other failure raises, as in `submit_all`:
    nothing is refused then, and retrying the whole batch is safe.
    """
    deadline = time.monotonic() + timeout
    outcome = BatchOutcome()
    for chunk in chunks(events, max_events, max_bytes):
        parts = [chunk]  # a stack: the next part to send is last
        while parts:
            part = parts.pop()
            if not part:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DialogueTimeout("the submission deadline passed between calls")
            try:
                answered = await client.submit_events(part, timeout=remaining)
            except DialogueRejected as exc:
                if not _per_event(exc):
                    raise
                index = _named_index(exc, len(part))
                if index is not None:
                    outcome.refused.append(_refusal(part[index], exc))
                    parts += [part[index + 1 :], part[:index]]
                elif len(part) == 1:
                    outcome.refused.append(_refusal(part[0], exc))
                else:
                    half = len(part) // 2
                    parts += [part[half:], part[:half]]
                continue
            _check(part, answered)
            outcome.results.extend(zip(part, answered, strict=True))
    return outcome
