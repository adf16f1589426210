"""The bot's policy on the starter domain, with no Redis, NLU or action API."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pytest
from chatbot.common.v1 import event_pb2, nlu_result_pb2

from mesh.config import ConfigError
from services.dialogue import policy
from services.dialogue.actions import ActionOutcome
from services.dialogue.clients import Understanding
from services.dialogue.domain import DEFAULT_DOMAIN, Domain, ResponseSpec, load_domain
from services.dialogue.policy import Handoff, NluDown, NoText, Outcome, Parse, RunAction

DOMAIN = load_domain(DEFAULT_DOMAIN)
NOW_MS = 1_700_000_000_123

GREET = (
    "Hi! I can check an order, tell you the weather or our opening hours. What can I do for you?"
)
FALLBACK = 'Sorry, I didn\'t get that. Could you rephrase? You can also type "help".'
NLU_DOWN = (
    "Sorry, I'm having trouble understanding messages right now. Please try again in a moment."
)
ATTACHMENT = "Thanks! I can only read text for now: what can I do for you?"
HANDOFF = "I'm handing you over to a person. They'll answer here shortly."
CANCEL_ANY = (
    "To cancel an order, reply to your confirmation email or ask for a human "
    "and we'll do it for you."
)


def _message(
    text: str = "",
    *,
    payload: str = "",
    attachments: tuple[event_pb2.AttachmentType.ValueType, ...] = (),
    event_id: str = "e1",
    echo: bool = False,
    standby: bool = False,
) -> event_pb2.ChatEvent:
    return event_pb2.ChatEvent(
        event_id=event_id,
        standby=standby,
        message=event_pb2.Message(
            text=text,
            quick_reply_payload=payload,
            is_echo=echo,
            attachments=[event_pb2.Attachment(type=t, url="https://x/1") for t in attachments],
        ),
    )


def _postback(title: str, payload: str, event_id: str = "e1") -> event_pb2.ChatEvent:
    return event_pb2.ChatEvent(
        event_id=event_id, postback=event_pb2.Postback(title=title, payload=payload)
    )


def _understanding(
    intent: str, entities: Mapping[str, str] | None = None, *, fallback: bool = False
) -> Understanding:
    return Understanding(
        intent=nlu_result_pb2.Intent(name=intent, confidence=0.9),
        entities=[
            nlu_result_pb2.Entity(entity=k, value=v, extractor="DIETClassifier")
            for k, v in (entities or {}).items()
        ],
        is_fallback=fallback,
        model_version="m1",
    )


def _texts(outcome: Outcome) -> list[str]:
    return [reply.text for reply in outcome.replies]


def _final(decision: policy.Decision) -> Outcome:
    assert isinstance(decision, Outcome), decision
    return decision


# ---- which events get an answer -------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (_message("hi"), True),
        (_message(attachments=(event_pb2.ATTACHMENT_TYPE_IMAGE,)), True),
        (_postback("Start", "GET_STARTED"), True),
        (_message("hi", echo=True), False),
        (_message("hi", standby=True), False),
        (event_pb2.ChatEvent(event_id="e1", reaction=event_pb2.Reaction(emoji="👍")), False),
        (event_pb2.ChatEvent(event_id="e1", delivery=event_pb2.Delivery(mids=["m1"])), False),
        (event_pb2.ChatEvent(event_id="e1", read=event_pb2.Read()), False),
        (event_pb2.ChatEvent(event_id="e1", optin=event_pb2.Optin(ref="r")), False),
        (event_pb2.ChatEvent(event_id="e1"), False),
        (event_pb2.ChatEvent(event_id="e1", referral=event_pb2.Referral(ref="nowhere")), False),
    ],
)
def test_answerable(event: event_pb2.ChatEvent, expected: bool) -> None:
    assert policy.answerable(event, DOMAIN) is expected


# ---- referrals (m.me links, ads) ----------------------------------------


def test_a_referral_the_domain_routes_is_answered_as_its_payload() -> None:
    domain = dataclasses.replace(
        DOMAIN, referrals={"summer-sale": "/order_status", "*": "GET_STARTED"}
    )
    link = event_pb2.ChatEvent(
        event_id="e1", referral=event_pb2.Referral(ref="summer-sale", source="SHORTLINK")
    )
    assert policy.answerable(link, domain)
    reading = policy.read(domain, link)
    assert isinstance(reading, Understanding) and reading.intent.name == "order_status"
    ad = event_pb2.ChatEvent(event_id="e2", referral=event_pb2.Referral(ref="", source="ADS"))
    reading = policy.read(domain, ad)
    assert isinstance(reading, Understanding) and reading.intent.name == "greet"
    assert not policy.answerable(link, DOMAIN)  # no routes: recorded, not answered
    assert not policy.answerable(
        event_pb2.ChatEvent(event_id="e3", standby=True, referral=link.referral), domain
    )


def test_get_started_through_a_link_follows_the_link() -> None:
    domain = dataclasses.replace(DOMAIN, referrals={"summer-sale": "/order_status"})
    start = _postback("Get Started", "GET_STARTED")
    start.postback.referral.CopyFrom(event_pb2.Referral(ref="summer-sale", source="SHORTLINK"))
    reading = policy.read(domain, start)
    assert isinstance(reading, Understanding) and reading.intent.name == "order_status"
    start.postback.referral.ref = "unknown"
    reading = policy.read(domain, start)
    assert isinstance(reading, Understanding) and reading.intent.name == "greet"


def test_a_referral_route_must_name_an_intent_or_a_payload(tmp_path: Path) -> None:
    path = tmp_path / "domain.yml"
    path.write_text(
        "responses: {fallback: [{text: '?'}]}\npayloads: {GO: greet}\n"
        "referrals: {a: /greet, b: GO, c: nothing}\n"
    )
    with pytest.raises(ConfigError, match=r"referrals\.c names 'nothing'"):
        load_domain(path)


# ---- payloads name their intent ------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("/order_status", ("order_status", {})),
        ('/order_status{"order_id": "123"}', ("order_status", {"order_id": "123"})),
        ('/weather {"city": "Paris", "days": 2}', ("weather", {"city": "Paris", "days": "2"})),
        ("/weather{not json", ("weather", {})),
        ("GET_STARTED", ("greet", {})),
        ("SOMETHING_ELSE", None),
        ("/", None),
    ],
)
def test_payload_intent(payload: str, expected: tuple[str, dict[str, str]] | None) -> None:
    assert policy.payload_intent(payload, DOMAIN) == expected


def test_a_payload_is_understood_with_certainty_and_its_entities() -> None:
    reading = policy.read(DOMAIN, _message("Order", payload='/order_status{"order_id": "77"}'))
    assert isinstance(reading, Understanding)
    assert (reading.intent.name, reading.intent.confidence) == ("order_status", 1.0)
    assert [(i.name, i.confidence) for i in reading.ranking] == [("order_status", 1.0)]
    assert [(e.entity, e.value, e.extractor) for e in reading.entities] == [
        ("order_id", "77", "payload")
    ]
    assert not reading.is_fallback


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (_postback("Get started", "GET_STARTED"), "greet"),
        (_message("  where is my order  "), Parse("where is my order")),
        (_message("hello", payload="UNMAPPED"), Parse("hello")),
        (_message("   ", payload="UNMAPPED"), Parse("UNMAPPED")),
        (_postback("Tap", "UNMAPPED"), Parse("Tap")),
        (_message(attachments=(event_pb2.ATTACHMENT_TYPE_IMAGE,)), NoText()),
        (_message("  \n "), NoText()),
    ],
)
def test_read(event: event_pb2.ChatEvent, expected: object) -> None:
    reading = policy.read(DOMAIN, event)
    if isinstance(expected, str):
        assert isinstance(reading, Understanding)
        assert reading.intent.name == expected
    else:
        assert reading == expected


# ---- decisions ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    understood: policy.Understood
    texts: list[str]
    slots: Mapping[str, str] = dataclasses.field(default_factory=dict)
    remembered: Mapping[str, str] = dataclasses.field(default_factory=dict)
    handoff: Handoff | None = None


CASES = [
    Case("photo", NoText(), [ATTACHMENT]),
    Case("nlu down", NluDown(), [NLU_DOWN]),
    Case("low confidence", _understanding("greet", fallback=True), [FALLBACK]),
    Case("no intent", _understanding(""), [FALLBACK]),
    Case("fallback intent", _understanding("nlu_fallback"), [FALLBACK]),
    Case("intent without a response", _understanding("dance"), [FALLBACK]),
    Case("greet", _understanding("greet"), [GREET]),
    Case(
        "an entity fills the response and a declared slot",
        _understanding("cancel_order", {"order_id": "42", "person": "Ann"}),
        [
            "To cancel order 42, reply to your confirmation email or ask for a human "
            "and we'll do it for you."
        ],
        remembered={"order_id": "42"},
    ),
    Case(
        "a remembered slot fills the response",
        _understanding("cancel_order"),
        [
            "To cancel order 9, reply to your confirmation email or ask for a human "
            "and we'll do it for you."
        ],
        slots={"order_id": "9"},
    ),
    Case("no value: the plainer variant", _understanding("cancel_order"), [CANCEL_ANY]),
    Case(
        "a fallback still remembers slots",
        _understanding("", {"city": "Oslo"}),
        [FALLBACK],
        remembered={"city": "Oslo"},
    ),
    Case(
        "handoff",
        _understanding("human_handoff"),
        [HANDOFF],
        handoff=Handoff(reason="intent human_handoff", time_ms=NOW_MS),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case) -> None:
    outcome = _final(
        policy.decide(
            DOMAIN, _message("x", event_id="ev9"), case.slots, case.understood, now_ms=NOW_MS
        )
    )
    assert _texts(outcome) == case.texts
    assert dict(outcome.slots) == dict(case.remembered)
    assert outcome.handoff == case.handoff
    assert [r.reply_id for r in outcome.replies] == [f"ev9:r{i}" for i in range(len(case.texts))]


def test_what_was_understood_is_kept_for_the_record() -> None:
    understood = _understanding("greet")
    outcome = _final(policy.decide(DOMAIN, _message("hi"), {}, understood, now_ms=NOW_MS))
    assert outcome.understanding is understood
    photo = _final(policy.decide(DOMAIN, _message(), {}, NoText(), now_ms=NOW_MS))
    assert photo.understanding is None
    down = _final(policy.decide(DOMAIN, _message("hi"), {}, NluDown(), now_ms=NOW_MS))
    assert down.understanding is not None
    assert (down.understanding.intent.name, down.understanding.is_fallback) == ("", True)


def test_nlu_down_without_its_response_says_the_fallback() -> None:
    responses = {k: v for k, v in DOMAIN.responses.items() if k != "nlu_unavailable"}
    domain = dataclasses.replace(DOMAIN, responses=responses)
    outcome = _final(policy.decide(domain, _message("hi"), {}, NluDown(), now_ms=NOW_MS))
    assert _texts(outcome) == [FALLBACK]


def test_quick_replies_come_with_the_response() -> None:
    outcome = _final(policy.decide(DOMAIN, _message("hi"), {}, _understanding("greet"), now_ms=0))
    (reply,) = outcome.replies
    assert [(q.title, q.payload) for q in reply.quick_replies] == [
        ("Order status", "/order_status"),
        ("Weather", "/weather"),
        ("Opening hours", "/opening_hours"),
    ]
    assert list(reply.attachments) == []


def test_handoff_fields_as_stored() -> None:
    assert Handoff(reason="intent human_handoff", time_ms=5).fields() == {
        "active": "1",
        "reason": "intent human_handoff",
        "agent_id": "",
        "time": "5",
    }


# ---- actions --------------------------------------------------------------


def test_an_action_intent_asks_for_the_action_with_what_is_known() -> None:
    understood = _understanding("order_status", {"order_id": "55"})
    decision = policy.decide(
        DOMAIN, _message("x"), {"city": "Rome", "order_id": "1"}, understood, now_ms=NOW_MS
    )
    assert isinstance(decision, RunAction)
    assert decision.action.name == "order_status"
    assert dict(decision.values) == {"city": "Rome", "order_id": "55"}
    assert dict(decision.slots) == {"order_id": "55"}
    assert decision.understanding is understood
    assert decision.handoff is None


_ORDER_55 = {"order_id": "55"}
_PARIS = {"city": "Paris"}
ACTION_CASES = [
    ("order_status", {}, "ask", {"missing": "order_id"}, ["Sure, what's your order number?"]),
    (
        "order_status", _ORDER_55, "success", {"status": "shipped", "eta": "today"},
        ["Order 55 is shipped. Expected delivery: today."],
    ),
    ("order_status", _ORDER_55, "success", {"status": "lost"}, ["Order 55 is lost."]),
    # What the action found wins over what the user said.
    (
        "order_status", _ORDER_55, "success", {"order_id": "00055", "status": "lost"},
        ["Order 00055 is lost."],
    ),
    (
        "order_status", {"order_id": "8"}, "not_found", {},
        ["I couldn't find order 8. Could you check the number?"],
    ),
    (
        "order_status", {"order_id": "8"}, "error", {},
        ["I can't reach the order system right now. Please try again in a few minutes."],
    ),
    (
        "weather", _PARIS, "success", {"temperature_c": "21", "summary": "sunny"},
        ["In Paris it's 21°C and sunny."],
    ),
    # A success that lacks the fields of every variant says nothing.
    ("weather", _PARIS, "success", {}, []),
    ("weather", _PARIS, "no_such_response", {}, []),
]  # fmt: skip


@pytest.mark.parametrize(("intent", "entities", "response", "found", "texts"), ACTION_CASES)
def test_after_action(
    intent: str, entities: dict[str, str], response: str, found: dict[str, str], texts: list[str]
) -> None:
    result = ActionOutcome(response, found)
    event = _message("x", event_id="ev5")
    run = policy.decide(DOMAIN, event, {}, _understanding(intent, entities), now_ms=NOW_MS)
    assert isinstance(run, RunAction)
    outcome = policy.after_action(DOMAIN, event, run, result)
    assert _texts(outcome) == texts
    assert [r.reply_id for r in outcome.replies] == [f"ev5:r{i}" for i in range(len(texts))]
    assert dict(outcome.slots) == entities
    assert outcome.understanding is run.understanding


def test_a_handoff_answered_by_an_action_keeps_the_handoff() -> None:
    domain = dataclasses.replace(DOMAIN, handoff_intent="order_status")
    event = _message("x")
    run = policy.decide(domain, event, {}, _understanding("order_status"), now_ms=NOW_MS)
    assert isinstance(run, RunAction)
    outcome = policy.after_action(domain, event, run, ActionOutcome("ask", {}))
    assert outcome.handoff == Handoff(reason="intent order_status", time_ms=NOW_MS)


# ---- rendering ------------------------------------------------------------


def test_a_response_with_an_image() -> None:
    spec = ResponseSpec(text="", image="https://img.example/{city}.png")
    reply = policy.reply(spec, {"city": "Oslo"})
    assert reply.text == ""
    assert [(a.type, a.url) for a in reply.attachments] == [
        (event_pb2.ATTACHMENT_TYPE_IMAGE, "https://img.example/Oslo.png")
    ]


def test_variants_are_chosen_by_the_event_id() -> None:
    variants = tuple(ResponseSpec(text=f"v{i}") for i in range(8))
    domain = Domain(
        responses={"greet": variants, "fallback": (ResponseSpec(text="?"),)},
        intent_actions={},
        actions={},
        payloads={},
        slots=frozenset(),
    )

    def say(event_id: str) -> list[str]:
        event = _message("hi", event_id=event_id)
        return _texts(_final(policy.decide(domain, event, {}, _understanding("greet"), now_ms=0)))

    # A retry of one event says the same; different events do not all say the same.
    assert say("a") == say("a")
    assert len({say(f"e{i}")[0] for i in range(40)}) > 1
