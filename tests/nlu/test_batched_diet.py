"""The service's batched parse answers what Rasa's own one-message pipeline answers.

The service loads the model without Rasa's warm-up training step, computes the
featurizers' output for a whole batch at once and runs DIET once per group of
similar-length messages. The reference is the same model as Rasa loads it,
every component run one message at a time: same intents and rankings,
confidences within 1e-5, same entities, and the model input built from the
batch's features equal, array for array, to the one Rasa's featurizers give.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.support import REPO
from services.nlu import batched_diet
from tests.nlu_process import nlu_env, nlu_python

NLU_DIR = REPO / "services" / "nlu"
LONG = ("where is my order 12345 and what's the weather in Paris tomorrow? " * 40)[:2000]
TOLERANCE = 1e-5


def examples(path: Path) -> list[str]:
    """The example texts of a Rasa NLU file, without entity markup."""
    texts = []
    for block in yaml.safe_load(path.read_text())["nlu"]:
        for line in str(block.get("examples") or "").splitlines():
            if line.startswith("- "):
                texts.append(re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", line[2:]).strip())
    return texts


@pytest.fixture(scope="module")
def report(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    heldout = examples(NLU_DIR / "eval" / "heldout.yml")
    training = examples(NLU_DIR / "data" / "nlu.yml")
    assert len(heldout) > 50 and len(training) > 100
    batches = {
        "heldout": heldout,
        "training": training,
        "one": ["where is my order 12345"],
        "edge cases": [
            "",
            "   ",
            "?!",
            LONG,
            "héllo wörld ☃ 你好 🙂 where is my order 12345",
            "weather in Zürich for Łódź",
            "x" * 300,
        ],
        "mixed lengths": [heldout[0], LONG, "hi", heldout[40], LONG[:400], "bye", heldout[-1]],
        "repeated text": ["hello there"] * 5 + ["where is my order 12345"] * 3,
        "nothing featurized": ["", " "],
    }
    work = tmp_path_factory.mktemp("batched-diet")
    request, result = work / "request.json", work / "result.json"
    request.write_text(json.dumps(batches))
    done = subprocess.run(
        [
            nlu_python(),
            "-m",
            "tests.nlu.batch_probe",
            str(default_model),
            str(request),
            str(result),
        ],
        cwd=REPO,
        env={**os.environ, **nlu_env()},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded: dict[str, Any] = json.loads(result.read_text())
    for name, texts in batches.items():
        answers = loaded["batches"][name]
        assert [r["text"] for r in answers["batched"]] == texts, name
        assert [r["text"] for r in answers["single"]] == texts, name
    return loaded


def assert_same(batched: dict[str, Any], single: dict[str, Any]) -> None:
    where = repr(single["text"][:60])
    assert batched["intent"]["name"] == single["intent"]["name"], where
    assert batched["intent"]["confidence"] == pytest.approx(
        single["intent"]["confidence"], abs=TOLERANCE
    ), where
    assert [i["name"] for i in batched["ranking"]] == [i["name"] for i in single["ranking"]], where
    for mine, theirs in zip(batched["ranking"], single["ranking"], strict=True):
        assert mine["confidence"] == pytest.approx(theirs["confidence"], abs=TOLERANCE), where

    def spans(result: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "confidence"} for e in result["entities"]]

    assert spans(batched) == spans(single), where
    for mine, theirs in zip(batched["entities"], single["entities"], strict=True):
        assert mine["confidence"] == pytest.approx(theirs["confidence"], abs=TOLERANCE), where


@pytest.mark.slow
def test_the_model_runs_batched(report: dict[str, Any]) -> None:
    assert report["batched"] is True
    assert report["featurizes_in_batch"] is True
    assert report["reference_batched"] is False


BATCHES = [
    "heldout",
    "training",
    "one",
    "edge cases",
    "mixed lengths",
    "repeated text",
    "nothing featurized",
]


@pytest.mark.slow
@pytest.mark.parametrize("batch", BATCHES)
def test_batched_answers_equal_one_at_a_time(report: dict[str, Any], batch: str) -> None:
    answers = report["batches"][batch]
    for batched, single in zip(answers["batched"], answers["single"], strict=True):
        assert_same(batched, single)


@pytest.mark.slow
@pytest.mark.parametrize("batch", BATCHES)
def test_model_inputs_equal_rasas_own_features(report: dict[str, Any], batch: str) -> None:
    """Every message the batch featurizes gets exactly Rasa's input to DIET."""
    inputs = report["batches"][batch]["inputs_equal"]
    texts = [r["text"] for r in report["batches"][batch]["single"]]
    for text, equal in zip(texts, inputs, strict=True):
        # Only an empty text (Rasa strips it), which Rasa's regex featurizer leaves
        # without features, goes to Rasa's own featurizers.
        assert equal is True or (equal is None and not text.strip()), repr(text[:60])


@pytest.mark.slow
@pytest.mark.parametrize("batch", BATCHES)
def test_raw_outputs_have_the_single_run_shapes_and_values(
    report: dict[str, Any], batch: str
) -> None:
    """What DIET computes per message, before Rasa turns it into an answer."""
    raw = report["batches"][batch]["raw"]
    compared = [r for r in raw if r is not None]
    assert compared or batch == "nothing featurized"
    for text, differences in zip(report["batches"][batch]["single"], raw, strict=True):
        if differences is None:
            continue
        where = repr(text["text"][:60])
        assert differences["keys"] and differences["shapes"], where
        assert differences["max_difference"] <= TOLERANCE, where


@pytest.mark.slow
def test_held_out_answers_are_real(report: dict[str, Any]) -> None:
    """The comparison is not between two empty answers."""
    answers = report["batches"]["heldout"]["batched"]
    assert all(r["intent"]["name"] and r["ranking"] for r in answers)
    assert sum(bool(r["entities"]) for r in answers) >= 10


@pytest.mark.parametrize(
    "lengths",
    [[], [5], [3, 9, 4, 4, 12, 3], [1] * 40 + [400] + [2] * 40, list(range(60, 0, -1))],
)
def test_length_groups_cover_every_message_once_with_bounded_padding(
    lengths: list[int],
) -> None:
    groups = batched_diet._length_groups(lengths)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    for group in groups:
        sizes = [lengths[i] for i in group]
        assert len(group) * max(sizes) - sum(sizes) <= batched_diet._PADDING_TOKENS


def test_combined_blocks_keep_rasas_order_per_message() -> None:
    """Per message, block after block (columns shifted), each block in its own order."""
    from services.nlu.batched_features import _combine, _Entries

    first = _Entries.of([0, 1, 1], [0, 0, 1], [1, 0, 1])
    second = _Entries.of([1, 0, 0], [0, 2, 0], [2, 0, 1], [3, 4, 5])
    combined = _combine([first, second], [2, 3])
    rows = list(
        zip(
            combined.message.tolist(),
            combined.row.tolist(),
            combined.col.tolist(),
            combined.data.tolist(),
            strict=True,
        )
    )
    assert rows == [
        (0, 0, 1, 1.0),
        (0, 2, 2, 4.0),
        (0, 0, 3, 5.0),
        (1, 0, 0, 1.0),
        (1, 1, 1, 1.0),
        (1, 0, 4, 3.0),
    ]
