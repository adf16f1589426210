"""Messenger webhook payloads as ``chatbot.common.v1.ChatEvent``.

Pure functions over the parsed JSON: every entry, every ``messaging`` and
``standby`` item, every kind. Nothing here trusts the payload's shape: a
missing key, a value of the wrong type or an unknown kind becomes an empty
field, an `UnknownEvent`, or a skipped item with a reason, never an exception.

The Handover Protocol's items (``pass_thread_control``, ``take_thread_control``,
``request_thread_control``, ``app_roles``) become a ``Handover``; ``app_roles``
names no person, so it goes to the page's own conversation.

Event ids (the dialogue service's deduplication key within tenant and
channel): the ``mid`` for messages and postbacks. Every other event, and a
message or postback without a mid, gets ``<kind>:<timestamp>:<digest>``, the
digest a SHA-256 of the event's canonical JSON: stable across Messenger's
retries (they resend the same event) and distinct for distinct events.
Reactions take that form too although they carry a ``mid``: it is the mid of
the message reacted to, so using it would collide with that message's own
event (the echo of the bot's reply) and make an "unreact" a duplicate of its
"react".

Every mid (a message's, a postback's, the one a reply or a reaction points
at) longer than Messenger's own is replaced by ``sha256:<hex>`` of itself:
the dialogue service refuses ids past its bound, and a forged or broken mid
must not make Messenger's whole batch bounce. Hashing keeps equal mids equal.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chatbot.common.v1 import event_pb2 as ev
from google.protobuf.timestamp_pb2 import Timestamp

from mesh.tenants import Tenant
from mesh.timestamps import timestamp_ms

# Messenger's kinds, in the order they are looked for in an event.
KINDS = (
    "message", "postback", "reaction", "delivery", "read", "optin", "referral",
    "pass_thread_control", "take_thread_control", "request_thread_control", "app_roles",
)  # fmt: skip
_ENVELOPE = frozenset({"sender", "recipient", "timestamp"})
_MAX_MILLIS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, Timestamp's limit
_MAX_ID = 256  # longer ids are not Messenger's; they are hashed, not passed on
_INT64 = 2**63
_SURROGATE = re.compile("[\ud800-\udfff]")

_ATTACHMENT_TYPES = {
    "image": ev.ATTACHMENT_TYPE_IMAGE,
    "audio": ev.ATTACHMENT_TYPE_AUDIO,
    "video": ev.ATTACHMENT_TYPE_VIDEO,
    "file": ev.ATTACHMENT_TYPE_FILE,
    "fallback": ev.ATTACHMENT_TYPE_FALLBACK,
    "template": ev.ATTACHMENT_TYPE_TEMPLATE,
    "sticker": ev.ATTACHMENT_TYPE_STICKER,
    "location": ev.ATTACHMENT_TYPE_LOCATION,
}
_REACTION_ACTIONS = {
    "react": ev.REACTION_ACTION_REACT,
    "unreact": ev.REACTION_ACTION_UNREACT,
}
# The Handover Protocol's events (``messaging_handovers``).
_HANDOVER_ACTIONS = {
    "pass_thread_control": ev.HANDOVER_ACTION_PASS,
    "take_thread_control": ev.HANDOVER_ACTION_TAKE,
    "request_thread_control": ev.HANDOVER_ACTION_REQUEST,
    "app_roles": ev.HANDOVER_ACTION_APP_ROLES,
}


@dataclass(frozen=True)
class Skipped:
    """An item that could not become an event (no user to queue it for, say)."""

    entry: int
    index: int | None
    reason: str


@dataclass
class ParsedBatch:
    events: list[ev.ChatEvent] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    unknown_pages: list[str] = field(default_factory=list)


def kind_label(event: ev.ChatEvent) -> str:
    """The event's kind for metrics and logs; echoes apart from user messages."""
    kind = event.WhichOneof("kind") or "none"
    if kind == "message" and event.message.is_echo:
        return "echo"
    return kind


# ---- small, defensive readers ------------------------------------------------


