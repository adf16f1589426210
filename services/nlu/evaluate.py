"""Scores a trained model on held-out examples it never saw in training."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from services.nlu.backend import RasaBackend
from services.nlu.training import default_models_dir, model_path_for, model_version

DEFAULT_HELDOUT = Path(__file__).resolve().parent / "eval" / "heldout.yml"


@dataclass(frozen=True)
class Scores:
    examples: int
    intent_accuracy: float
    entity_precision: float
    entity_recall: float
    entity_f1: float
    confusions: list[tuple[str, str, str]]


def score(backend: RasaBackend, heldout: Path) -> Scores:
    from rasa.shared.nlu.training_data.loading import load_data

    examples = [e for e in load_data(str(heldout)).intent_examples if e.get("text")]
    texts = [str(e.get("text")) for e in examples]
    results = backend.parse_many(texts)
    correct = 0
    confusions = []
    expected_entities: Counter[tuple[int, str, str]] = Counter()
    found_entities: Counter[tuple[int, str, str]] = Counter()
    for index, (example, result) in enumerate(zip(examples, results, strict=True)):
        expected = str(example.get("intent"))
        # A fallback is a miss: the bot would not have understood.
        if result.intent.name == expected:
            correct += 1
        else:
            confusions.append((str(example.get("text")), expected, result.intent.name))
        for entity in example.get("entities") or []:
            expected_entities[(index, entity["entity"], str(entity["value"]).lower())] += 1
        for span in result.entities:
            found_entities[(index, span.entity, span.value.lower())] += 1
    true_positives = sum((expected_entities & found_entities).values())
    precision = true_positives / max(1, sum(found_entities.values()))
    recall = true_positives / max(1, sum(expected_entities.values()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(len(examples), correct / max(1, len(examples)), precision, recall, f1, confusions)


def run_evaluation(args: argparse.Namespace) -> int:
    models_dir = args.models_dir or default_models_dir()
    path = model_path_for(model_version(args.config, args.data), models_dir)
    if not path.exists():
        print(f"no trained model at {path}: run `make train` first")
        return 2
    print(f"Loading {path} ...", flush=True)
    scores = score(RasaBackend(path), args.heldout or DEFAULT_HELDOUT)
    print(f"\n{'metric':<20}{'value':>8}{'floor':>8}")
    print(f"{'examples':<20}{scores.examples:>8}")
    print(f"{'intent accuracy':<20}{scores.intent_accuracy:>8.3f}{args.min_intent_accuracy:>8.2f}")
    print(f"{'entity precision':<20}{scores.entity_precision:>8.3f}")
    print(f"{'entity recall':<20}{scores.entity_recall:>8.3f}")
    print(f"{'entity F1':<20}{scores.entity_f1:>8.3f}{args.min_entity_f1:>8.2f}")
    for text, expected, got in scores.confusions:
        print(f"  missed: {text!r}: expected {expected}, got {got}")
    ok = (
        scores.intent_accuracy >= args.min_intent_accuracy
        and scores.entity_f1 >= args.min_entity_f1
    )
    print("PASS" if ok else "FAIL: below the floor")
    return 0 if ok else 1
