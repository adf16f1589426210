"""Parses batches of texts with DIET batched and one text at a time; prints both.

Runs in the NLU environment: ``python -m tests.nlu.batch_probe MODEL IN OUT``
reads ``{"name": [text, ...], ...}`` from the JSON file IN and writes to OUT
whether the batched path was taken and, per batch, what each path answered:
the parse results, and how DIET's raw outputs for each message compare.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from services.nlu import batched_diet
from services.nlu.backend import RasaBackend


def raw_differences(backend: RasaBackend, texts: list[str]) -> list[dict[str, Any] | None]:
    """Per message, how DIET's batched output differs from its own single run."""
    from rasa.core.channels.channel import UserMessage
    from rasa.engine.constants import PLACEHOLDER_MESSAGE, PLACEHOLDER_TRACKER
    from rasa.shared.constants import DIAGNOSTIC_DATA
    from rasa.shared.core.trackers import DialogueStateTracker

    runner: Any = backend._runner
    node = next(
        n for n in runner._instantiated_nodes.values() if n._fn is batched_diet.process_batch
    )
    featurizer = node._inputs["messages"]
    messages = runner.run(
        inputs={
            PLACEHOLDER_MESSAGE: [UserMessage(t) for t in texts],
            PLACEHOLDER_TRACKER: DialogueStateTracker.from_events("probe", []),
        },
        targets=[featurizer],
    )[featurizer]
    singles = [node._component._predict(m) for m in messages]
    present = [m for m, single in zip(messages, singles, strict=True) if single is not None]
    batched = iter(batched_diet._predict_many(node._component, present))
    out: list[dict[str, Any] | None] = []
    for single in singles:
        if single is None:
            out.append(None)
            continue
        mine = next(batched)
        assert mine is not None
        keys = sorted(k for k in single if k != DIAGNOSTIC_DATA)
        same_shapes = keys == sorted(mine) and all(single[k].shape == mine[k].shape for k in keys)
        out.append(
            {
                "keys": keys == sorted(mine),
                "shapes": same_shapes,
                "max_difference": max(
                    float(abs(single[k].astype(float) - mine[k]).max(initial=0.0)) for k in keys
                )
                if same_shapes
                else None,
            }
        )
    return out


def main() -> int:
    model, request, result = (Path(arg) for arg in sys.argv[1:4])
    batches: dict[str, list[str]] = json.loads(request.read_text())
    batched = RasaBackend(model)
    reference = RasaBackend(model, batched=False)
    report = {
        "batched": batched.batched,
        "reference_batched": reference.batched,
        "batches": {
            name: {
                "batched": [dataclasses.asdict(r) for r in batched.parse_many(texts)],
                "single": [dataclasses.asdict(reference.parse_many([t])[0]) for t in texts],
                "raw": raw_differences(batched, texts),
            }
            for name, texts in batches.items()
        },
    }
    result.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
