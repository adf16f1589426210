"""A tenant's bot, from a domain file: what to answer to each intent.

    responses:
      greet:
        - text: "Hi {first_name}!"          # {name}: a slot or entity value
          quick_replies: [{title: Orders, payload: /order_status}]
      order_status:
        action: order_status                # an action answers instead
    actions:
      order_status:
        kind: order_status                  # which built-in action
        base_url: ${ORDER_API_URL:-http://127.0.0.1:8090}
        required_slots: [order_id]
        responses: {ask: [...], success: [...], not_found: [...], error: [...]}
    payloads: {GET_STARTED: greet}          # postback payloads to intents
    slots: [order_id, city]                 # entities remembered per user
    handoff_intent: human_handoff
    messenger_profile: {get_started: GET_STARTED, greeting: {default: "Hi!"}}  # optional

The page's Messenger profile (Get Started, greeting, menu, ice breakers) is
described in ``messenger_profile``; ``chatbot messenger-profile apply`` sets it.

Special responses: ``fallback`` (low confidence or unknown intent),
``nlu_unavailable``, ``attachment`` (a message without text), ``handoff``
(sent when the conversation is handed to a person).
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mesh.config import ConfigError
from mesh.tenants import Tenants
from services.dialogue.messenger_profile import MessengerProfile, parse_messenger_profile

DEFAULT_DOMAIN = Path(__file__).resolve().parent / "domains" / "default.yml"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class QuickReplySpec:
    title: str
    payload: str
    image_url: str = ""


@dataclass(frozen=True)
class ResponseSpec:
    text: str = ""
    image: str = ""
    quick_replies: tuple[QuickReplySpec, ...] = ()

    def fields(self) -> set[str]:
        names = set()
        for source in (self.text, self.image):
            for _, name, _, _ in string.Formatter().parse(source):
                if name:
                    names.add(name)
        return names


@dataclass(frozen=True)
class ActionSpec:
    name: str
    kind: str
    base_url: str
    required_slots: tuple[str, ...]
    responses: Mapping[str, tuple[ResponseSpec, ...]]
    timeout_s: float = 3.0


@dataclass(frozen=True)
class Domain:
    responses: Mapping[str, tuple[ResponseSpec, ...]]
    intent_actions: Mapping[str, str]
    actions: Mapping[str, ActionSpec]
    payloads: Mapping[str, str]
    slots: frozenset[str]
    handoff_intent: str = "human_handoff"
    fallback_intent: str = "nlu_fallback"
    messenger_profile: MessengerProfile | None = None  # None: the file has no such section

    def choose(
        self,
        name: str,
        values: Mapping[str, str],
        seed: str,
        table: Mapping[str, Any] | None = None,
    ) -> list[ResponseSpec]:
        """The variant to send for ``name``: the most specific one whose fields are all known.

        Among equally specific variants, ``seed`` (the event id) picks, so a
        retry says the same thing.
        """
        variants = (table or self.responses).get(name, ())
        usable = [v for v in variants if v.fields() <= set(values)]
        if not usable:
            return []
        most = max(len(v.fields()) for v in usable)
        usable = [v for v in usable if len(v.fields()) == most]
        index = int(hashlib.sha256(seed.encode()).hexdigest(), 16) % len(usable)
        return [usable[index]]


def _expand(value: str) -> str:
    def lookup(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        return os.environ.get(name) or (default if default is not None else "")

    return _ENV.sub(lookup, value)


def _responses(raw: Any, where: str) -> tuple[ResponseSpec, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: a response is a list of variants")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not (item.get("text") or item.get("image")):
            raise ConfigError(f"{where}[{i}]: needs 'text' or 'image'")
        quick = tuple(
            QuickReplySpec(
                str(q["title"]), str(q.get("payload", q["title"])), str(q.get("image_url", ""))
            )
            for q in item.get("quick_replies") or []
        )
        if len(quick) > 13:
            raise ConfigError(f"{where}[{i}]: Messenger allows at most 13 quick replies")
        for q in quick:
            if len(q.title) > 20:
                raise ConfigError(
                    f"{where}[{i}]: quick reply title {q.title!r} is over 20 characters"
                )
        out.append(ResponseSpec(str(item.get("text", "")), str(item.get("image", "")), quick))
    return tuple(out)


def load_domain(path: Path) -> Domain:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"domain {path} cannot be read: {exc}") from exc
    responses: dict[str, tuple[ResponseSpec, ...]] = {}
    intent_actions: dict[str, str] = {}
    for name, value in (raw.get("responses") or {}).items():
        if isinstance(value, dict) and "action" in value:
            intent_actions[str(name)] = str(value["action"])
        else:
            responses[str(name)] = _responses(value, f"{path}: responses.{name}")
    actions: dict[str, ActionSpec] = {}
    for name, value in (raw.get("actions") or {}).items():
        if not isinstance(value, dict) or "kind" not in value:
            raise ConfigError(f"{path}: actions.{name} needs a 'kind'")
        actions[str(name)] = ActionSpec(
            name=str(name),
            kind=str(value["kind"]),
            base_url=_expand(str(value.get("base_url", ""))).rstrip("/"),
            required_slots=tuple(str(s) for s in value.get("required_slots") or []),
            responses={
                str(k): _responses(v, f"{path}: actions.{name}.responses.{k}")
                for k, v in (value.get("responses") or {}).items()
            },
            timeout_s=float(value.get("timeout_seconds", 3.0)),
        )
    for intent, action in intent_actions.items():
        if action not in actions:
            raise ConfigError(f"{path}: responses.{intent} names an unknown action {action!r}")
    if "fallback" not in responses:
        raise ConfigError(f"{path}: a 'fallback' response is required")
    profile = None
    if raw.get("messenger_profile") is not None:
        profile = parse_messenger_profile(raw["messenger_profile"], f"{path}: messenger_profile")
    return Domain(
        responses=responses,
        intent_actions=intent_actions,
        actions=actions,
        payloads={str(k): str(v) for k, v in (raw.get("payloads") or {}).items()},
        slots=frozenset(str(s) for s in raw.get("slots") or []),
        handoff_intent=str(raw.get("handoff_intent", "human_handoff")),
        messenger_profile=profile,
    )


def load_domains(tenants: Tenants) -> dict[str, Domain]:
    """Every tenant's domain: its own file, or the default one."""
    default = load_domain(DEFAULT_DOMAIN)
    return {t.id: load_domain(Path(t.domain)) if t.domain else default for t in tenants}
