"""ExportTrainingData's output: Rasa NLU training data (YAML, format 3.1).

Users type anything, and Rasa's reader is picky: an example is one line, its
ends are stripped, and brackets followed by ``(``, ``{`` or ``[`` are read as
entity annotations. So each example is made safe here: line breaks become
spaces (one for one, so entity offsets still hold), the ends are trimmed, and
the annotated line is parsed back with Rasa's own pattern: an entity that
would not read back as extracted is left unannotated, and a text that would
not read back as itself is left out of the YAML (it is still in the rows, and
a comment counts it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import yaml
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.common.v1 import nlu_result_pb2

from services.chatlog.records import ns_timestamp

# rasa/shared/nlu/training_data/entities_parser.py (Rasa 3.6), verbatim.
_RASA_ENTITY = re.compile(
    r"\[(?P<entity_text>[^\]]+?)\](\((?P<entity>[^:)]+?)(?:\:(?P<value>[^)]+))?\)"
    r"|\{(?P<entity_dict>[^}]+?)\}|\[(?P<list_entity_dicts>.*?)\])"
)
# What str.splitlines() (Rasa's example splitter) and YAML treat as line breaks.
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
_STRIP = "\n\r "  # rasa_yaml.STRIP_SYMBOLS


@dataclass(frozen=True, slots=True)
class ExportRow:
    message_id: str
    conversation_id: str
    create_ns: int
    text: str
    intent: str
    confidence: float
    entities: tuple[nlu_result_pb2.Entity, ...]
    is_fallback: bool
    model_version: str

    def to_proto(self) -> pb.TrainingExample:
        return pb.TrainingExample(
            message_id=self.message_id,
            conversation_id=self.conversation_id,
            text=self.text,
            intent=self.intent,
            confidence=self.confidence,
            entities=self.entities,
            is_fallback=self.is_fallback,
            model_version=self.model_version,
            create_time=ns_timestamp(self.create_ns),
        )


def _read_back(line: str) -> tuple[str, list[tuple[int, int, str, str]]]:
    """The plain text and (start, end, entity, value) spans Rasa reads from ``line``."""
    plain: list[str] = []
    spans: list[tuple[int, int, str, str]] = []
    position = 0
    length = 0
    for match in _RASA_ENTITY.finditer(line):
        plain.append(line[position : match.start()])
        length += match.start() - position
        text = match.group("entity_text")
        if match.group("entity"):
            entity, value = match.group("entity"), match.group("value") or text
        elif match.group("entity_dict"):
            try:
                fields = json.loads("{" + match.group("entity_dict") + "}")
            except ValueError:
                fields = {}
            entity, value = str(fields.get("entity", "")), str(fields.get("value", text))
        else:
            entity, value = "", text  # a list of dicts: never written here
        spans.append((length, length + len(text), entity, value))
        plain.append(text)
        length += len(text)
        position = match.end()
    plain.append(line[position:])
    return "".join(plain), spans


def _annotation(span: str, entity: nlu_result_pb2.Entity) -> str:
    plain_name = not _LINE_BREAKS.search(entity.entity) and not set(entity.entity) & set(":()")
    if entity.value == span and not entity.role and not entity.group and plain_name:
        return f"[{span}]({entity.entity})"
    fields = {"entity": entity.entity, "value": entity.value}
    if entity.role:
        fields["role"] = entity.role
    if entity.group:
        fields["group"] = entity.group
    # JSON escapes \n and \r itself; the other line breaks would split the example line.
    text = json.dumps(fields, ensure_ascii=False)
    return f"[{span}]" + _LINE_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def example_line(text: str, entities: Sequence[nlu_result_pb2.Entity]) -> str | None:
    """``text`` with its entities annotated as one Rasa example line, or None if it cannot be."""
    flat = _LINE_BREAKS.sub(" ", text)
    stripped = flat.strip(_STRIP)
    shift = len(flat) - len(flat.lstrip(_STRIP))
    if not stripped:
        return None
    plain_back, spans_back = _read_back(stripped)
    if plain_back != stripped or spans_back:
        return None  # the user's own brackets would read as annotations
    parts: list[str] = []
    expected: list[tuple[int, int, str, str]] = []
    position = 0
    for entity in sorted(entities, key=lambda e: (e.start, e.end)):
        start, end = entity.start - shift, entity.end - shift
        if not entity.entity or start < position or end > len(stripped) or start >= end:
            continue  # out of the text, empty, or overlapping the previous one
        span = stripped[start:end]
        annotated = _annotation(span, entity)
        if _read_back(annotated) != (span, [(0, len(span), entity.entity, entity.value)]):
            continue  # a bracket or brace in it would break the annotation
        parts.append(stripped[position:start])
        parts.append(annotated)
        expected.append((start, end, entity.entity, entity.value))
        position = end
    parts.append(stripped[position:])
    line = "".join(parts)
    # The whole line must read back as written: a user's bracket just before an
    # annotation (":[" + "[:](city)") would swallow it into the entity's text.
    return line if _read_back(line) == (stripped, expected) else stripped


class _Literal(str):
    """A string PyYAML writes as a ``|`` block when it can (readable diffs)."""


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _literal)


def rasa_nlu_yaml(rows: Sequence[ExportRow]) -> str:
    """Rows (lowest confidence first) as Rasa NLU YAML, one item per intent, no repeats."""
    examples: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    skipped = 0
    for row in rows:
        line = example_line(row.text, row.entities)
        if line is None:
            skipped += 1
            continue
        if (row.intent, line) in seen:
            continue
        seen.add((row.intent, line))
        examples.setdefault(row.intent, []).append(line)
    document = {
        "version": "3.1",
        "nlu": [
            {"intent": intent, "examples": _Literal("".join(f"- {x}\n" for x in lines))}
            for intent, lines in examples.items()
        ],
    }
    header = "# Exported by the chatlog: lowest confidence first. Review before training.\n"
    if skipped:
        header += f"# {skipped} example(s) left out: their text cannot be written as Rasa YAML.\n"
    body: str = yaml.dump(
        document, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=1 << 20
    )
    return header + body
