"""``chatbot.nlu.v1.NluService`` over a ``ModelRegistry``.

Concurrent Parse calls are gathered into one model run (``_Batcher``): a
Rasa graph run over many messages costs less than one run per message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from chatbot.common.v1 import nlu_result_pb2
from chatbot.nlu.v1 import nlu_service_pb2, nlu_service_pb2_grpc

from mesh import get_logger
from mesh.timestamps import timestamp_ms
from services.nlu import metrics
from services.nlu.backend import NluBackend, ParseResult
from services.nlu.registry import ModelNotReady, ModelRegistry, UnknownTenant

_log = get_logger("nlu.servicer")


@dataclass(frozen=True)
class Limits:
    max_text_length: int = 2000
    max_batch: int = 256


class InvalidRequest(Exception):
    pass


def _to_proto(result: ParseResult, version: str) -> nlu_service_pb2.ParseResponse:
    return nlu_service_pb2.ParseResponse(
        text=result.text,
        intent=nlu_result_pb2.Intent(name=result.intent.name, confidence=result.intent.confidence),
        intent_ranking=[
            nlu_result_pb2.Intent(name=i.name, confidence=i.confidence) for i in result.ranking
        ],
        entities=[
            nlu_result_pb2.Entity(
                entity=e.entity,
                value=e.value,
                start=e.start,
                end=e.end,
                confidence=e.confidence,
                extractor=e.extractor,
                role=e.role,
                group=e.group,
            )
            for e in result.entities
        ],
        model_version=version,
        is_fallback=result.is_fallback,
    )


class _Batcher:
    """Runs parses one model run at a time, in a worker thread.

    Parses that arrive while a run is going on wait for it and then go
    together in the next run (one per backend): batches grow with the load and
    add no delay when the service is quiet. The event loop stays free to take
    requests meanwhile.
    """

    def __init__(self, max_batch: int) -> None:
        self._max_batch = max_batch
        self._pending: list[tuple[NluBackend, str, asyncio.Future[ParseResult]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def parse(self, backend: NluBackend, text: str) -> ParseResult:
        future: asyncio.Future[ParseResult] = asyncio.get_running_loop().create_future()
        self._pending.append((backend, text, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            pending, self._pending = self._pending, []
            groups: dict[int, list[tuple[NluBackend, str, asyncio.Future[ParseResult]]]] = {}
            for item in pending:
                groups.setdefault(id(item[0]), []).append(item)
            for group in groups.values():
                for start in range(0, len(group), self._max_batch):
                    await self._run(group[start : start + self._max_batch])

    @staticmethod
    async def _run(chunk: list[tuple[NluBackend, str, asyncio.Future[ParseResult]]]) -> None:
        backend = chunk[0][0]
        metrics.BATCH_SIZE.observe(len(chunk))
        started = time.perf_counter()
        try:
            results = await asyncio.to_thread(backend.parse_many, [text for _, text, _ in chunk])
        except Exception as exc:
            for _, _, future in chunk:
                if not future.done():
                    future.set_exception(exc)
            return
        metrics.PARSE_SECONDS.observe(time.perf_counter() - started)
        for (_, _, future), result in zip(chunk, results, strict=True):
            metrics.TEXTS.labels("fallback" if result.is_fallback else "understood").inc()
            if not future.done():
                future.set_result(result)


class NluServicer(nlu_service_pb2_grpc.NluServiceServicer):
    def __init__(self, registry: ModelRegistry, limits: Limits | None = None) -> None:
        self._registry = registry
        self._limits = limits or Limits()
        self._batcher = _Batcher(self._limits.max_batch)

    def _check(self, request: nlu_service_pb2.ParseRequest, where: str) -> NluBackend:
        text = request.text
        if not text.strip():
            raise InvalidRequest(f"{where}text is empty")
        if len(text) > self._limits.max_text_length:
            raise InvalidRequest(
                f"{where}text has {len(text)} characters; the limit is "
                f"{self._limits.max_text_length}"
            )
        backend = self._registry.for_tenant(request.tenant_id)
        language = request.language.split("-")[0].lower()
        if language and language != backend.info.language:
            raise InvalidRequest(
                f"{where}language {request.language!r} is not served; "
                f"the model's language is {backend.info.language!r}"
            )
        return backend

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> NoReturn:
        code = grpc.StatusCode.UNKNOWN
        if isinstance(exc, InvalidRequest):
            code = grpc.StatusCode.INVALID_ARGUMENT
        elif isinstance(exc, UnknownTenant):
            code = grpc.StatusCode.NOT_FOUND
        elif isinstance(exc, ModelNotReady):
            code = grpc.StatusCode.UNAVAILABLE
        await context.abort(code, str(exc))
        raise AssertionError("abort returned")

    async def Parse(
        self, request: nlu_service_pb2.ParseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> nlu_service_pb2.ParseResponse:
        try:
            backend = self._check(request, "")
        except (InvalidRequest, UnknownTenant, ModelNotReady) as exc:
            await self._abort(context, exc)
        result = await self._batcher.parse(backend, request.text)
        return _to_proto(result, backend.info.version)

    async def ParseBatch(
        self,
        request: nlu_service_pb2.ParseBatchRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> nlu_service_pb2.ParseBatchResponse:
        items: Sequence[nlu_service_pb2.ParseRequest] = request.requests
        try:
            if not items:
                raise InvalidRequest("requests is empty")
            if len(items) > self._limits.max_batch:
                raise InvalidRequest(
                    f"requests has {len(items)} items; the limit is {self._limits.max_batch}"
                )
            backends = [self._check(item, f"requests[{i}]: ") for i, item in enumerate(items)]
        except (InvalidRequest, UnknownTenant, ModelNotReady) as exc:
            await self._abort(context, exc)
        results = await asyncio.gather(
            *(self._batcher.parse(b, item.text) for b, item in zip(backends, items, strict=True))
        )
        return nlu_service_pb2.ParseBatchResponse(
            responses=[_to_proto(r, b.info.version) for r, b in zip(results, backends, strict=True)]
        )

    async def GetModel(
        self, request: nlu_service_pb2.GetModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> nlu_service_pb2.GetModelResponse:
        try:
            backend = self._registry.for_tenant(request.tenant_id)
        except (UnknownTenant, ModelNotReady) as exc:
            await self._abort(context, exc)
        info = backend.info
        return nlu_service_pb2.GetModelResponse(
            model_version=info.version,
            tenant_id=request.tenant_id,
            language=info.language,
            intents=info.intents,
            entities=info.entities,
            fallback_threshold=info.fallback_threshold,
            fallback_intent=info.fallback_intent,
            train_time=timestamp_ms(round(info.train_time * 1000)),
            model_path=info.path,
            pipeline=info.pipeline,
        )
