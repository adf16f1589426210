"""A small but real ``chatbot.dialogue.v1.DialogueService`` for the gateway's tests
and benchmark, run as its own process::

    python -m harness.dialogue_server --port 0 [--redis-url URL --prefix P]

With Redis it behaves like the real service where the gateway can see it:
it validates events as the contract says (INVALID_ARGUMENT naming the index
and field, nothing queued), deduplicates by (tenant, channel, event_id) with
``SET NX``, and records every accepted call (request id, events) in a Redis
list the tests read. A Redis key switches its mode: ``ok``, ``unavailable``
(every call fails with UNAVAILABLE), ``stall:<seconds>`` (every call waits
first) or ``refuse:<event_id>,<event_id>...`` (those events are invalid, as
an event a newer contract forbids would be). Converse answers a canned reply.
Without Redis it keeps its dedupe set in memory and records nothing: the
benchmark's dialogue that answers at once.

It prints ``listening on <port>`` once it serves, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
import redis.asyncio as aioredis
from chatbot.common.v1 import event_pb2 as ev
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from chatbot.dialogue.v1 import dialogue_service_pb2_grpc

from mesh.server import MeshServer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DialogueService"].full_name
MAX_BATCH = 1000
MAX_TEXT = 2000
MAX_ID = 480
CANNED_REPLY = "Hello from the test dialogue"


def event_problem(event: ev.ChatEvent) -> str | None:
    """The first field the contract finds wrong in the event, and how."""
    if not event.event_id:
        return "event_id missing"
    if not event.user.tenant_id:
        return "user.tenant_id missing"
    if event.user.channel == ev.CHANNEL_UNSPECIFIED:
        return "user.channel missing"
    if not event.user.user_id:
        return "user.user_id missing"
    for name, value in (
        ("event_id", event.event_id),
        ("user.user_id", event.user.user_id),
        ("message.reply_to_mid", event.message.reply_to_mid),
        ("reaction.mid", event.reaction.mid),
    ):
        if len(value) > MAX_ID:
            return f"{name} is over {MAX_ID} characters"
    if event.WhichOneof("kind") is None:
        return "kind missing"
    return None


class Store:
    """Dedupe, mode and call records: in Redis, or in memory when there is none."""

    def __init__(self, url: str | None, prefix: str) -> None:
        self._redis = aioredis.Redis.from_url(url) if url else None
        self._prefix = prefix
        self._seen: set[str] = set()

    async def mode(self) -> str:
        if self._redis is None:
            return "ok"
        value = await self._redis.get(f"{self._prefix}mode")
        if isinstance(value, bytes):
            value = value.decode()
        return value or "ok"

    async def first_time(self, keys: Sequence[str]) -> list[bool]:
        if self._redis is None:
            fresh = [key not in self._seen for key in keys]
            self._seen.update(keys)
            return fresh
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(f"{self._prefix}dedupe:{key}", 1, nx=True, ex=86_400)
            return [bool(ok) for ok in await pipe.execute()]

    async def record(self, method: str, request_id: str, events: Sequence[ev.ChatEvent]) -> None:
        if self._redis is None:
            return
        entry = {
            "method": method,
            "request_id": request_id,
            "events": [base64.b64encode(e.SerializeToString()).decode() for e in events],
        }
        await self._redis.rpush(f"{self._prefix}calls", json.dumps(entry))

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


def _dedupe_key(event: ev.ChatEvent) -> str:
    return f"{event.user.tenant_id}:{event.user.channel}:{event.event_id}"


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return str(value)
    return ""


class FakeDialogue(dialogue_service_pb2_grpc.DialogueServiceServicer):
    def __init__(self, store: Store) -> None:
        self._store = store

    async def _obey_mode(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        mode = await self._store.mode()
        if mode == "unavailable":
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "told to be unavailable")
        if mode.startswith("stall:"):
            await asyncio.sleep(float(mode.partition(":")[2]))

    async def SubmitEvents(
        self, request: pb.SubmitEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitEventsResponse:
        await self._obey_mode(context)
        events = list(request.events)
        if not events or len(events) > MAX_BATCH:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a batch holds 1 to {MAX_BATCH} events, not {len(events)}",
            )
        mode = await self._store.mode()
        refused = set(mode.partition(":")[2].split(",")) if mode.startswith("refuse:") else set()
        for index, event in enumerate(events):
            problem = event_problem(event)
            if problem is None and event.event_id in refused:
                problem = "event_id is refused by this test server"
            if problem:
                await _abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT, f"events[{index}].{problem}"
                )
        fresh = await self._store.first_time([_dedupe_key(e) for e in events])
        await self._store.record("SubmitEvents", _request_id(context), events)
        return pb.SubmitEventsResponse(
            results=[
                pb.SubmitEventResult(
                    event_id=e.event_id,
                    status=pb.SUBMIT_STATUS_ACCEPTED if new else pb.SUBMIT_STATUS_DUPLICATE,
                )
                for e, new in zip(events, fresh, strict=True)
            ]
        )

    async def Converse(
        self, request: pb.ConverseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ConverseResponse:
        await self._obey_mode(context)
        if not request.HasField("event"):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "event is required here")
        event = request.event
        problem = event_problem(event)
        if problem:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"event.{problem}")
        if len(event.message.text) > MAX_TEXT:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "text over the limit")
        (fresh,) = await self._store.first_time([_dedupe_key(event)])
        await self._store.record("Converse", _request_id(context), [event])
        said = event.message.text or event.postback.payload
        return pb.ConverseResponse(
            event_id=event.event_id,
            duplicate=not fresh,
            replies=[
                ev.Reply(
                    reply_id=f"{event.event_id}:0",
                    text=CANNED_REPLY,
                    quick_replies=[ev.QuickReply(title="Again", payload="AGAIN")],
                ),
                ev.Reply(reply_id=f"{event.event_id}:1", text=f"you sent {len(said)} characters"),
            ],
        )

    async def _unimplemented(self, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
        await _abort(context, grpc.StatusCode.UNIMPLEMENTED, "not in the test dialogue")

    async def GetConversationState(
        self, request: pb.GetConversationStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetConversationStateResponse:
        await self._unimplemented(context)

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListDeadLettersResponse:
        await self._unimplemented(context)

    async def ReplayDeadLetter(
        self, request: pb.ReplayDeadLetterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReplayDeadLetterResponse:
        await self._unimplemented(context)

    async def SetHandoff(
        self, request: pb.SetHandoffRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SetHandoffResponse:
        await self._unimplemented(context)

    async def SendAgentMessage(
        self, request: pb.SendAgentMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SendAgentMessageResponse:
        await self._unimplemented(context)


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, details: str
) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("abort returned")


async def serve(port: int, redis_url: str | None, prefix: str) -> None:
    store = Store(redis_url, prefix)
    server = MeshServer("dialogue", host="127.0.0.1", port=port, service_names=[SERVICE_NAME])
    dialogue_service_pb2_grpc.add_DialogueServiceServicer_to_server(
        FakeDialogue(store), server.grpc
    )
    bound = await server.start()
    await server.set_serving(True)
    print(f"listening on {bound}", flush=True)
    try:
        await server.wait_for_termination_signal()
    finally:
        await server.stop(1.0)
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.dialogue_server",
        description="A test DialogueService: validates, dedupes and records; can fail or stall.",
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: any free one)")
    parser.add_argument("--redis-url", help="Redis for dedupe, mode and records (else memory)")
    parser.add_argument("--prefix", default="fake-dialogue:", help="prefix of its Redis keys")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.redis_url, args.prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
