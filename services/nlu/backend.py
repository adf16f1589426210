"""What the NLU service asks of a model, and the Rasa model that answers.

The servicer depends only on ``NluBackend``; ``RasaBackend`` imports Rasa
lazily so the servicer can be loaded (and unit-tested) without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from services.nlu.training import FALLBACK_INTENT, ModelMetadata


@dataclass(frozen=True)
class IntentScore:
    name: str
    confidence: float


@dataclass(frozen=True)
class EntitySpan:
    entity: str
    value: str
    start: int
    end: int
    confidence: float = 0.0
    extractor: str = ""
    role: str = ""
    group: str = ""


@dataclass(frozen=True)
class ParseResult:
    text: str
    intent: IntentScore
    ranking: list[IntentScore] = field(default_factory=list)
    entities: list[EntitySpan] = field(default_factory=list)

    @property
    def is_fallback(self) -> bool:
        return self.intent.name == FALLBACK_INTENT


@dataclass(frozen=True)
class ModelInfo:
    version: str
    language: str
    intents: list[str]
    entities: list[str]
    fallback_threshold: float
    fallback_intent: str
    train_time: float
    path: str
    pipeline: list[str]


class NluBackend(Protocol):
    """A loaded model. ``parse_many`` answers in the order of ``texts``."""

    @property
    def info(self) -> ModelInfo: ...

    def parse_many(self, texts: Sequence[str]) -> list[ParseResult]: ...


def parse_result_from_rasa(data: dict[str, Any]) -> ParseResult:
    """Turns Rasa's parse dictionary into a ``ParseResult``."""
    raw_intent = data.get("intent") or {}
    intent = IntentScore(
        str(raw_intent.get("name") or ""), float(raw_intent.get("confidence") or 0.0)
    )
    ranking = [
        IntentScore(str(item.get("name") or ""), float(item.get("confidence") or 0.0))
        for item in data.get("intent_ranking") or []
    ]
    entities = sorted(
        (
            EntitySpan(
                entity=str(item.get("entity") or ""),
                value=str(item.get("value") if item.get("value") is not None else ""),
                start=int(item.get("start") or 0),
                end=int(item.get("end") or 0),
                confidence=float(item.get("confidence_entity") or item.get("confidence") or 0.0),
                extractor=str(item.get("extractor") or ""),
                role=str(item.get("role") or ""),
                group=str(item.get("group") or ""),
            )
            for item in data.get("entities") or []
        ),
        key=lambda e: (e.start, e.end, e.entity),
    )
    return ParseResult(str(data.get("text") or ""), intent, ranking, entities)


class RasaBackend:
    """A Rasa model loaded in this process. Loading takes tens of seconds.

    With ``batched`` (the default), the featurizers and DIET run once per batch
    of texts rather than once per text (``services.nlu.batched_diet``), and the
    model loads without Rasa's warm-up training step (``services.nlu.runtime``);
    the results are the same. Without it, the model is Rasa's, as Rasa loads
    and runs it.
    """

    def __init__(self, model_path: Path, *, batched: bool = True) -> None:
        from services.nlu import batched_diet, runtime

        runtime.prepare()
        from rasa.core.agent import Agent

        self._path = model_path
        if batched:
            with runtime.lean_model_load():
                self._agent = Agent.load(str(model_path))
        else:
            self._agent = Agent.load(str(model_path))
        processor = self._agent.processor
        if processor is None:
            raise RuntimeError(f"{model_path} holds no usable model")
        self._runner = processor.graph_runner
        self._target = processor.model_metadata.nlu_target
        self._batched = batched and batched_diet.install(self._runner)
        meta = ModelMetadata.read(model_path)
        domain = self._agent.domain
        self._info = ModelInfo(
            version=meta.version if meta else model_path.name.removesuffix(".tar.gz"),
            language=meta.language if meta else str(processor.model_metadata.language or ""),
            intents=meta.intents if meta else sorted(domain.intents if domain else []),
            entities=meta.entities if meta else sorted(domain.entities if domain else []),
            fallback_threshold=meta.fallback_threshold if meta else 0.0,
            fallback_intent=FALLBACK_INTENT,
            train_time=meta.train_time if meta else model_path.stat().st_mtime,
            path=str(model_path),
            pipeline=meta.pipeline if meta else [],
        )
        runtime.release_free_memory()

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def batched(self) -> bool:
        """Whether DIET runs once per batch (the model's pipeline allowed it)."""
        return self._batched

    def parse_many(self, texts: Sequence[str]) -> list[ParseResult]:
        from rasa.core.channels.channel import UserMessage
        from rasa.engine.constants import PLACEHOLDER_MESSAGE, PLACEHOLDER_TRACKER
        from rasa.shared.core.trackers import DialogueStateTracker
        from rasa.shared.nlu.constants import INTENT, TEXT

        # The graph takes a list of messages: one run for the whole batch.
        messages = [UserMessage(text) for text in texts]
        tracker = DialogueStateTracker.from_events("nlu", [])
        results = self._runner.run(
            inputs={PLACEHOLDER_MESSAGE: messages, PLACEHOLDER_TRACKER: tracker},
            targets=[self._target],
        )
        parsed = results[self._target]
        out = []
        for text, message in zip(texts, parsed, strict=True):
            data: dict[str, Any] = {TEXT: text, INTENT: {"name": None, "confidence": 0.0}}
            data.update(message.as_dict(only_output_properties=True))
            data[TEXT] = text
            out.append(parse_result_from_rasa(data))
        return out
