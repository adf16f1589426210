"""The pipeline's sparse features for a whole batch of messages at once.

Rasa's featurizers loop message by message, each building small scipy
matrices that DIET then stacks message by message again: with the model itself
run once per batch, that bookkeeping is most of a parse's CPU. ``BatchFeaturizer``
computes the same features for the whole batch with one vectorizer call per
count-vectors featurizer and plain arrays elsewhere, and hands DIET its model
input directly.

"The same" means equal, entry for entry and in the same order: the sparse
entries of each message come block by block in pipeline order, each block in
the order its Rasa featurizer produces them, which is how Rasa's ``hstack``
leaves them. ``BatchFeaturizer.matches_rasa`` checks that against Rasa's own
path when the model loads.

Messages this does not cover (an empty text, which Rasa's regex featurizer
leaves without features) are featurized by Rasa's components, one by one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_NUMBER = re.compile(r"\b[0-9]+\b")


@dataclass(frozen=True)
class _Entries:
    """Sparse entries of one feature block for a batch, in Rasa's order."""

    message: np.ndarray
    row: np.ndarray
    col: np.ndarray
    data: np.ndarray

    @staticmethod
    def of(
        message: list[int], row: list[int], col: list[int], data: list[int] | None = None
    ) -> _Entries:
        values = np.ones(len(col)) if data is None else np.asarray(data, dtype=np.float64)
        return _Entries(
            np.asarray(message, dtype=np.int64),
            np.asarray(row, dtype=np.int64),
            np.asarray(col, dtype=np.int64),
            values,
        )


@dataclass(frozen=True)
class _Block:
    sequence: _Entries
    sentence: _Entries | None


class _Regex:
    def __init__(self, component: Any) -> None:
        flags = 0 if component.case_sensitive else re.IGNORECASE
        self.patterns = [re.compile(p["pattern"], flags) for p in component.known_patterns]
        self.width = len(self.patterns)
        self.sentence_width = self.width

    def block(self, texts: Sequence[str], tokens: Sequence[Sequence[Any]]) -> _Block:
        seq: tuple[list[int], list[int], list[int]] = ([], [], [])
        sent: tuple[list[int], list[int], list[int]] = ([], [], [])
        for index, (text, toks) in enumerate(zip(texts, tokens, strict=True)):
            hits: set[tuple[int, int]] = set()
            for column, pattern in enumerate(self.patterns):
                for match in pattern.finditer(text):
                    start, end = match.start(), match.end()
                    for position, token in enumerate(toks):
                        if token.start < end and token.end > start:
                            hits.add((position, column))
            # Rasa builds a dense matrix: its entries come row by row.
            for position, column in sorted(hits):
                seq[0].append(index)
                seq[1].append(position)
                seq[2].append(column)
            for column in sorted({column for _, column in hits}):
                sent[0].append(index)
                sent[1].append(0)
                sent[2].append(column)
        return _Block(_Entries.of(*seq), _Entries.of(*sent))


class _LexicalSyntactic:
    def __init__(self, component: Any) -> None:
        from rasa.nlu.featurizers.sparse_featurizer.lexical_syntactic_featurizer import (
            BEGIN_OF_SENTENCE,
            END_OF_SENTENCE,
        )

        self.functions = component._FUNCTION_DICT
        self.bos, self.eos = BEGIN_OF_SENTENCE, END_OF_SENTENCE
        config: list[list[str]] = component._feature_config
        half = len(config) // 2
        # Per window position: its offset and the (name, value to index) it looks up.
        self.window = [
            (
                offset,
                [
                    (name, component._feature_to_idx_dict.get((position, name)))
                    for name in config[position]
                ],
            )
            for position, offset in enumerate(range(-half, half + len(config) % 2))
        ]
        self.names = sorted({name for names in config for name in names})
        self.width = int(component._number_of_features)
        self.sentence_width = 0

    def _raw(self, toks: Sequence[Any]) -> list[dict[str, str]]:
        last = len(toks) - 1
        raw = []
        for position, token in enumerate(toks):
            values = {}
            for name in self.names:
                if name == self.bos:
                    values[name] = str(position == 0)
                elif name == self.eos:
                    values[name] = str(position == last)
                else:
                    values[name] = str(self.functions[name](token))
            raw.append(values)
        return raw

    def block(self, texts: Sequence[str], tokens: Sequence[Sequence[Any]]) -> _Block:
        message: list[int] = []
        rows: list[int] = []
        cols: list[int] = []
        for index, toks in enumerate(tokens):
            raw = self._raw(toks)
            count = len(toks)
            for anchor in range(count):
                for offset, lookups in self.window:
                    position = anchor + offset
                    if position < 0 or position >= count:
                        continue
                    values = raw[position]
                    for name, mapping in lookups:
                        if not mapping:
                            continue
                        column = mapping.get(values[name], -1)
                        if column > -1:
                            message.append(index)
                            rows.append(anchor)
                            cols.append(column)
        return _Block(_Entries.of(message, rows, cols), None)


