"""The end-to-end benchmark: its arithmetic, Rasa's project, and one small real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.e2e.load import Message, Record, outcome, percentiles
from bench.e2e.rasa_baseline import project_files
from tests.nlu_process import nlu_python
from tests.support import REPO


def _record(replies: dict[str, list[float]], users: dict[str, int]) -> Record:
    record = Record()
    for user, count in users.items():
        for seq in range(count):
            mid = f"{user}-{seq}"
            record.messages.append(Message(user, seq, mid, "hi"))
            record.sent_at[mid] = float(seq)
    for mid, times in replies.items():
        for at in times:
            record.reply(mid, at)
    return record


def test_outcome_counts_missing_duplicated_and_reordered_replies() -> None:
    record = _record(
        {
            "a-0": [1.0, 5.0],  # answered twice
            "a-1": [3.0],
            "a-2": [2.5],  # before a-1: a-1 is out of order
            "b-0": [1.0],
            # b-1 never answered
        },
        {"a": 3, "b": 2},
    )
    result = outcome(record)
    assert (result.messages, result.answered, result.missing) == (5, 4, 1)
    assert result.duplicated == 1
    assert result.out_of_order == 1
    # From the first message sent (t=0) to the last first reply (t=3).
    assert result.seconds == pytest.approx(3.0)
    assert result.per_second == pytest.approx(4 / 3)


def test_a_late_duplicate_is_not_a_reordering() -> None:
    result = outcome(_record({"a-0": [1.0, 9.0], "a-1": [2.0]}, {"a": 2}))
    assert result.out_of_order == 0
    assert result.duplicated == 1


def test_percentiles() -> None:
    p50, p99 = percentiles([i / 1000 for i in range(1, 101)])
    assert p50 == pytest.approx(51)
    assert p99 == pytest.approx(100)


def test_rasa_project_has_a_rule_and_a_response_for_every_intent() -> None:
    files = project_files()
    domain = yaml.safe_load(files["domain.yml"])
    rules = yaml.safe_load(files["data/rules.yml"])["rules"]
    config = yaml.safe_load(files["config.yml"])
    nlu_config = yaml.safe_load((REPO / "services" / "nlu" / "config.yml").read_text())
    answered = {rule["steps"][0]["intent"]: rule["steps"][1]["action"] for rule in rules}
    assert set(domain["intents"]) | {"nlu_fallback"} == set(answered)
    assert all(action in domain["responses"] for action in answered.values())
    # The same NLU pipeline as this stack's NLU service; Rasa adds only its rule policy.
    assert config["pipeline"] == nlu_config["pipeline"]
    assert config["policies"] == [{"name": "RulePolicy"}]


@pytest.mark.slow
def test_a_small_run_measures_both_systems(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    completed = subprocess.run(
        [
            sys.executable, "-m", "bench.e2e",
            "--users", "4", "--messages", "3", "--settle", "120",
            "--no-bare", "--json", str(out),
        ],
        cwd=REPO,
        env={
            **os.environ,
            "NLU_PYTHON": nlu_python(),
            "PYTHONPATH": f"{REPO}:{REPO / 'build' / 'gen' / 'py'}",
        },
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "| this stack |" in completed.stdout
    assert "| rasa run (1 worker) |" in completed.stdout
    rows = {row["system"]: row for row in json.loads(out.read_text())["rows"]}
    ours = rows["this stack"]
    assert (ours["messages"], ours["answered"]) == (12, 12)
    assert (ours["duplicated"], ours["out_of_order"]) == (0, 0)
    assert set(ours["usage"]) >= {"gateway", "dialogue", "nlu", "chatlog", "redis"}
    assert all(usage["peak_rss"] > 0 for usage in ours["usage"].values())
    rasa = rows["rasa run (1 worker)"]
    assert rasa["answered"] == 12
    assert rasa["usage"]["rasa"]["peak_rss"] > 100 * 2**20
