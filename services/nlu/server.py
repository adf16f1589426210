"""Runs the NLU service: binds at once, loads models in the background.

The server answers health checks from its first second: NOT_SERVING while the
default model loads (TensorFlow takes tens of seconds), SERVING after. A
missing model is a clear log line and a NOT_SERVING server, never a crash loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from chatbot.nlu.v1 import nlu_service_pb2, nlu_service_pb2_grpc

from mesh import Env, get_logger
from mesh.metrics import serve_metrics
from mesh.server import MeshServer
from mesh.tenants import Tenants
from services.nlu import metrics, runtime
from services.nlu.backend import NluBackend, RasaBackend
from services.nlu.registry import ModelRegistry
from services.nlu.servicer import Limits, NluServicer
from services.nlu.training import (
    DEFAULT_CONFIG,
    DEFAULT_DATA,
    default_models_dir,
    model_path_for,
    model_version,
)

_log = get_logger("nlu.server")
SERVICE_NAME = nlu_service_pb2.DESCRIPTOR.services_by_name["NluService"].full_name


@dataclass(frozen=True)
class NluSettings:
    host: str
    port: int
    metrics_port: int
    model_path: Path
    limits: Limits
    grace: float
    tf_threads: int

    @classmethod
    def from_env(cls, env: Env | None = None) -> NluSettings:
        env = env or Env()
        explicit = env.optional("NLU_MODEL")
        model = (
            Path(explicit)
            if explicit
            else model_path_for(model_version(DEFAULT_CONFIG, DEFAULT_DATA), default_models_dir())
        )
        return cls(
            host=env.string("GRPC_HOST", "127.0.0.1"),
            port=env.integer("NLU_PORT", 50052, minimum=0),
            metrics_port=env.integer("METRICS_PORT", 9052, minimum=0),
            model_path=model,
            limits=Limits(
                max_text_length=env.integer("NLU_MAX_TEXT_LENGTH", 2000, minimum=1),
                max_batch=env.integer("NLU_MAX_BATCH", 256, minimum=1),
            ),
            grace=env.number("SHUTDOWN_GRACE_SECONDS", 10.0),
            tf_threads=env.integer("NLU_TF_THREADS", 1, minimum=0),
        )


async def _load(path: Path) -> NluBackend:
    return await asyncio.to_thread(RasaBackend, path)


async def load_models(
    server: MeshServer, registry: ModelRegistry, settings: NluSettings, tenants: Tenants
) -> None:
    if not settings.model_path.exists():
        _log.error(
            "no NLU model: the server stays NOT_SERVING until restarted with one "
            "(run `make train`, or set NLU_MODEL)",
            extra={"model_path": str(settings.model_path)},
        )
        return
    _log.info("loading the default model", extra={"model_path": str(settings.model_path)})
    # Imports TensorFlow: off the event loop, like the load, so health answers meanwhile.
    await asyncio.to_thread(runtime.prepare, settings.tf_threads)
    default = await _load(settings.model_path)
    registry.set_default(default)
    metrics.MODEL.labels("", default.info.version).set(1)
    # Serve only once every tenant's model is in: a replica that reports
    # SERVING can answer every tenant.
    for tenant in tenants:
        if not tenant.nlu_model:
            continue
        try:
            own = await _load(Path(tenant.nlu_model))
            registry.set_tenant_model(tenant.id, own)
            metrics.MODEL.labels(tenant.id, own.info.version).set(1)
            _log.info("tenant model loaded", extra={"tenant": tenant.id})
        except Exception:
            _log.exception("tenant model failed to load", extra={"tenant": tenant.id})
    await server.set_serving(True)
    _log.info("serving", extra={"model_path": str(settings.model_path)})


async def serve(settings: NluSettings, tenants: Tenants) -> None:
    registry = ModelRegistry(tenants)
    server = MeshServer("nlu", host=settings.host, port=settings.port, service_names=[SERVICE_NAME])
    nlu_service_pb2_grpc.add_NluServiceServicer_to_server(
        NluServicer(registry, settings.limits), server.grpc
    )
    serve_metrics(settings.metrics_port)
    port = await server.start()
    print(f"NLU service listening on {settings.host}:{port}", flush=True)
    loading = asyncio.create_task(load_models(server, registry, settings, tenants))
    try:
        await server.wait_for_termination_signal()
    finally:
        loading.cancel()
        await server.stop(settings.grace)
