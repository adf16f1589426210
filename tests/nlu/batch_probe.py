"""Parses batches of texts the service's way and Rasa's way; writes down both.

Runs in the NLU environment: ``python -m tests.nlu.batch_probe MODEL IN OUT``
reads ``{"name": [text, ...], ...}`` from the JSON file IN and writes to OUT
which paths were taken and, per batch: what each path answered, whether the
model input built from the batch's features equals the one Rasa builds from
its own featurizers, and how DIET's raw outputs for each message compare.

The service's way is ``RasaBackend(model)``: the model loaded without Rasa's
warm-up training step, the features and DIET run once per batch. Rasa's way is
``RasaBackend(model, batched=False)``: the model as Rasa loads it, every
component run one message at a time.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from services.nlu import batched_diet
from services.nlu.backend import RasaBackend


def _diet_node(backend: RasaBackend) -> Any:
    runner: Any = backend._runner
    return next(n for n in runner._instantiated_nodes.values() if "DIETClassifier" in n._node_name)


def _messages_for_diet(backend: RasaBackend, texts: list[str]) -> list[Any]:
    """The messages as the graph hands them to DIET's node."""
    from rasa.core.channels.channel import UserMessage
    from rasa.engine.constants import PLACEHOLDER_MESSAGE, PLACEHOLDER_TRACKER
    from rasa.shared.core.trackers import DialogueStateTracker

    source = _diet_node(backend)._inputs["messages"]
    runner: Any = backend._runner
    return list(
        runner.run(
            inputs={
                PLACEHOLDER_MESSAGE: [UserMessage(t) for t in texts],
                PLACEHOLDER_TRACKER: DialogueStateTracker.from_events("probe", []),
            },
            targets=[source],
        )[source]
    )


def _rasa_input(diet: Any, message: Any) -> tuple[Any, ...] | None:
    """The model input Rasa builds for one message from its own features."""
    import rasa.utils.train_utils

    data = diet._create_model_data([message], training=False)
    if data.is_empty():
        return None
    generator, _ = rasa.utils.train_utils.create_data_generators(
        model_data=data, batch_sizes=1, epochs=1, shuffle=False
    )
    return tuple(generator[0][0])


def _same_arrays(mine: tuple[Any, ...], theirs: tuple[Any, ...]) -> bool:
    return len(mine) == len(theirs) and all(
        a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        for a, b in zip(mine, theirs, strict=True)
    )


def compare(
    service: RasaBackend, reference: RasaBackend, texts: list[str]
) -> tuple[list[bool | None], list[dict[str, Any] | None]]:
    """Per message: equal model inputs, and DIET's raw outputs compared.

    ``None`` where the service leaves a message to Rasa's featurizers (inputs)
    or where Rasa's DIET has no output for it (raw outputs).
    """
    from rasa.shared.constants import DIAGNOSTIC_DATA

    mine_node, theirs_node = _diet_node(service), _diet_node(reference)
    featurizer = mine_node._fn.featurizer
    theirs = _messages_for_diet(reference, texts)
    mine = _messages_for_diet(service, texts)
    accepted = [featurizer.accepts(m) for m in mine]
    batch = [m for m, ok in zip(mine, accepted, strict=True) if ok]
    features = featurizer.featurize(batch) if batch else None
    outputs = iter(
        batched_diet._predict_batch(mine_node._component, batch, featurizer) if batch else []
    )
    inputs: list[bool | None] = []
    raw: list[dict[str, Any] | None] = []
    position = 0
    for message, ok in zip(theirs, accepted, strict=True):
        expected = _rasa_input(theirs_node._component, message)
        single = theirs_node._component._predict(message)
        if not ok:
            inputs.append(None)
            raw.append(None)
            continue
        assert features is not None
        actual = features.model_input([position])
        position += 1
        inputs.append(expected is not None and _same_arrays(actual, expected))
        out = next(outputs)
        if single is None:
            raw.append(None)
            continue
        keys = sorted(k for k in single if k != DIAGNOSTIC_DATA)
        same_shapes = keys == sorted(out) and all(single[k].shape == out[k].shape for k in keys)
        raw.append(
            {
                "keys": keys == sorted(out),
                "shapes": same_shapes,
                "max_difference": max(
                    float(abs(single[k].astype(float) - out[k]).max(initial=0.0)) for k in keys
                )
                if same_shapes
                else None,
            }
        )
    return inputs, raw


def main() -> int:
    model, request, result = (Path(arg) for arg in sys.argv[1:4])
    batches: dict[str, list[str]] = json.loads(request.read_text())
    service = RasaBackend(model)
    reference = RasaBackend(model, batched=False)
    report: dict[str, Any] = {
        "batched": service.batched,
        "featurizes_in_batch": batched_diet.featurizes_in_batch(service._runner),
        "reference_batched": reference.batched,
        "batches": {},
    }
    for name, texts in batches.items():
        inputs, raw = compare(service, reference, texts)
        report["batches"][name] = {
            "batched": [dataclasses.asdict(r) for r in service.parse_many(texts)],
            "single": [dataclasses.asdict(reference.parse_many([t])[0]) for t in texts],
            "inputs_equal": inputs,
            "raw": raw,
        }
    result.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
