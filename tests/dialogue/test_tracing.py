"""One message, one connected trace: the submission, its wait in the queue,
the NLU call, the chatlog write and the reply, exported over OTLP to a real
collector stand-in."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from harness.standins import GraphApi
from harness.support import free_port
from tests.dialogue.conftest import Replicas, message_event, wait_for


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)  # type: ignore[no-untyped-call]
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for resource_spans in request.resource_spans:
                for scope in resource_spans.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    yield server
    server.server.stop(0)


def test_one_message_makes_one_connected_trace(
    replicas: Replicas, graph_api: GraphApi, collector: Collector
) -> None:
    replicas.start(1, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}")
    trace_id, root_span = secrets.token_hex(16), secrets.token_hex(8)
    replicas.stub().SubmitEvents(
        pb.SubmitEventsRequest(events=[message_event("traced", "m_t", "hello")]),
        metadata=(("traceparent", f"00-{trace_id}-{root_span}-01"),),
        timeout=10,
    )
    wait_for(lambda: len(graph_api.sent) == 1)
    names = {
        "chatbot.dialogue.v1.DialogueService/SubmitEvents",
        "dialogue.process",
        "chatbot.nlu.v1.NluService/Parse",
        "chatbot.chatlog.v1.ChatlogService/AppendMessages",
        "messenger.send",
    }

    def ours() -> list[Span]:
        with collector.lock:
            return [s for s in collector.spans if s.trace_id.hex() == trace_id]

    wait_for(lambda: names <= {s.name for s in ours()}, timeout=20)
    spans = {s.span_id.hex(): s for s in ours()}
    # Every span hangs, through its parents, from the caller's span.
    for span in spans.values():
        parent = span.parent_span_id.hex()
        while parent in spans:
            parent = spans[parent].parent_span_id.hex()
        assert parent == root_span, span.name
    by_name = {s.name: s for s in spans.values()}
    process = by_name["dialogue.process"]
    submit = by_name["chatbot.dialogue.v1.DialogueService/SubmitEvents"]
    assert process.parent_span_id == submit.span_id