def _text(value: Any) -> str:
    """A JSON string as a protobuf-safe string ('' for anything else).

    JSON may carry lone surrogates (``"\\ud800"``), which are not UTF-8 and
    which protobuf refuses: they become U+FFFD.
    """
    if not isinstance(value, str):
        return ""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", value)
    return value


def _ident(value: Any) -> str:
    """An id: Messenger sends strings; numbers are accepted, nothing else."""
    if isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return str(value)
    return _text(value).strip()


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _millis(value: Any) -> int | None:
    """Milliseconds since the epoch from a number or a numeric string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped or len(stripped) > 32:
            return None
        try:
            value = int(stripped)
        except ValueError:
            try:
                value = float(stripped)
            except ValueError:
                return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= _MAX_MILLIS:
        return None
    return value


def canonical_json(value: Any) -> str:
    """JSON text with sorted keys and ASCII escapes: stable, and always valid UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _verbatim_json(value: Any) -> str:
    return _text(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _bounded_id(value: str) -> str:
    if len(value) <= _MAX_ID:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()


def derived_event_id(kind: str, millis: int | None, raw: Any) -> str:
    digest = hashlib.sha256(canonical_json(raw).encode("ascii")).hexdigest()[:32]
    return f"{kind}:{millis if millis is not None else '-'}:{digest}"


# ---- kinds --------------------------------------------------------------------


def _attachment(raw: Mapping[str, Any], sticker_hint: Any) -> ev.Attachment:
    kind = _text(raw.get("type"))
    payload = raw.get("payload")
    fields = _dict(payload)
    attachment = ev.Attachment(type=_ATTACHMENT_TYPES.get(kind, ev.ATTACHMENT_TYPE_UNSPECIFIED))
    sticker = fields.get("sticker_id", sticker_hint if kind == "image" else None)
    if kind in ("image", "sticker") and sticker is not None:
        attachment.type = ev.ATTACHMENT_TYPE_STICKER
        sticker_id = _ident(sticker)
        if sticker_id.lstrip("-").isdigit() and -_INT64 <= int(sticker_id) < _INT64:
            attachment.sticker_id = int(sticker_id)
    attachment.url = _text(fields.get("url")) or _text(raw.get("url"))
    attachment.title = _text(raw.get("title")) or _text(fields.get("title"))
    coordinates = _dict(fields.get("coordinates"))
    lat, lon = _number(coordinates.get("lat")), _number(coordinates.get("long"))
    if lat is not None and lon is not None:
        attachment.coordinates.latitude = lat
        attachment.coordinates.longitude = lon
    if payload is not None:
        attachment.payload_json = _verbatim_json(payload)
    return attachment


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a double's range
        return None
    return number if math.isfinite(number) else None


def _message(body: Mapping[str, Any]) -> ev.Message:
    message = ev.Message(
        mid=_bounded_id(_ident(body.get("mid"))),
        text=_text(body.get("text")),
        quick_reply_payload=_text(_dict(body.get("quick_reply")).get("payload")),
        reply_to_mid=_bounded_id(_ident(_dict(body.get("reply_to")).get("mid"))),
        is_echo=body.get("is_echo") is True,
        metadata=_text(body.get("metadata")),
        app_id=_ident(body.get("app_id")),
    )
    attachments = body.get("attachments")
    if isinstance(attachments, list):
        for raw in attachments:
            if isinstance(raw, dict):
                message.attachments.append(_attachment(raw, body.get("sticker_id")))
    return message


def _referral(body: Mapping[str, Any]) -> ev.Referral:
    return ev.Referral(
        ref=_text(body.get("ref")),
        source=_text(body.get("source")),
        type=_text(body.get("type")),
        ad_id=_ident(body.get("ad_id")),
    )


def _postback(body: Mapping[str, Any]) -> ev.Postback:
    postback = ev.Postback(
        mid=_bounded_id(_ident(body.get("mid"))),
        title=_text(body.get("title")),
        payload=_text(body.get("payload")),
    )
    if isinstance(body.get("referral"), dict):
        postback.referral.CopyFrom(_referral(body["referral"]))
    return postback


def _handover(kind: str, body: Mapping[str, Any]) -> ev.Handover:
    handover = ev.Handover(
        action=_HANDOVER_ACTIONS[kind],
        new_owner_app_id=_bounded_id(_ident(body.get("new_owner_app_id"))),
        previous_owner_app_id=_bounded_id(_ident(body.get("previous_owner_app_id"))),
        requested_owner_app_id=_bounded_id(_ident(body.get("requested_owner_app_id"))),
        metadata=_text(body.get("metadata")),
    )
    if kind == "app_roles":
        # {"<app id>": ["primary_receiver", ...], ...}
        for app_id, roles in body.items():
            names = roles if isinstance(roles, list) else []
            handover.app_roles.append(
                ev.AppRoles(
                    app_id=_bounded_id(_ident(app_id)),
                    roles=[_text(r) for r in names if _text(r)],
                )
            )
    return handover


def _fill_kind(event: ev.ChatEvent, kind: str, body: Mapping[str, Any]) -> None:
    if kind == "message":
        event.message.CopyFrom(_message(body))
    elif kind == "postback":
        event.postback.CopyFrom(_postback(body))
    elif kind == "reaction":
        event.reaction.CopyFrom(
            ev.Reaction(
                mid=_bounded_id(_ident(body.get("mid"))),
                reaction=_text(body.get("reaction")),
                emoji=_text(body.get("emoji")),
                action=_REACTION_ACTIONS.get(
                    _text(body.get("action")), ev.REACTION_ACTION_UNSPECIFIED
                ),
            )
        )
    elif kind == "delivery":
        mids = body.get("mids")
        delivery = ev.Delivery(
            mids=[_ident(m) for m in mids if _ident(m)] if isinstance(mids, list) else []
        )
        watermark = _millis(body.get("watermark"))
        if watermark is not None:
            delivery.watermark_time.CopyFrom(timestamp_ms(watermark))
        event.delivery.CopyFrom(delivery)
    elif kind == "read":
        read = ev.Read()
        watermark = _millis(body.get("watermark"))
        if watermark is not None:
            read.watermark_time.CopyFrom(timestamp_ms(watermark))
        event.read.CopyFrom(read)
    elif kind == "optin":
        event.optin.CopyFrom(
            ev.Optin(
                ref=_text(body.get("ref")),
                user_ref=_ident(body.get("user_ref")),
                payload_json=_verbatim_json(body),
            )
        )
    elif kind == "referral":
        event.referral.CopyFrom(_referral(body))
    elif kind in _HANDOVER_ACTIONS:
        event.handover.CopyFrom(_handover(kind, body))


def kind_of(raw: Mapping[str, Any]) -> str:
    """The event's kind: a known key, else its first key beyond the envelope."""
    for kind in KINDS:
        if kind in raw:
            return kind
    for key in raw:
        if key not in _ENVELOPE:
            return str(key)
    return "empty"


def _user_id(raw: Mapping[str, Any], kind: str, body: Mapping[str, Any], echo: bool) -> str:
    # An echo is a message the page sent: its conversation is the recipient's.
    party = _dict(raw.get("recipient" if echo else "sender"))
    user_id = _ident(party.get("id"))
    if user_id:
        return user_id
    if kind == "app_roles":
        # Roles are the page's, not a person's: they go to the page's own
        # conversation (its id as the user), so they are recorded in order.
        return _ident(_dict(raw.get("recipient")).get("id"))
    # The checkbox plugin's opt-in names no PSID yet, only a user_ref.
    user_ref = _ident(party.get("user_ref")) or (
        _ident(body.get("user_ref")) if kind == "optin" else ""
    )
    return f"user_ref:{user_ref}" if user_ref else ""


def build_event(
    raw: Mapping[str, Any],
    *,
    tenant: Tenant,
    page_id: str,
    standby: bool,
    fallback_millis: int,
    receive_time: Timestamp,
) -> ev.ChatEvent | str:
    """One ``messaging``/``standby`` item as a ChatEvent, or the reason it cannot be one."""
    kind = kind_of(raw)
    value = raw.get(kind)
    body = _dict(value)
    # A known kind whose value is not an object is carried as unknown, whole.
    known = kind in KINDS and isinstance(value, dict)
    echo = known and kind == "message" and body.get("is_echo") is True
    user_id = _user_id(raw, kind, body, echo)
    if not user_id:
        return "no_user"
    if len(user_id) > _MAX_ID:
        return "user_id_too_long"
    millis = _millis(raw.get("timestamp"))
    event = ev.ChatEvent(
        user=ev.UserRef(tenant_id=tenant.id, channel=ev.CHANNEL_MESSENGER, user_id=user_id),
        recipient_id=_ident(_dict(raw.get("sender" if echo else "recipient")).get("id")) or page_id,
        standby=standby,
    )
    event.event_time.CopyFrom(timestamp_ms(millis if millis is not None else fallback_millis))
    event.receive_time.CopyFrom(receive_time)
    if known:
        _fill_kind(event, kind, body)
    else:
        event.unknown.CopyFrom(ev.UnknownEvent(kind=_text(kind), raw_json=_verbatim_json(raw)))
    if event.HasField("message") and event.message.mid:
        event.event_id = event.message.mid
    elif event.HasField("postback") and event.postback.mid:
        event.event_id = event.postback.mid
    else:
        event.event_id = derived_event_id(_text(kind)[:40] or "event", millis, raw)
    return event


def _items(entry: Mapping[str, Any]) -> Iterable[tuple[bool, int, Any]]:
    for key, standby in (("messaging", False), ("standby", True)):
        items = entry.get(key)
        if isinstance(items, list):
            for index, item in enumerate(items):
                yield standby, index, item


def order_by_user(events: list[ev.ChatEvent]) -> list[ev.ChatEvent]:
    """Each user's events in ``event_time`` order, in the slots that user's events held.

    Users keep their places relative to each other; a user's events with equal
    times keep the order of the payload (the sort is stable).
    """
    positions: dict[tuple[str, str], list[int]] = {}
    for index, event in enumerate(events):
        positions.setdefault((event.user.tenant_id, event.user.user_id), []).append(index)
    ordered = list(events)
    for slots in positions.values():
        mine = sorted(
            (events[i] for i in slots),
            key=lambda e: (e.event_time.seconds, e.event_time.nanos),
        )
        for slot, event in zip(slots, mine, strict=True):
            ordered[slot] = event
    return ordered


def parse_batch(
    doc: Mapping[str, Any],
    resolve: Callable[[str], Tenant | None],
    receive_time: Timestamp,
) -> ParsedBatch:
    """Every event of a ``{"object": "page", "entry": [...]}`` payload.

    ``resolve`` maps an entry's page id to its tenant; entries of other pages
    are left out (and listed). Events come out ordered per user by timestamp.
    """
    batch = ParsedBatch()
    entries = doc.get("entry")
    if not isinstance(entries, list):
        return batch
    receive_millis = receive_time.ToMilliseconds()
    for entry_index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            batch.skipped.append(Skipped(entry_index, None, "entry_not_an_object"))
            continue
        page_id = _ident(entry.get("id"))
        tenant = resolve(page_id)
        if tenant is None:
            batch.unknown_pages.append(page_id)
            continue
        entry_millis = _millis(entry.get("time"))
        fallback = entry_millis if entry_millis is not None else receive_millis
        for standby, index, item in _items(entry):
            if not isinstance(item, dict):
                batch.skipped.append(Skipped(entry_index, index, "event_not_an_object"))
                continue
            try:
                built = build_event(
                    item,
                    tenant=tenant,
                    page_id=page_id,
                    standby=standby,
                    fallback_millis=fallback,
                    receive_time=receive_time,
                )
            except RecursionError:
                built = "nested_too_deeply"
            if isinstance(built, str):
                batch.skipped.append(Skipped(entry_index, index, built))
            else:
                batch.events.append(built)
    batch.events = order_by_user(batch.events)
    return batch
