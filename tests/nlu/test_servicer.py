"""The NLU servicer's contract over a hand-written backend, on a real grpc.aio server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import grpc
import pytest
from chatbot.nlu.v1 import nlu_service_pb2 as pb
from chatbot.nlu.v1 import nlu_service_pb2_grpc

from mesh.server import MeshServer
from mesh.tenants import Tenant, Tenants
from services.nlu.backend import EntitySpan, IntentScore, ModelInfo, ParseResult
from services.nlu.registry import ModelRegistry
from services.nlu.servicer import Limits, NluServicer

if TYPE_CHECKING:
    from chatbot.nlu.v1.nlu_service_pb2_grpc import NluServiceAsyncStub as Stub


class KeywordBackend:
    """Answers by keyword and records how many texts each model run took."""

    def __init__(self, version: str, delay: float = 0.0) -> None:
        self.runs: list[int] = []
        self.delay = delay
        self._info = ModelInfo(
            version=version,
            language="en",
            intents=["greet", "order_status"],
            entities=["order_id"],
            fallback_threshold=0.4,
            fallback_intent="nlu_fallback",
            train_time=1_700_000_000.25,
            path=f"/models/{version}.tar.gz",
            pipeline=["KeywordClassifier"],
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def parse_many(self, texts: Sequence[str]) -> list[ParseResult]:
        self.runs.append(len(texts))
        time.sleep(self.delay)
        out = []
        for text in texts:
            if "boom" in text:
                raise RuntimeError("model failure")
            if "order" in text:
                digits = "".join(c for c in text if c.isdigit())
                start = text.find(digits)
                entities = [EntitySpan("order_id", digits, start, start + len(digits), 0.9)]
                ranking = [IntentScore("order_status", 0.9), IntentScore("greet", 0.1)]
                out.append(ParseResult(text, ranking[0], ranking, entities if digits else []))
            elif "hi" in text:
                ranking = [IntentScore("greet", 0.95), IntentScore("order_status", 0.05)]
                out.append(ParseResult(text, ranking[0], ranking))
            else:
                ranking = [IntentScore("greet", 0.3), IntentScore("order_status", 0.2)]
                out.append(ParseResult(text, IntentScore("nlu_fallback", 0.4), ranking))
        return out


@pytest.fixture
def default_backend() -> KeywordBackend:
    return KeywordBackend("v-default")


@pytest.fixture
def registry(default_backend: KeywordBackend) -> ModelRegistry:
    tenants = Tenants(
        [Tenant("default"), Tenant("acme"), Tenant("globex", nlu_model="/models/globex.tar.gz")]
    )
    registry = ModelRegistry(tenants)
    registry.set_default(default_backend)
    return registry


@pytest.fixture
async def stub(registry: ModelRegistry) -> AsyncIterator[Stub]:
    server = MeshServer(
        "nlu", host="127.0.0.1", port=0, service_names=["chatbot.nlu.v1.NluService"]
    )
    servicer = NluServicer(registry, Limits(max_text_length=50, max_batch=4))
    nlu_service_pb2_grpc.add_NluServiceServicer_to_server(servicer, server.grpc)
    port = await server.start()
    await server.set_serving(True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield nlu_service_pb2_grpc.NluServiceStub(channel)
    await server.stop(0)


async def test_parse_maps_every_field(stub: Stub) -> None:
    reply = await stub.Parse(pb.ParseRequest(text="my order 12345"))
    assert reply.intent.name == "order_status"
    assert reply.intent.confidence == pytest.approx(0.9)
    assert [i.name for i in reply.intent_ranking] == ["order_status", "greet"]
    assert [(e.entity, e.value, e.start, e.end) for e in reply.entities] == [
        ("order_id", "12345", 9, 14)
    ]
    assert reply.model_version == "v-default"
    assert not reply.is_fallback


async def test_fallback_is_flagged(stub: Stub) -> None:
    reply = await stub.Parse(pb.ParseRequest(text="mumble"))
    assert reply.is_fallback
    assert reply.intent.name == "nlu_fallback"
    assert [i.name for i in reply.intent_ranking] == ["greet", "order_status"]


async def test_concurrent_parses_share_one_model_run(
    stub: Stub, default_backend: KeywordBackend
) -> None:
    # Calls arriving while a run is busy wait for it, then share the next one.
    default_backend.delay = 0.2
    texts = [f"hi {i}" for i in range(6)]
    replies = await asyncio.gather(*(stub.Parse(pb.ParseRequest(text=t)) for t in texts))
    assert [r.text for r in replies] == texts
    assert sum(default_backend.runs) == 6
    assert len(default_backend.runs) < 6
    assert max(default_backend.runs) > 1


async def test_batch_is_split_by_model_and_kept_in_order(
    stub: Stub, registry: ModelRegistry
) -> None:
    globex = KeywordBackend("v-globex")
    registry.set_tenant_model("globex", globex)
    reply = await stub.ParseBatch(
        pb.ParseBatchRequest(
            requests=[
                pb.ParseRequest(text="hi"),
                pb.ParseRequest(text="order 11111", tenant_id="globex"),
                pb.ParseRequest(text="order 22222", tenant_id="acme"),
            ]
        )
    )
    assert [r.model_version for r in reply.responses] == ["v-default", "v-globex", "v-default"]
    assert [r.entities[0].value for r in reply.responses[1:]] == ["11111", "22222"]
    assert globex.runs == [1]


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (pb.ParseRequest(text=""), grpc.StatusCode.INVALID_ARGUMENT, "text is empty"),
        (pb.ParseRequest(text="x" * 51), grpc.StatusCode.INVALID_ARGUMENT, "limit is 50"),
        (pb.ParseRequest(text="hi", language="fr"), grpc.StatusCode.INVALID_ARGUMENT, "'fr'"),
        (pb.ParseRequest(text="hi", tenant_id="initech"), grpc.StatusCode.NOT_FOUND, "initech"),
        (pb.ParseRequest(text="hi", tenant_id="globex"), grpc.StatusCode.UNAVAILABLE, "globex"),
    ],
)
async def test_refusals(
    stub: Stub,
    request_: pb.ParseRequest,
    code: grpc.StatusCode,
    fragment: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Parse(request_)
    assert caught.value.code() == code
    assert fragment in (caught.value.details() or "")


async def test_language_tags_match_by_primary_subtag(
    stub: Stub,
) -> None:
    reply = await stub.Parse(pb.ParseRequest(text="hi", language="en-GB"))
    assert reply.intent.name == "greet"


async def test_batch_limit(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ParseBatch(pb.ParseBatchRequest(requests=[pb.ParseRequest(text="hi")] * 5))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit is 4" in (caught.value.details() or "")


async def test_a_model_failure_fails_only_its_run(
    stub: Stub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Parse(pb.ParseRequest(text="boom"))
    assert caught.value.code() == grpc.StatusCode.UNKNOWN
    assert (await stub.Parse(pb.ParseRequest(text="hi"))).intent.name == "greet"


async def test_not_ready_until_the_default_model_loads() -> None:
    registry = ModelRegistry(Tenants([Tenant("default")]))
    server = MeshServer(
        "nlu", host="127.0.0.1", port=0, service_names=["chatbot.nlu.v1.NluService"]
    )
    nlu_service_pb2_grpc.add_NluServiceServicer_to_server(NluServicer(registry), server.grpc)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = nlu_service_pb2_grpc.NluServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetModel(pb.GetModelRequest())
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            registry.set_default(KeywordBackend("v1"))
            model = await stub.GetModel(pb.GetModelRequest())
            assert model.model_version == "v1"
            assert model.train_time.ToMilliseconds() == 1_700_000_000_250
    finally:
        await server.stop(0)
