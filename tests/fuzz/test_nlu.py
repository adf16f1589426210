"""Fuzzing the real NluService (the Rasa model): Parse, ParseBatch, GetModel and raw bytes.

A parse takes the model about 12 ms, so these runs are the smallest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from chatbot.nlu.v1 import nlu_service_pb2 as pb
from chatbot.nlu.v1 import nlu_service_pb2_grpc
from hypothesis import strategies as st

from harness.support import ServiceProcess, health_status
from tests.fuzz.budget import LONG_TIMEOUT_S, long_examples, run
from tests.fuzz.calls import OK, RawMethods, check_call
from tests.fuzz.values import copies, raw_bodies, texts, usually

SERVING = 1
SERVICE = pb.DESCRIPTOR.services_by_name["NluService"]
tenant_ids = usually(st.sampled_from(["default", "acme", "globex", ""]), texts)
parse_requests = st.builds(
    pb.ParseRequest,
    text=usually(
        st.sampled_from(["hello", "where is my order 12345", "weather in Paris?", "bye"]), texts
    ),
    tenant_id=tenant_ids,
    language=usually(st.sampled_from(["", "en", "en-US", "EN"]), texts),
)
requests_by_method: dict[str, st.SearchStrategy[Any]] = {
    "Parse": parse_requests,
    "ParseBatch": usually(
        st.builds(pb.ParseBatchRequest, requests=st.lists(parse_requests, max_size=4)),
        st.builds(
            lambda request, size: pb.ParseBatchRequest(requests=copies(request, size)),
            parse_requests,
            st.sampled_from([256, 257]),
        ),
    ),
    "GetModel": st.builds(pb.GetModelRequest, tenant_id=tenant_ids),
}
assert set(requests_by_method) == {m.name for m in SERVICE.methods}
requests = st.sampled_from(sorted(requests_by_method)).flatmap(
    lambda name: st.tuples(st.just(name), requests_by_method[name])
)
raw_requests = st.sampled_from(sorted(requests_by_method)).flatmap(
    lambda name: st.tuples(st.just(name), raw_bodies(requests_by_method[name]))
)


class Nlu:
    def __init__(self, server: ServiceProcess, channel: grpc.Channel) -> None:
        self.server = server
        self.stub = nlu_service_pb2_grpc.NluServiceStub(channel)
        self.raw = RawMethods(channel, SERVICE)

    def call(self, pair: tuple[str, Any]) -> None:
        name, request = pair
        code, response = check_call(getattr(self.stub, name), request)
        if code is OK and name == "Parse":
            assert response.intent.name and response.model_version

    def call_raw(self, pair: tuple[str, bytes]) -> None:
        name, body = pair
        check_call(self.raw[name], body)

    def assert_healthy(self) -> None:
        assert self.server.proc.poll() is None, self.server.tail()
        assert health_status(self.server.port) == SERVING


@pytest.fixture
def nlu(nlu_server: ServiceProcess) -> Iterator[Nlu]:
    with grpc.insecure_channel(f"127.0.0.1:{nlu_server.port}") as channel:
        yield Nlu(nlu_server, channel)


def _requests(nlu: Nlu, examples: int) -> None:
    run("nlu.requests", examples, requests, nlu.call)
    nlu.assert_healthy()


def _raw(nlu: Nlu, examples: int) -> None:
    run("nlu.raw_bytes", examples, raw_requests, nlu.call_raw)
    nlu.assert_healthy()


def test_requests(nlu: Nlu) -> None:
    _requests(nlu, 40)


def test_raw_bytes(nlu: Nlu) -> None:
    _raw(nlu, 100)


@pytest.mark.fuzz
@pytest.mark.timeout(LONG_TIMEOUT_S)
def test_long_requests(nlu: Nlu) -> None:
    _requests(nlu, long_examples("nlu.requests"))


@pytest.mark.fuzz
@pytest.mark.timeout(LONG_TIMEOUT_S)
def test_long_raw_bytes(nlu: Nlu) -> None:
    _raw(nlu, long_examples("nlu.raw_bytes"))
