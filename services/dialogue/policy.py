"""The bot's policy: what to answer to one event, as a pure function.

Nothing here talks to Redis, the NLU, an action's API or a clock: the
processor asks the NLU and runs actions, and passes in what they said and the
time. A turn goes

    read(domain, event)                 -> an Understanding (a button's payload),
                                           Parse(text) for the NLU, or NoText
    decide(domain, event, slots, ...)   -> an Outcome, or RunAction
    after_action(domain, event, run, result) -> the Outcome of a RunAction

so the same inputs always give the same replies, slots and handoff. Among
equally fitting variants of a response, the event id picks, so a retried
event says the same thing again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from chatbot.common.v1 import event_pb2, nlu_result_pb2

from services.dialogue.actions import ActionOutcome
from services.dialogue.clients import Understanding
from services.dialogue.domain import ActionSpec, ButtonSpec, CardSpec, Domain, ResponseSpec

# Special responses of a domain (see ``services.dialogue.domain``).
FALLBACK = "fallback"
NLU_UNAVAILABLE = "nlu_unavailable"
ATTACHMENT = "attachment"


@dataclass(frozen=True)
class Parse:
    """The event's words, for the NLU to understand."""

    text: str


@dataclass(frozen=True)
class NoText:
    """Nothing to understand: a message without text, such as a photo."""


@dataclass(frozen=True)
class NluDown:
    """There were words, but the NLU could not be asked."""


Reading = Understanding | Parse | NoText
Understood = Understanding | NoText | NluDown


@dataclass(frozen=True)
class Handoff:
    """The conversation goes to a person; the bot stays silent until it comes back."""

    reason: str
    time_ms: int
    agent_id: str = ""

    def fields(self) -> dict[str, str]:
        """The fields the store keeps for a user's handoff."""
        return {
            "active": "1",
            "reason": self.reason,
            "agent_id": self.agent_id,
            "time": str(self.time_ms),
        }


@dataclass(frozen=True)
class Outcome:
    """What an event leads to, before it is logged and sent."""

    replies: tuple[event_pb2.Reply, ...] = ()
    understanding: Understanding | None = None
    # Slots to remember for the user (entities the domain declares as slots).
    slots: Mapping[str, str] = field(default_factory=dict)
    handoff: Handoff | None = None


SILENT = Outcome()


@dataclass(frozen=True)
class RunAction:
    """Run ``action`` with ``values``, then finish with ``after_action``."""

    action: ActionSpec
    values: Mapping[str, str]
    understanding: Understanding
    slots: Mapping[str, str]
    handoff: Handoff | None


Decision = Outcome | RunAction


def answerable(event: event_pb2.ChatEvent, domain: Domain) -> bool:
    """A user's own message or postback, or a referral the domain routes; not an
    echo of the page, not in standby."""
    kind = event.WhichOneof("kind")
    if event.standby or kind not in ("message", "postback", "referral"):
        return False
    if kind == "referral":
        return referral_payload(domain, event.referral) is not None
    return not (kind == "message" and event.message.is_echo)


def referral_payload(domain: Domain, referral: event_pb2.Referral) -> str | None:
    """The payload a referral (an m.me link's or an ad's ``ref``) stands for, if the
    domain routes it: its own entry, else the ``"*"`` entry."""
    return domain.referrals.get(referral.ref) or domain.referrals.get("*")


def payload_intent(payload: str, domain: Domain) -> tuple[str, dict[str, str]] | None:
    """``/intent`` or ``/intent{"entity": "value"}`` (Rasa's convention), or a mapped payload."""
    if payload.startswith("/") and len(payload) > 1:
        name, _, rest = payload[1:].partition("{")
        entities: dict[str, str] = {}
        if rest:
            try:
                parsed = json.loads("{" + rest)
                entities = {str(k): str(v) for k, v in parsed.items()}
            except (ValueError, AttributeError):
                entities = {}
        return name.strip(), entities
    if payload in domain.payloads:
        return domain.payloads[payload], {}
    return None


def read(domain: Domain, event: event_pb2.ChatEvent) -> Reading:
    """What there is to understand: a payload names its intent, words go to the NLU."""
    if event.HasField("referral"):
        text, payload = "", referral_payload(domain, event.referral) or ""
    elif event.HasField("postback"):
        text, payload = event.postback.title, event.postback.payload
        # Get Started through a link or an ad: the link's ref, when routed, decides.
        if event.postback.HasField("referral") and event.postback.referral.ref:
            payload = domain.referrals.get(event.postback.referral.ref) or payload
    else:
        text, payload = event.message.text, event.message.quick_reply_payload
    forced = payload_intent(payload, domain) if payload else None
    if forced is not None:
        return _certain(*forced)
    if text.strip() or payload:
        return Parse(text.strip() or payload)
    return NoText()


def _certain(name: str, entities: Mapping[str, str]) -> Understanding:
    intent = nlu_result_pb2.Intent(name=name, confidence=1.0)
    return Understanding(
        intent=intent,
        ranking=[nlu_result_pb2.Intent(name=name, confidence=1.0)],
        entities=[
            nlu_result_pb2.Entity(entity=k, value=v, extractor="payload")
            for k, v in entities.items()
        ],
    )


