"""ExportTrainingData: lowest confidence first, filtered, as YAML that Rasa's own reader loads."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.common.v1 import event_pb2, nlu_result_pb2

from tests.chatlog.conftest import OUT, Chatlog, rpc_error, ts
from tests.chatlog.harness import Harness

DAY = 86_400


def entity(text: str, span: str, name: str, value: str | None = None, role: str = "") -> Any:
    start = text.index(span)
    return nlu_result_pb2.Entity(
        entity=name, value=value or span, start=start, end=start + len(span), role=role
    )


def scene(chatlog: Chatlog) -> None:
    m = chatlog.message
    paris = "book a flight to Paris"
    fly = "fly from Berlin to Rome"
    nyc = "NYC please"
    sticker = event_pb2.Attachment(type=event_pb2.ATTACHMENT_TYPE_STICKER)
    chatlog.append(
        m("c1", "paris", at=0, text=paris, intent="book_flight", confidence=0.55,
          entities=[entity(paris, "Paris", "city")]),
        m("c1", "hi1", at=1, text="hi", intent="greet", confidence=0.99),
        m("c1", "hello", at=2, text="hello there", intent="greet", confidence=0.45),
        m("c1", "asdf", at=3, text="asdf", intent="nlu_fallback", confidence=0.3, fallback=True,
          ranking=[("nlu_fallback", 0.3), ("greet", 0.25), ("bye", 0.1)]),
        m("c1", "hi2", at=4, text="hi", intent="greet", confidence=0.98),
        m("c1", "reply", at=5, text="hello!", direction=OUT),
        m("c1", "sticker", at=6, attachments=[sticker], intent="greet", confidence=0.1),
        m("c1", "unparsed", at=7, text="no intent here"),
        m("c2", "fly", at=8, user="u2", text=fly, intent="book_flight", confidence=0.6,
          entities=[entity(fly, "Berlin", "city", role="departure"),
                    entity(fly, "Rome", "city", role="destination")]),
        m("c2", "code", at=9, user="u2", text="my code is [x](y)", intent="greet", confidence=0.7),
        m("c2", "lines", at=10, user="u2", text="line one\nline two", intent="bye",
          confidence=0.8),
        m("c2", "nyc", at=2 * DAY, user="u2", text=nyc, intent="book_flight", confidence=0.65,
          entities=[entity(nyc, "NYC", "city", value="New York")], model_version="v7"),
    )  # fmt: skip


ORDER = ["asdf", "hello", "paris", "fly", "nyc", "code", "lines", "hi2", "hi1"]


def export(chatlog: Chatlog, **fields: Any) -> pb.ExportTrainingDataResponse:
    return chatlog.stub.ExportTrainingData(
        pb.ExportTrainingDataRequest(tenant_id=chatlog.tenant, **fields)
    )


def test_rows_lowest_confidence_first(chatlog: Chatlog) -> None:
    scene(chatlog)
    reply = export(chatlog)
    assert [e.message_id for e in reply.examples] == ORDER
    assert not reply.truncated
    asdf = reply.examples[0]
    # A fallback is exported under the model's best real intent, for a reviewer to confirm.
    assert (asdf.intent, asdf.is_fallback) == ("greet", True)
    assert asdf.confidence == pytest.approx(0.25)
    nyc = next(e for e in reply.examples if e.message_id == "nyc")
    assert (nyc.conversation_id, nyc.text, nyc.model_version) == ("c2", "NYC please", "v7")
    assert nyc.create_time == ts(2 * DAY)
    assert [(e.entity, e.value) for e in nyc.entities] == [("city", "New York")]


def test_filters_and_limit(chatlog: Chatlog) -> None:
    scene(chatlog)

    def ids(**fields: Any) -> list[str]:
        return [e.message_id for e in export(chatlog, **fields).examples]

    assert ids(intents=["book_flight"]) == ["paris", "fly", "nyc"]
    assert ids(intents=["book_flight", "bye"]) == ["paris", "fly", "nyc", "lines"]
    assert ids(min_confidence=0.5, max_confidence=0.8) == ["paris", "fly", "nyc", "code", "lines"]
    assert ids(start_time=ts(DAY)) == ["nyc"]
    assert ids(end_time=ts(DAY), intents=["book_flight"]) == ["paris", "fly"]
    limited = export(chatlog, limit=3)
    assert [e.message_id for e in limited.examples] == ORDER[:3]
    assert limited.truncated
    assert not export(chatlog, limit=len(ORDER)).truncated


def test_yaml_has_one_item_per_intent_in_order(chatlog: Chatlog) -> None:
    scene(chatlog)
    document = yaml.safe_load(export(chatlog).rasa_nlu_yaml)
    assert document["version"] == "3.1"
    items = {item["intent"]: item["examples"].splitlines() for item in document["nlu"]}
    assert list(items) == ["greet", "book_flight", "bye"]
    assert items["greet"] == ["- asdf", "- hello there", "- hi"]  # "hi" twice: once
    assert items["book_flight"] == [
        "- book a flight to [Paris](city)",
        '- fly from [Berlin]{"entity": "city", "value": "Berlin", "role": "departure"} to '
        '[Rome]{"entity": "city", "value": "Rome", "role": "destination"}',
        '- [NYC]{"entity": "city", "value": "New York"} please',
    ]
    assert items["bye"] == ["- line one line two"]
    assert "1 example(s) left out" in export(chatlog).rasa_nlu_yaml


def nlu_python() -> str:
    python = os.environ.get("NLU_PYTHON")
    if not python or not Path(python).exists():
        pytest.fail("NLU_PYTHON must name the NLU environment's python (run through `make test`)")
    return python


_READ_WITH_RASA = """
import json, sys, warnings
warnings.simplefilter("error", UserWarning)  # Rasa warns when it skips an example
from rasa.shared.nlu.training_data.loading import load_data
data = load_data(sys.argv[1])
print(json.dumps([
    [m.get("intent"), m.get("text"),
     [[e["start"], e["end"], e["entity"], e["value"], e.get("role")]
      for e in m.get("entities") or []]]
    for m in data.training_examples
]))
"""


def test_rasa_reads_the_export(chatlog: Chatlog, tmp_path: Path) -> None:
    scene(chatlog)
    path = tmp_path / "nlu.yml"
    path.write_text(export(chatlog).rasa_nlu_yaml, encoding="utf-8")
    out = subprocess.run(
        [nlu_python(), "-c", _READ_WITH_RASA, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RASA_TELEMETRY_ENABLED": "false"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    read = json.loads(out.stdout.strip().splitlines()[-1])
    assert read == [
        ["greet", "asdf", []],
        ["greet", "hello there", []],
        ["greet", "hi", []],
        ["book_flight", "book a flight to Paris", [[17, 22, "city", "Paris", None]]],
        [
            "book_flight",
            "fly from Berlin to Rome",
            [[9, 15, "city", "Berlin", "departure"], [19, 23, "city", "Rome", "destination"]],
        ],
        ["book_flight", "NYC please", [[0, 3, "city", "New York", None]]],
        ["bye", "line one line two", []],
    ]


def test_rasa_reads_an_empty_export(chatlog: Chatlog, tmp_path: Path) -> None:
    path = tmp_path / "nlu.yml"
    path.write_text(export(chatlog).rasa_nlu_yaml, encoding="utf-8")
    out = subprocess.run(
        [nlu_python(), "-c", _READ_WITH_RASA, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RASA_TELEMETRY_ENABLED": "false"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"min_confidence": -0.1}, "min_confidence"),
        ({"max_confidence": 1.5}, "max_confidence"),
        ({"min_confidence": float("nan")}, "min_confidence"),
        ({"min_confidence": 0.8, "max_confidence": 0.2}, "min_confidence"),
        ({"limit": -1}, "limit"),
        ({"limit": 10001}, "limit"),
        ({"start_time": ts(5), "end_time": ts(5)}, "end_time"),
        ({"intents": [""]}, "intents"),
        ({"tenant_id": "nobody"}, "tenant_id"),
    ],
)
def test_bad_requests(chatlog: Chatlog, fields: dict[str, Any], named: str) -> None:
    request = {"tenant_id": chatlog.tenant, **fields}
    error = rpc_error(chatlog.stub.ExportTrainingData, pb.ExportTrainingDataRequest(**request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in error.details()


def test_the_cli_writes_the_export(
    sqlite_chatlog: Chatlog, sqlite_harness: Harness, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    scene(sqlite_chatlog)
    target = tmp_path / "nlu.yml"
    result = CliRunner().invoke(
        app,
        [
            "export-training-data", "--tenant", sqlite_chatlog.tenant, "--days", "40000",
            "--address", sqlite_harness.address, "--output", str(target),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(target.read_text())
    assert "book_flight" in {item["intent"] for item in document["nlu"]}
