"""The real NLU server, its real model, over gRPC."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from chatbot.nlu.v1 import nlu_service_pb2 as pb
from chatbot.nlu.v1 import nlu_service_pb2_grpc
from grpc_health.v1 import health_pb2

from harness.support import REPO, ServiceProcess, free_port, health_status, scrape
from tests.nlu_process import nlu_env, nlu_python

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stub(nlu_server: ServiceProcess) -> Iterator[nlu_service_pb2_grpc.NluServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{nlu_server.port}") as channel:
        yield nlu_service_pb2_grpc.NluServiceStub(channel)


def test_order_status_with_order_id(stub: nlu_service_pb2_grpc.NluServiceStub) -> None:
    reply = stub.Parse(pb.ParseRequest(text="where is my order 12345"), timeout=10)
    assert reply.intent.name == "order_status"
    assert reply.intent.confidence > 0.5
    assert not reply.is_fallback
    assert [(e.entity, e.value) for e in reply.entities] == [("order_id", "12345")]
    entity = reply.entities[0]
    assert reply.text[entity.start : entity.end] == "12345"
    assert entity.extractor == "DIETClassifier"
    assert reply.model_version


def test_weather_with_city(stub: nlu_service_pb2_grpc.NluServiceStub) -> None:
    reply = stub.Parse(pb.ParseRequest(text="what's the weather in Paris", language="en"))
    assert reply.intent.name == "weather"
    assert ("city", "Paris") in [(e.entity, e.value) for e in reply.entities]


def test_ranking_is_sorted_and_names_known_intents(
    stub: nlu_service_pb2_grpc.NluServiceStub,
) -> None:
    reply = stub.Parse(pb.ParseRequest(text="hello there"))
    model = stub.GetModel(pb.GetModelRequest())
    confidences = [i.confidence for i in reply.intent_ranking]
    assert confidences == sorted(confidences, reverse=True)
    known = set(model.intents) | {model.fallback_intent}
    assert {i.name for i in reply.intent_ranking} <= known
    assert reply.intent.name == "greet"


def test_low_confidence_falls_back_with_ranking_intact(
    stub: nlu_service_pb2_grpc.NluServiceStub,
) -> None:
    model = stub.GetModel(pb.GetModelRequest())
    texts = ["zxqv plorf", "blorb wug fnord", "asdf qwer zxcv", "qqq", "kkkk llll"]
    replies = [stub.Parse(pb.ParseRequest(text=t)) for t in texts]
    fallbacks = [r for r in replies if r.is_fallback]
    assert fallbacks, [(r.text, r.intent.name, r.intent.confidence) for r in replies]
    for reply in fallbacks:
        assert reply.intent.name == model.fallback_intent == "nlu_fallback"
        real = [i for i in reply.intent_ranking if i.name != "nlu_fallback"]
        assert real, "the model's own ranking is kept"
        assert real[0].confidence < model.fallback_threshold + 0.05 or len(real) > 1


def test_parse_batch_answers_in_order(stub: nlu_service_pb2_grpc.NluServiceStub) -> None:
    texts = ["hi", "where is my order 55555", "thanks a lot", "bye", "weather in Berlin"]
    batch = stub.ParseBatch(pb.ParseBatchRequest(requests=[pb.ParseRequest(text=t) for t in texts]))
    assert [r.text for r in batch.responses] == texts
    assert [r.intent.name for r in batch.responses] == [
        "greet",
        "order_status",
        "thanks",
        "goodbye",
        "weather",
    ]
    single = [stub.Parse(pb.ParseRequest(text=t)) for t in texts]
    for one, batched in zip(single, batch.responses, strict=True):
        assert one.intent.name == batched.intent.name
        assert one.intent.confidence == pytest.approx(batched.intent.confidence, abs=1e-4)


def test_get_model_describes_the_default_model(stub: nlu_service_pb2_grpc.NluServiceStub) -> None:
    model = stub.GetModel(pb.GetModelRequest())
    assert model.language == "en"
    assert {"greet", "order_status", "weather", "human_handoff"} <= set(model.intents)
    assert set(model.entities) == {"city", "order_id"}
    assert 0 < model.fallback_threshold < 1
    assert "DIETClassifier" in model.pipeline
    assert model.train_time.seconds > 0
    assert model.model_version == stub.Parse(pb.ParseRequest(text="hi")).model_version


def test_tenants_select_their_models(stub: nlu_service_pb2_grpc.NluServiceStub) -> None:
    default = stub.GetModel(pb.GetModelRequest())
    acme = stub.GetModel(pb.GetModelRequest(tenant_id="acme"))
    globex = stub.GetModel(pb.GetModelRequest(tenant_id="globex"))
    assert acme.model_version == default.model_version
    assert globex.model_path.endswith("globex-model.tar.gz")
    assert globex.model_version != default.model_version
    reply = stub.Parse(pb.ParseRequest(text="where is my order 12345", tenant_id="globex"))
    assert reply.model_version == globex.model_version
    assert reply.intent.name == "order_status"


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (pb.ParseRequest(text=""), grpc.StatusCode.INVALID_ARGUMENT, "text is empty"),
        (pb.ParseRequest(text="   "), grpc.StatusCode.INVALID_ARGUMENT, "text is empty"),
        (pb.ParseRequest(text="x" * 501), grpc.StatusCode.INVALID_ARGUMENT, "limit is 500"),
        (pb.ParseRequest(text="hi", tenant_id="nobody"), grpc.StatusCode.NOT_FOUND, "nobody"),
        (pb.ParseRequest(text="hi", language="de"), grpc.StatusCode.INVALID_ARGUMENT, "'de'"),
    ],
)
def test_bad_input_is_refused_with_a_reason(
    stub: nlu_service_pb2_grpc.NluServiceStub,
    request_: pb.ParseRequest,
    code: grpc.StatusCode,
    fragment: str,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Parse(request_)
    assert caught.value.code() == code
    assert fragment in (caught.value.details() or "")


def test_batch_errors_name_the_item(stub: nlu_service_pb2_grpc.NluServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ParseBatch(
            pb.ParseBatchRequest(requests=[pb.ParseRequest(text="hi"), pb.ParseRequest(text="")])
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[1]" in (caught.value.details() or "")
    with pytest.raises(grpc.RpcError) as caught:
        stub.ParseBatch(pb.ParseBatchRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_reports_the_service(nlu_server: ServiceProcess) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health_status(nlu_server.port, "chatbot.nlu.v1.NluService") == serving


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    grpcurl = shutil.which("grpcurl") or str(REPO / ".venv" / "bin" / "grpcurl")
    return subprocess.run(
        [grpcurl, "-plaintext", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_grpcurl_lists_and_calls_through_reflection(nlu_server: ServiceProcess) -> None:
    address = f"127.0.0.1:{nlu_server.port}"
    listed = _grpcurl(address, "list")
    assert listed.returncode == 0, listed.stderr
    assert "chatbot.nlu.v1.NluService" in listed.stdout.split()
    assert "grpc.health.v1.Health" in listed.stdout.split()
    methods = _grpcurl(address, "list", "chatbot.nlu.v1.NluService")
    assert set(methods.stdout.split()) >= {
        "chatbot.nlu.v1.NluService.Parse",
        "chatbot.nlu.v1.NluService.ParseBatch",
        "chatbot.nlu.v1.NluService.GetModel",
    }
    called = _grpcurl(
        "-d", '{"text": "where is my order 12345"}', address, "chatbot.nlu.v1.NluService/Parse"
    )
    assert called.returncode == 0, called.stderr
    reply = json.loads(called.stdout)
    assert reply["intent"]["name"] == "order_status"
    assert reply["entities"][0]["value"] == "12345"


def test_without_a_model_the_server_waits_not_serving(tmp_path: Path) -> None:
    work = tmp_path
    port = free_port()
    server = ServiceProcess(
        [nlu_python(), "-m", "services.nlu", "serve"],
        nlu_env(NLU_PORT=str(port), NLU_MODEL=str(work / "missing.tar.gz")),
        work / "nlu.log",
        port,
    )
    try:
        server.wait_for_status(health_pb2.HealthCheckResponse.NOT_SERVING, timeout=60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = nlu_service_pb2_grpc.NluServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Parse(pb.ParseRequest(text="hi"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.proc.poll() is None, "still running, not crash-looping"
        assert "no NLU model" in server.tail()
    finally:
        assert server.stop() == 0


def test_evaluation_on_held_out_examples(
    default_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = subprocess.run(
        [nlu_python(), "-m", "services.nlu", "evaluate"],
        cwd=REPO,
        env={**os.environ, **nlu_env()},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    table = result.stdout[result.stdout.find("metric") :]
    with capsys.disabled():
        print("\n" + table)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


def test_metrics_count_parses_batches_and_the_model(
    stub: nlu_service_pb2_grpc.NluServiceStub, nlu_server: ServiceProcess
) -> None:
    before = scrape(nlu_server.metrics_port)
    stub.Parse(pb.ParseRequest(text="hello there"))
    stub.Parse(pb.ParseRequest(text="zxqv plorf wug"))
    after = scrape(nlu_server.metrics_port)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta('nlu_texts_parsed_total{outcome="understood"}') >= 1
    assert delta("nlu_batch_texts_count") >= 2
    assert (
        delta(
            'grpc_server_handled_total{grpc_code="OK",grpc_method="Parse",'
            'grpc_service="chatbot.nlu.v1.NluService"}'
        )
        == 2
    )
    version = stub.GetModel(pb.GetModelRequest()).model_version
    assert after[f'nlu_model_info{{tenant="",version="{version}"}}'] == 1