class _CountVectors:
    # Distinct words and sentences remembered, per featurizer: enough for a
    # day's vocabulary, a bounded cost in memory.
    _CACHED = 50_000

    def __init__(self, component: Any) -> None:
        from rasa.shared.nlu.constants import TEXT

        self.component = component
        vectorizer = component.vectorizers[TEXT]
        self.analyze = vectorizer.build_analyzer()
        self.vocabulary: dict[str, int] = vectorizer.vocabulary_
        self.binary = bool(vectorizer.binary)
        self.width = len(self.vocabulary)
        self.sentence_width = self.width
        self._counts: dict[str, tuple[list[int], list[int]]] = {}

    def _words(self, toks: Sequence[Any]) -> list[str]:
        from rasa.shared.nlu.constants import TEXT

        component = self.component
        words = [t.lemma if component.use_lemma else t.text for t in toks]
        words = [_NUMBER.sub("__NUMBER__", w) for w in words]
        if component.lowercase:
            words = [w.lower() for w in words]
        replaced: list[str] = component._replace_with_oov_token(words, TEXT)
        return replaced

    def block(self, texts: Sequence[str], tokens: Sequence[Sequence[Any]]) -> _Block:
        per_message = [self._words(toks) for toks in tokens]
        seq: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])
        sent: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])
        for index, words in enumerate(per_message):
            for position, word in enumerate(words):
                self._add(seq, index, position, word)
            self._add(sent, index, 0, " ".join(words))
        return _Block(_Entries.of(*seq), _Entries.of(*sent))

    def _add(
        self,
        out: tuple[list[int], list[int], list[int], list[int]],
        index: int,
        row: int,
        document: str,
    ) -> None:
        counts = self._counts.get(document)
        if counts is None:
            counts = self._count(document)
            if len(self._counts) >= self._CACHED:
                self._counts.clear()
            self._counts[document] = counts
        columns, values = counts
        out[0].extend([index] * len(columns))
        out[1].extend([row] * len(columns))
        out[2].extend(columns)
        out[3].extend(values)

    def _count(self, document: str) -> tuple[list[int], list[int]]:
        """One row of ``CountVectorizer.transform``, columns ascending (Rasa sorts them)."""
        counter: dict[int, int] = {}
        for feature in self.analyze(document):
            column = self.vocabulary.get(feature)
            if column is not None:
                counter[column] = counter.get(column, 0) + 1
        columns = sorted(counter)
        return columns, [1 if self.binary else counter[c] for c in columns]


def _kinds() -> dict[type, type[_Regex | _LexicalSyntactic | _CountVectors]]:
    from rasa.nlu.featurizers.sparse_featurizer.count_vectors_featurizer import (
        CountVectorsFeaturizer,
    )
    from rasa.nlu.featurizers.sparse_featurizer.lexical_syntactic_featurizer import (
        LexicalSyntacticFeaturizer,
    )
    from rasa.nlu.featurizers.sparse_featurizer.regex_featurizer import RegexFeaturizer

    return {
        RegexFeaturizer: _Regex,
        LexicalSyntacticFeaturizer: _LexicalSyntactic,
        CountVectorsFeaturizer: _CountVectors,
    }


@dataclass(frozen=True)
class BatchFeatures:
    """A batch's combined sequence and sentence features, message by message."""

    lengths: np.ndarray
    sequence: _Entries
    sentence: _Entries
    sequence_width: int
    sentence_width: int

    def model_input(self, group: Sequence[int]) -> tuple[np.ndarray, ...]:
        """DIET's input for these messages, as Rasa's batch generator builds it."""
        size = len(group)
        longest = int(self.lengths[list(group)].max())
        return (
            np.ones((size, 1, 1), dtype=np.float32),
            *_sparse_input(self.sentence, group, 1, self.sentence_width),
            *_sparse_input(self.sequence, group, longest, self.sequence_width),
            self.lengths[list(group)].astype(np.float32),
        )


