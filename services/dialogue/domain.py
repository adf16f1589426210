"""A tenant's bot, from a domain file: what to answer to each intent.

    responses:
      greet:
        - text: "Hi {first_name}!"          # {name}: a slot or entity value
          quick_replies: [{title: Orders, payload: /order_status}]
      menu:
        - text: "What would you like?"      # with buttons: a button template
          buttons: [{title: Track, payload: /order_status}, {title: Shop, url: "https://..."}]
      products:
        - text: "Our bestsellers"           # sent before the carousel
          cards:                            # a generic template, up to 10 cards
            - {title: Shoes, subtitle: "...", image: "https://...", url: "https://...",
               buttons: [{title: Buy, payload: BUY_SHOES}]}
      manual:
        - file: "https://.../manual.pdf"    # also image, audio, video
      order_status:
        action: order_status                # an action answers instead
    actions:
      order_status:
        kind: order_status                  # which built-in action
        base_url: ${ORDER_API_URL:-http://127.0.0.1:8090}
        required_slots: [order_id]
        responses: {ask: [...], success: [...], not_found: [...], error: [...]}
    payloads: {GET_STARTED: greet}          # postback payloads to intents
    referrals: {summer-sale: /order_status} # m.me/<page>?ref=summer-sale ("*": any ref)
    slots: [order_id, city]                 # entities remembered per user
    handoff_intent: human_handoff
    mark_seen: true                         # "seen" shown while a slow answer is on its way
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
from dataclasses import dataclass, field
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


# Messenger's limits on what a message may carry.
MEDIA_KINDS = ("image", "audio", "video", "file")
MAX_BUTTONS = 3
MAX_CARDS = 10
BUTTON_TITLE_CHARS = 20
CARD_TEXT_CHARS = 80


@dataclass(frozen=True)
class ButtonSpec:
    """A button: a postback (``payload``) or a link (``url``)."""

    title: str
    payload: str = ""
    url: str = ""


@dataclass(frozen=True)
class CardSpec:
    """One element of a generic template (a carousel of up to ten cards)."""

    title: str
    subtitle: str = ""
    image: str = ""
    url: str = ""  # opened when the card itself is tapped
    buttons: tuple[ButtonSpec, ...] = ()


@dataclass(frozen=True)
class ResponseSpec:
    text: str = ""
    image: str = ""
    quick_replies: tuple[QuickReplySpec, ...] = ()
    media: tuple[tuple[str, str], ...] = ()  # (kind, url) other than ``image``
    buttons: tuple[ButtonSpec, ...] = ()
    cards: tuple[CardSpec, ...] = ()

    def templates(self) -> list[str]:
        """Every string of the response that may name slots or entities."""
        found = [self.text, self.image, *(url for _, url in self.media)]
        for card in self.cards:
            found += [card.title, card.subtitle, card.image, card.url]
        return found

    def fields(self) -> set[str]:
        names = set()
        for source in self.templates():
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
    mark_seen: bool = True  # show "seen" while a slow answer (over 0.3 s) is on its way
    # An m.me link's or an ad's ``ref`` -> the payload it stands for ("*": any other ref).
    referrals: Mapping[str, str] = field(default_factory=dict)

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


def _buttons(raw: Any, where: str) -> tuple[ButtonSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_BUTTONS:
        raise ConfigError(f"{where}: a list of at most {MAX_BUTTONS} buttons")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not item.get("title"):
            raise ConfigError(f"{where}[{i}]: a button needs a 'title'")
        title, payload, url = (
            str(item["title"]),
            str(item.get("payload", "")),
            str(item.get("url", "")),
        )
        if len(title) > BUTTON_TITLE_CHARS:
            raise ConfigError(
                f"{where}[{i}]: title {title!r} is over {BUTTON_TITLE_CHARS} characters"
            )
        if bool(payload) == bool(url):
            raise ConfigError(f"{where}[{i}]: a button has either a 'payload' or a 'url'")
        if url and not url.startswith(("https://", "http://")):
            raise ConfigError(f"{where}[{i}]: url {url!r} is not a web address")
        out.append(ButtonSpec(title, payload, url))
    return tuple(out)


def _cards(raw: Any, where: str) -> tuple[CardSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CARDS:
        raise ConfigError(f"{where}: a list of 1 to {MAX_CARDS} cards")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not item.get("title"):
            raise ConfigError(f"{where}[{i}]: a card needs a 'title'")
        card = CardSpec(
            title=str(item["title"]),
            subtitle=str(item.get("subtitle", "")),
            image=str(item.get("image", "")),
            url=str(item.get("url", "")),
            buttons=_buttons(item.get("buttons"), f"{where}[{i}].buttons"),
        )
        for name in ("title", "subtitle"):
            if len(getattr(card, name)) > CARD_TEXT_CHARS:
                raise ConfigError(f"{where}[{i}]: {name} is over {CARD_TEXT_CHARS} characters")
        out.append(card)
    return tuple(out)


def _responses(raw: Any, where: str) -> tuple[ResponseSpec, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: a response is a list of variants")
    out = []
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        content = ("text", *MEDIA_KINDS, "cards")
        if not isinstance(item, dict) or not any(item.get(key) for key in content):
            raise ConfigError(f"{here}: needs 'text', 'cards' or one of {', '.join(MEDIA_KINDS)}")
        quick = tuple(
            QuickReplySpec(
                str(q["title"]), str(q.get("payload", q["title"])), str(q.get("image_url", ""))
            )
            for q in item.get("quick_replies") or []
        )
        if len(quick) > 13:
            raise ConfigError(f"{here}: Messenger allows at most 13 quick replies")
        for q in quick:
            if len(q.title) > 20:
                raise ConfigError(f"{here}: quick reply title {q.title!r} is over 20 characters")
        buttons = _buttons(item.get("buttons"), f"{here}.buttons")
        if buttons and not item.get("text"):
            raise ConfigError(f"{here}: buttons go with a 'text' (Messenger's button template)")
        out.append(
            ResponseSpec(
                text=str(item.get("text", "")),
                image=str(item.get("image", "")),
                quick_replies=quick,
                # In the file's order, which is the order they are sent in.
                media=tuple((k, str(v)) for k, v in item.items() if k in MEDIA_KINDS[1:] and v),
                buttons=buttons,
                cards=_cards(item.get("cards"), f"{here}.cards"),
            )
        )
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
    payloads = {str(k): str(v) for k, v in (raw.get("payloads") or {}).items()}
    referrals = {str(k): str(v) for k, v in (raw.get("referrals") or {}).items()}
    for ref, payload in referrals.items():
        if not (payload.startswith("/") and len(payload) > 1) and payload not in payloads:
            raise ConfigError(
                f"{path}: referrals.{ref} names {payload!r}: expected /intent or a key of payloads"
            )
    profile = None
    if raw.get("messenger_profile") is not None:
        profile = parse_messenger_profile(raw["messenger_profile"], f"{path}: messenger_profile")
    return Domain(
        responses=responses,
        intent_actions=intent_actions,
        actions=actions,
        payloads=payloads,
        slots=frozenset(str(s) for s in raw.get("slots") or []),
        handoff_intent=str(raw.get("handoff_intent", "human_handoff")),
        messenger_profile=profile,
        mark_seen=bool(raw.get("mark_seen", True)),
        referrals=referrals,
    )


def load_domains(tenants: Tenants) -> dict[str, Domain]:
    """Every tenant's domain: its own file, or the default one."""
    default = load_domain(DEFAULT_DOMAIN)
    return {t.id: load_domain(Path(t.domain)) if t.domain else default for t in tenants}