def decide(
    domain: Domain,
    event: event_pb2.ChatEvent,
    slots: Mapping[str, str],
    understood: Understood,
    *,
    now_ms: int,
) -> Decision:
    """The answer to an answerable event, given what it meant and the user's slots.

    ``now_ms`` stamps a handoff. An intent answered by an action comes back
    as ``RunAction``."""
    seed = event.event_id
    if isinstance(understood, NoText):
        return _outcome(seed, render(domain, ATTACHMENT, slots, seed))
    if isinstance(understood, NluDown):
        replies = render(domain, NLU_UNAVAILABLE, slots, seed) or render(
            domain, FALLBACK, slots, seed
        )
        unknown = Understanding(intent=nlu_result_pb2.Intent(), is_fallback=True)
        return _outcome(seed, replies, unknown)
    values = dict(slots)
    remembered: dict[str, str] = {}
    for entity in understood.entities:
        values[entity.entity] = entity.value
        if entity.entity in domain.slots:
            remembered[entity.entity] = entity.value
    intent = understood.intent.name
    if understood.is_fallback or not intent or intent == domain.fallback_intent:
        return _outcome(seed, render(domain, FALLBACK, values, seed), understood, remembered)
    handoff = None
    if intent == domain.handoff_intent:
        handoff = Handoff(reason=f"intent {intent}", time_ms=now_ms)
    action_name = domain.intent_actions.get(intent)
    if action_name:
        return RunAction(domain.actions[action_name], values, understood, remembered, handoff)
    name = intent if intent in domain.responses else FALLBACK
    return _outcome(seed, render(domain, name, values, seed), understood, remembered, handoff)


def after_action(
    domain: Domain, event: event_pb2.ChatEvent, run: RunAction, result: ActionOutcome
) -> Outcome:
    """The answer once the action ran: its response, filled with what it found."""
    values = {**run.values, **result.values}
    specs = domain.choose(result.response, values, event.event_id, run.action.responses)
    replies = [reply(spec, values) for spec in specs]
    return _outcome(event.event_id, replies, run.understanding, run.slots, run.handoff)


def _outcome(
    event_id: str,
    replies: list[event_pb2.Reply],
    understanding: Understanding | None = None,
    slots: Mapping[str, str] | None = None,
    handoff: Handoff | None = None,
) -> Outcome:
    for index, one in enumerate(replies):
        one.reply_id = reply_id(event_id, index)
    return Outcome(tuple(replies), understanding, dict(slots or {}), handoff)


def reply_id(event_id: str, index: int) -> str:
    """The id of the event's ``index``-th reply: stable, so a retry is recognised."""
    return f"{event_id}:r{index}"


def render(
    domain: Domain, name: str, values: Mapping[str, str], seed: str
) -> list[event_pb2.Reply]:
    return [reply(spec, values) for spec in domain.choose(name, values, seed)]


_MEDIA = {
    "image": event_pb2.ATTACHMENT_TYPE_IMAGE,
    "audio": event_pb2.ATTACHMENT_TYPE_AUDIO,
    "video": event_pb2.ATTACHMENT_TYPE_VIDEO,
    "file": event_pb2.ATTACHMENT_TYPE_FILE,
}


def _button(spec: ButtonSpec) -> dict[str, str]:
    if spec.url:
        return {"type": "web_url", "title": spec.title, "url": spec.url}
    return {"type": "postback", "title": spec.title, "payload": spec.payload}


def _card(spec: CardSpec, known: Mapping[str, str]) -> dict[str, object]:
    card: dict[str, object] = {"title": spec.title.format_map(known)}
    if spec.subtitle:
        card["subtitle"] = spec.subtitle.format_map(known)
    if spec.image:
        card["image_url"] = spec.image.format_map(known)
    if spec.url:
        card["default_action"] = {"type": "web_url", "url": spec.url.format_map(known)}
    if spec.buttons:
        card["buttons"] = [_button(b) for b in spec.buttons]
    return card


def _template(payload: Mapping[str, object]) -> event_pb2.Attachment:
    """A Messenger template, kept as its payload (the channel adds a button template's text)."""
    return event_pb2.Attachment(
        type=event_pb2.ATTACHMENT_TYPE_TEMPLATE,
        payload_json=json.dumps(payload, separators=(",", ":"), sort_keys=True),
    )


def reply(spec: ResponseSpec, values: Mapping[str, str]) -> event_pb2.Reply:
    known = dict(values)
    out = event_pb2.Reply(text=spec.text.format_map(known) if spec.text else "")
    if spec.buttons:
        buttons = [_button(b) for b in spec.buttons]
        out.attachments.append(_template({"template_type": "button", "buttons": buttons}))
    for kind, url in (("image", spec.image), *spec.media):
        if url:
            out.attachments.append(
                event_pb2.Attachment(type=_MEDIA[kind], url=url.format_map(known))
            )
    if spec.cards:
        elements = [_card(card, known) for card in spec.cards]
        out.attachments.append(_template({"template_type": "generic", "elements": elements}))
    for quick in spec.quick_replies:
        out.quick_replies.append(
            event_pb2.QuickReply(
                title=quick.title, payload=quick.payload, image_url=quick.image_url
            )
        )
    return out
