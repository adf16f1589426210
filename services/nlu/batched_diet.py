"""DIET inference over a whole batch of messages.

Rasa's ``DIETClassifier.process`` runs the TensorFlow model once per message,
so a graph run over 32 messages costs nearly 32 single runs. ``install``
points the loaded graph's DIET node at ``process_batch`` instead, which runs
the model once per group of messages of similar length and hands each message
its own slice of the output. The featurizers before DIET and the components
after it (synonyms, fallback) still run as Rasa runs them.

Padding does not change a message's result: DIET masks padded positions, and
the entity outputs are cut back to the length a single run would produce.
"""

from __future__ import annotations

from typing import Any

# A model run costs about as much CPU as 100 padded tokens: messages share a
# run while the group's padding stays under that.
_PADDING_TOKENS = 100


def install(runner: Any) -> bool:
    """Makes the runner's DIET node run batched; says whether it did.

    Leaves anything it does not recognise on Rasa's own per-message path:
    another runner, a subclass of DIET, a node already changed.
    """
    from rasa.engine.graph import GraphNode
    from rasa.nlu.classifiers.diet_classifier import DIETClassifier

    nodes = getattr(runner, "_instantiated_nodes", None)
    if not isinstance(nodes, dict):
        return False
    installed = False
    for node in nodes.values():
        if (
            isinstance(node, GraphNode)
            and node._component_class is DIETClassifier
            and node._fn is DIETClassifier.process
        ):
            node._fn = process_batch
            installed = True
    return installed


def process_batch(diet: Any, messages: list[Any]) -> list[Any]:
    """``DIETClassifier.process`` with one model run per length group."""
    from rasa.nlu.classifiers.diet_classifier import DIETClassifier
    from rasa.shared.nlu.constants import ENTITIES, INTENT, TEXT
    from rasa.utils.tensorflow.constants import (
        ENTITY_RECOGNITION,
        FEATURIZERS,
        INTENT_CLASSIFICATION,
    )

    if (
        len(messages) < 2
        or diet.model is None
        or diet._execution_context.should_add_diagnostic_data
    ):
        return list(DIETClassifier.process(diet, messages))

    # Rasa skips messages without features (their answer is "no intent").
    featurizers = diet.component_config.get(FEATURIZERS)
    featurized = [m for m in messages if m.features_present(TEXT, featurizers)]
    outputs = dict(zip(map(id, featurized), _predict_many(diet, featurized), strict=True))
    for message in messages:
        out = outputs.get(id(message))
        if diet.component_config[INTENT_CLASSIFICATION]:
            label, ranking = diet._predict_label(out)
            message.set(INTENT, label, add_to_output=True)
            message.set("intent_ranking", ranking, add_to_output=True)
        if diet.component_config[ENTITY_RECOGNITION]:
            message.set(ENTITIES, diet._predict_entities(out, message), add_to_output=True)
    return messages


def _predict_many(diet: Any, messages: list[Any]) -> list[dict[str, Any] | None]:
    """What ``diet._predict`` answers for each message, in order."""
    from rasa.nlu.constants import TOKENS_NAMES
    from rasa.shared.nlu.constants import TEXT
    from rasa.utils.tensorflow.constants import SEQUENCE_LENGTH

    answers: list[dict[str, Any] | None] = [None] * len(messages)
    tokens = [len(m.get(TOKENS_NAMES[TEXT]) or []) for m in messages]
    for group in _length_groups(tokens):
        data = diet._create_model_data([messages[i] for i in group], training=False)
        if data.is_empty():
            continue
        # The model's own sequence lengths decide the padding to cut.
        found = data.data.get(TEXT, {}).get(SEQUENCE_LENGTH)
        lengths = [int(n) for n in found[0]] if found else [0] * len(group)
        out = diet.model.run_inference(data, batch_size=len(group))
        for row, index in enumerate(group):
            answers[index] = _row(out, row, max(lengths) - lengths[row])
    return answers


def _length_groups(lengths: list[int]) -> list[list[int]]:
    """Indices grouped by similar length, shortest first."""
    groups: list[list[int]] = []
    total = 0
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        length = lengths[index]
        if groups and (len(groups[-1]) + 1) * length - (total + length) <= _PADDING_TOKENS:
            groups[-1].append(index)
            total += length
        else:
            groups.append([index])
            total = length
    return groups


def _row(out: dict[str, Any], row: int, padding: int) -> dict[str, Any]:
    """One message's output as a batch of one, without the batch's padding."""
    from rasa.shared.constants import DIAGNOSTIC_DATA

    single: dict[str, Any] = {}
    for key, value in out.items():
        if key == DIAGNOSTIC_DATA:
            continue
        value = value[row : row + 1]
        # Entity ids and scores run along the tokens (axis 1).
        if key.startswith("e_") and padding:
            value = value[:, : value.shape[1] - padding]
        single[key] = value
    return single
