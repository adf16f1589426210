"""DIET inference over a whole batch of messages, features and all.

Rasa's ``DIETClassifier.process`` runs the TensorFlow model once per message,
so a graph run over 32 messages costs nearly 32 single runs. ``install``
points the loaded graph's DIET node at a batched process instead, which runs
the model once per group of messages of similar length and hands each message
its own slice of the output.

When the featurizers between the tokenizer and DIET are ones
``services.nlu.batched_features`` knows (and a load-time check finds it gives
DIET exactly Rasa's input), their nodes pass the messages through and DIET's
node computes their features for the whole batch. Otherwise they run as Rasa
runs them. The components after DIET (synonyms, fallback) always do.

Padding does not change a message's result: DIET masks padded positions, and
the entity outputs are cut back to the length a single run would produce.
"""

from __future__ import annotations

from typing import Any

from mesh import get_logger

_log = get_logger("nlu.batched_diet")

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
            featurizers = _batchable_featurizers(nodes, node)
            node._fn = BatchedDiet(featurizers)
            installed = True
    return installed


def featurizes_in_batch(runner: Any) -> bool:
    """Whether the runner's DIET node also computes the batch's features."""
    nodes = getattr(runner, "_instantiated_nodes", {})
    return any(
        isinstance(n._fn, BatchedDiet) and n._fn.featurizer is not None for n in nodes.values()
    )


def _batchable_featurizers(nodes: dict[str, Any], diet_node: Any) -> _Featurizers | None:
    """The featurizer nodes feeding DIET, switched to pass-through, if all can be batched."""
    from rasa.nlu.featurizers.sparse_featurizer.sparse_featurizer import SparseFeaturizer
    from rasa.nlu.tokenizers.tokenizer import Tokenizer
    from rasa.utils.tensorflow.constants import FEATURIZERS

    from services.nlu.batched_features import BatchFeaturizer, matches_rasa

    chain = []
    name = diet_node._inputs.get("messages")
    while name in nodes and issubclass(nodes[name]._component_class, SparseFeaturizer):
        chain.append(nodes[name])
        name = nodes[name]._inputs.get("messages")
    tokenizer = nodes.get(name)
    chain.reverse()
    names = {n._node_name for n in chain}
    # Every featurizer feeds only the next node, and DIET takes all of them.
    consumers = [source for n in nodes.values() for source in n._inputs.values() if source in names]
    wanted = diet_node._component.component_config.get(FEATURIZERS) or []
    if (
        not chain
        or tokenizer is None
        or not issubclass(tokenizer._component_class, Tokenizer)
        or len(consumers) != len(chain)
        or any(n._fn is not n._component_class.process for n in chain)
        or any(not BatchFeaturizer.supports(n._component) for n in chain)
        or (wanted and set(wanted) != {n._component._identifier for n in chain})
    ):
        return None
    components = [n._component for n in chain]
    featurizer = BatchFeaturizer(components)
    if not matches_rasa(featurizer, tokenizer._component, components, diet_node._component):
        _log.warning("batched features differ from Rasa's: featurizing message by message")
        return None
    rasa_steps = [(n._fn, n._component) for n in chain]
    for n in chain:
        n._fn = _pass_through
    return _Featurizers(featurizer, rasa_steps)


def _pass_through(component: Any, messages: list[Any]) -> list[Any]:
    """A featurizer node whose work DIET's batched node does."""
    return messages


class _Featurizers:
    def __init__(self, batch: Any, rasa_steps: list[tuple[Any, Any]]) -> None:
        self.batch = batch
        self._rasa_steps = rasa_steps

    def with_rasa(self, messages: list[Any]) -> None:
        """Rasa's own featurizers on these messages, in pipeline order."""
        for fn, component in self._rasa_steps:
            fn(component, messages)


class BatchedDiet:
    """``DIETClassifier.process`` with one model run per length group."""

    def __init__(self, featurizers: _Featurizers | None) -> None:
        self._featurizers = featurizers

    @property
    def featurizer(self) -> Any:
        return self._featurizers.batch if self._featurizers else None

    def __call__(self, diet: Any, messages: list[Any]) -> list[Any]:
        from rasa.nlu.classifiers.diet_classifier import DIETClassifier
        from rasa.shared.nlu.constants import ENTITIES, INTENT, TEXT
        from rasa.utils.tensorflow.constants import (
            ENTITY_RECOGNITION,
            FEATURIZERS,
            INTENT_CLASSIFICATION,
        )

        featurizers = self._featurizers
        batched, rest = [], messages
        if featurizers is not None:
            batched = [m for m in messages if featurizers.batch.accepts(m)]
            rest = [m for m in messages if not featurizers.batch.accepts(m)]
            if rest:
                featurizers.with_rasa(rest)
        if diet.model is None or diet._execution_context.should_add_diagnostic_data:
            if featurizers is not None and batched:
                featurizers.with_rasa(batched)
            return list(DIETClassifier.process(diet, messages))

        outputs: dict[int, dict[str, Any] | None] = {}
        if featurizers is not None and batched:
            outputs.update(
                zip(map(id, batched), _predict_batch(diet, batched, featurizers.batch), strict=True)
            )
        # Rasa skips messages without features (their answer is "no intent").
        wanted = diet.component_config.get(FEATURIZERS)
        featurized = [m for m in rest if m.features_present(TEXT, wanted)]
        outputs.update(zip(map(id, featurized), _predict_many(diet, featurized), strict=True))
        for message in messages:
            out = outputs.get(id(message))
            if diet.component_config[INTENT_CLASSIFICATION]:
                label, ranking = diet._predict_label(out)
                message.set(INTENT, label, add_to_output=True)
                message.set("intent_ranking", ranking, add_to_output=True)
            if diet.component_config[ENTITY_RECOGNITION]:
                message.set(ENTITIES, diet._predict_entities(out, message), add_to_output=True)
        return messages


def _predict_batch(diet: Any, messages: list[Any], featurizer: Any) -> list[dict[str, Any]]:
    """What ``diet._predict`` answers for each message, features computed here."""
    features = featurizer.featurize(messages)
    answers: list[dict[str, Any]] = [{}] * len(messages)
    lengths = [int(n) for n in features.lengths]
    for group in _length_groups(lengths):
        out = diet.model._rasa_predict(features.model_input(group))
        longest = max(lengths[i] for i in group)
        for row, index in enumerate(group):
            answers[index] = _row(out, row, longest - lengths[index])
    return answers


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
