"""Tracing across the mesh with OpenTelemetry.

Off by default at no cost: spans are recorded and exported (OTLP over gRPC)
only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the SDK is installed
(the NLU's Python 3.10 environment has neither, so its hop shows as the
dialogue's client span). The trace context travels in gRPC metadata
(``traceparent``) and, inside the dialogue service, in each queued item, so a
trace spans a message's wait in its user's queue.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # the API is optional (not in the NLU environment)
    trace = None  # type: ignore[assignment]

_enabled = False


def setup_tracing(service: str) -> bool:
    """Exports spans when an OTLP endpoint is configured; returns whether it does."""
    global _enabled
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint or trace is None:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        return False
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, insecure=True), schedule_delay_millis=500
        )
    )
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def shutdown_tracing() -> None:
    if _enabled and trace is not None:
        provider = trace.get_tracer_provider()
        flush = getattr(provider, "shutdown", None)
        if flush:
            flush()


def enabled() -> bool:
    return _enabled


def inject(carrier: MutableMapping[str, str]) -> None:
    """Writes the current trace context (``traceparent``) into ``carrier``."""
    if _enabled and trace is not None:
        propagate.inject(carrier)


def current_traceparent() -> str:
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent", "")


@contextmanager
def span(
    name: str,
    *,
    parent: Mapping[str, str] | None = None,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """A span named ``name``; ``parent`` is a carrier (``traceparent``) to continue."""
    if not _enabled or trace is None:
        yield
        return
    token = None
    if parent:
        token = otel_context.attach(propagate.extract(dict(parent)))
    span_kind = {
        "server": trace.SpanKind.SERVER,
        "client": trace.SpanKind.CLIENT,
        "consumer": trace.SpanKind.CONSUMER,
        "producer": trace.SpanKind.PRODUCER,
    }.get(kind, trace.SpanKind.INTERNAL)
    try:
        with trace.get_tracer("chatbot").start_as_current_span(
            name, kind=span_kind, attributes=dict(attributes or {})
        ):
            yield
    finally:
        if token is not None:
            otel_context.detach(token)
