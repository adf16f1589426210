"""The dialogue's NLU client: parses asked for together go as one ParseBatch.

Real gRPC servers on free ports, in this process, standing in for the NLU."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from chatbot.common.v1 import nlu_result_pb2
from chatbot.nlu.v1 import nlu_service_pb2 as nlu_pb
from chatbot.nlu.v1 import nlu_service_pb2_grpc

from services.dialogue.clients import GrpcNlu, NluUnavailable

Context = grpc.aio.ServicerContext[Any, Any]


class CountingNlu(nlu_service_pb2_grpc.NluServiceServicer):
    """Answers every text with the intent named by its first word."""

    def __init__(self, *, batches: bool) -> None:
        self.batches = batches
        self.calls: list[tuple[str, int]] = []

    @staticmethod
    def _answer(request: nlu_pb.ParseRequest) -> nlu_pb.ParseResponse:
        return nlu_pb.ParseResponse(
            intent=nlu_result_pb2.Intent(name=request.text.split()[0], confidence=0.9),
            model_version="counting",
        )

    async def Parse(self, request: nlu_pb.ParseRequest, context: Context) -> nlu_pb.ParseResponse:
        self.calls.append(("Parse", 1))
        if request.text.startswith("bad"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad text")
        return self._answer(request)

    async def ParseBatch(
        self, request: nlu_pb.ParseBatchRequest, context: Context
    ) -> nlu_pb.ParseBatchResponse:
        if not self.batches:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no ParseBatch here")
        self.calls.append(("ParseBatch", len(request.requests)))
        if any(r.text.startswith("bad") for r in request.requests):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad text in the batch")
        return nlu_pb.ParseBatchResponse(responses=[self._answer(r) for r in request.requests])

    async def GetModel(
        self, request: nlu_pb.GetModelRequest, context: Context
    ) -> nlu_pb.GetModelResponse:
        return nlu_pb.GetModelResponse()


async def _serve(nlu: CountingNlu) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    nlu_service_pb2_grpc.add_NluServiceServicer_to_server(nlu, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture(params=[True, False], ids=["with-batches", "parse-only"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[CountingNlu, GrpcNlu]]:
    nlu = CountingNlu(batches=request.param)
    server, port = await _serve(nlu)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield nlu, GrpcNlu(channel, timeout_s=5)
    await channel.close()
    await server.stop(0)


async def test_parses_asked_together_go_in_one_batch(
    served: tuple[CountingNlu, GrpcNlu],
) -> None:
    nlu, client = served
    texts = [f"intent{i} some words" for i in range(7)]
    results = await asyncio.gather(*(client.parse(t, "default") for t in texts))
    assert [r.intent.name for r in results] == [f"intent{i}" for i in range(7)]
    if nlu.batches:
        assert nlu.calls == [("ParseBatch", 7)]
    else:
        # An NLU without ParseBatch: told once, then parse by parse.
        assert ("Parse", 1) in nlu.calls and len(nlu.calls) == 7
        nlu.calls.clear()
        await asyncio.gather(*(client.parse(t, "default") for t in texts[:2]))
        assert nlu.calls == [("Parse", 1), ("Parse", 1)]


async def test_a_parse_alone_does_not_wait_for_company(
    served: tuple[CountingNlu, GrpcNlu],
) -> None:
    nlu, client = served
    result = await client.parse("greet hello", "default")
    assert result.intent.name == "greet"
    assert nlu.calls == [("Parse", 1)]


async def test_one_bad_text_fails_alone(served: tuple[CountingNlu, GrpcNlu]) -> None:
    _, client = served
    results = await asyncio.gather(
        client.parse("greet hi", "default"),
        client.parse("bad one", "default"),
        client.parse("bye now", "default"),
        return_exceptions=True,
    )
    assert [getattr(r, "intent", None) and r.intent.name for r in results[::2]] == [  # type: ignore[union-attr]
        "greet",
        "bye",
    ]
    assert isinstance(results[1], NluUnavailable)


async def test_an_unreachable_nlu_fails_every_waiting_parse() -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    client = GrpcNlu(channel, timeout_s=0.5)
    results = await asyncio.gather(
        *(client.parse(f"t{i}", "default") for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, NluUnavailable) for r in results)
    await channel.close()