def _sparse_input(
    entries: _Entries, group: Sequence[int], rows: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Entries are sorted by message: each message's entries are one slice.
    bounds = np.searchsorted(entries.message, np.arange(max(group) + 2))
    counts = []
    pieces = []
    for index in group:
        start, end = bounds[index], bounds[index + 1]
        pieces.append(np.arange(start, end))
        counts.append(end - start)
    take = np.concatenate(pieces).astype(np.int64)
    indices = np.stack(
        [np.repeat(np.arange(len(group)), counts), entries.row[take], entries.col[take]], axis=1
    ).astype(np.int64)
    shape = np.array((len(group), rows, width), dtype=np.int64)
    return indices, entries.data[take].astype(np.float32), shape


class BatchFeaturizer:
    """Rasa's sparse featurizers, in pipeline order, run on a batch at once."""

    def __init__(self, components: Sequence[Any]) -> None:
        kinds = _kinds()
        self._parts = [kinds[type(c)](c) for c in components]

    @staticmethod
    def supports(component: Any) -> bool:
        """Whether a featurizer component (of exactly this class) can run batched."""
        return type(component) in _kinds()

    @staticmethod
    def accepts(message: Any) -> bool:
        """Whether Rasa's featurizers give this message every block of features."""
        from rasa.nlu.constants import TOKENS_NAMES
        from rasa.shared.nlu.constants import TEXT

        text = message.get(TEXT)
        return isinstance(text, str) and bool(text) and bool(message.get(TOKENS_NAMES[TEXT]))

    def featurize(self, messages: Sequence[Any]) -> BatchFeatures:
        """Features of ``messages``, each of which ``accepts``."""
        from rasa.nlu.constants import TOKENS_NAMES
        from rasa.shared.nlu.constants import TEXT

        texts = [m.get(TEXT) for m in messages]
        tokens = [m.get(TOKENS_NAMES[TEXT]) for m in messages]
        blocks = [part.block(texts, tokens) for part in self._parts]
        sequence = _combine([b.sequence for b in blocks], [p.width for p in self._parts])
        with_sentence = [
            (b.sentence, p.sentence_width)
            for p, b in zip(self._parts, blocks, strict=True)
            if b.sentence is not None
        ]
        sentence = _combine([s for s, _ in with_sentence], [w for _, w in with_sentence])
        return BatchFeatures(
            np.array([len(t) for t in tokens], dtype=np.int64),
            sequence,
            sentence,
            sum(p.width for p in self._parts),
            sum(p.sentence_width for p in self._parts),
        )


def _combine(blocks: list[_Entries], widths: list[int]) -> _Entries:
    """Blocks side by side; per message, block after block (Rasa's hstack order)."""
    offsets = np.cumsum([0, *widths[:-1]])
    message = np.concatenate([b.message for b in blocks])
    order = np.argsort(message, kind="stable")
    return _Entries(
        message[order],
        np.concatenate([b.row for b in blocks])[order],
        np.concatenate([b.col + o for b, o in zip(blocks, offsets, strict=True)])[order],
        np.concatenate([b.data for b in blocks])[order],
    )


# Texts the load-time check runs both paths on: patterns, numbers, case, one word.
SAMPLE_TEXTS = (
    "Where is my order 12345?",
    "what's the weather in New York tomorrow",
    "hi",
    "HELLO there, Berlin and Paris!",
    "order 987654 to London please 42",
)


def matches_rasa(
    featurizer: BatchFeaturizer,
    tokenizer: Any,
    components: Sequence[Any],
    diet: Any,
    texts: Sequence[str] = SAMPLE_TEXTS,
) -> bool:
    """Whether DIET's input from ``featurizer`` equals Rasa's own, array for array."""
    import rasa.utils.train_utils
    from rasa.shared.nlu.constants import TEXT
    from rasa.shared.nlu.training_data.message import Message

    theirs = tokenizer.process([Message(data={TEXT: t}) for t in texts])
    for component in components:
        theirs = component.process(theirs)
    data = diet._create_model_data(theirs, training=False)
    generator, _ = rasa.utils.train_utils.create_data_generators(
        model_data=data, batch_sizes=len(texts), epochs=1, shuffle=False
    )
    expected = generator[0][0]
    mine = tokenizer.process([Message(data={TEXT: t}) for t in texts])
    if not all(featurizer.accepts(m) for m in mine):
        return False
    actual = featurizer.featurize(mine).model_input(range(len(texts)))
    return len(actual) == len(expected) and all(
        e is not None and a.dtype == e.dtype and a.shape == e.shape and np.array_equal(a, e)
        for a, e in zip(actual, expected, strict=True)
    )
