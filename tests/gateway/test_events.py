"""Messenger payloads as typed events: the pure parsing, payload by payload."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chatbot.common.v1 import event_pb2 as ev
from google.protobuf.timestamp_pb2 import Timestamp

from mesh.tenants import Tenant
from services.gateway.messenger.events import ParsedBatch, kind_label, order_by_user, parse_batch
from tests.gateway.harness import payload

ACME = Tenant(id="acme", page_id="111", app_secret="s")
INITECH = Tenant(id="initech", page_id="333", app_secret="s")
NOW = Timestamp(seconds=1_800_000_000)


def resolve(page_id: str) -> Tenant | None:
    return {"111": ACME, "333": INITECH}.get(page_id)


def parse(doc: Any) -> ParsedBatch:
    return parse_batch(doc, resolve, NOW)


def parse_file(name: str) -> ParsedBatch:
    return parse(json.loads(payload(name)))


def millis(stamp: Timestamp) -> int:
    return stamp.ToMilliseconds()


def test_the_documented_example() -> None:
    batch = parse_file("messenger_md_example.json")
    assert [e.event_id for e in batch.events] == ["m_AAA", "m_BBB", "m_CCC"]
    text, image, postback = batch.events
    assert text.message.text == "hello, world!"
    assert text.message.quick_reply_payload == "DEV_PAYLOAD"
    assert text.user == ev.UserRef(tenant_id="acme", channel=ev.CHANNEL_MESSENGER, user_id="1001")
    assert text.recipient_id == "111"
    assert millis(text.event_time) == 1458692752478
    assert text.receive_time == NOW
    assert image.message.text == ""
    assert image.message.attachments[0].type == ev.ATTACHMENT_TYPE_IMAGE
    assert image.message.attachments[0].url == "https://example.invalid/a.jpg"
    assert postback.postback.payload == "GET_STARTED"
    assert postback.postback.title == "Get Started"


def test_escaped_unicode_is_decoded() -> None:
    (event,) = parse_file("escaped_unicode.json").events
    assert event.message.text == ("café crème 😀 <b> 100% @home https://example.invalid/menu 你好")
    assert event.message.reply_to_mid == "m_earlier"


def test_standby_items_are_marked() -> None:
    batch = parse_file("standby.json")
    assert (batch.events[0].event_id, batch.events[0].standby) == ("m_standby_1", True)
    assert [e.standby for e in batch.events] == [True, True, False]
    assert batch.events[1].HasField("read")


def test_sticker() -> None:
    (event,) = parse_file("sticker.json").events
    (sticker,) = event.message.attachments
    assert sticker.type == ev.ATTACHMENT_TYPE_STICKER
    assert sticker.sticker_id == 369239263222822
    assert sticker.url.endswith("_n.png")
    assert event.message.text == ""


def test_link_fallbacks_with_and_without_payload() -> None:
    first, second = parse_file("link_fallback.json").events
    (link,) = first.message.attachments
    assert link.type == ev.ATTACHMENT_TYPE_FALLBACK
    assert link.payload_json == ""
    assert link.title == "A shared story"
    assert link.url.startswith("https://l.example.invalid/")
    (other,) = second.message.attachments
    assert (other.url, other.title) == ("https://example.invalid/other", "Other story")
    assert json.loads(other.payload_json)["title"] == "Other story"


def test_string_timestamps_and_order_per_sender() -> None:
    batch = parse_file("string_timestamps.json")
    mine = [e for e in batch.events if e.user.user_id == "1007"]
    assert [e.event_id.split(":")[0] for e in mine] == [
        "m_ts_1",
        "m_ts_2",
        "m_ts_3",
        "read",
        "m_ts_none",
    ]
    assert millis(mine[0].event_time) == 1700000004100
    assert millis(mine[3].read.watermark_time) == 1700000004300
    # No usable timestamp: the entry's time stands in.
    assert millis(mine[4].event_time) == 1700000004999
    # Users keep their places: 1008's event stays in its slot (the third).
    assert batch.events[2].user.user_id == "1008"


def test_unknown_kinds_are_carried_or_skipped_with_a_reason() -> None:
    batch = parse_file("unknown_kinds.json")
    kinds = [(e.unknown.kind, json.loads(e.unknown.raw_json)) for e in batch.events]
    assert [k for k, _ in kinds] == ["message_edit", "game_play", "message", "empty"]
    assert kinds[0][1]["message_edit"]["text"] == "fixed a typo"
    assert all(
        e.event_id.startswith(f"{k}:") for e, (k, _) in zip(batch.events, kinds, strict=True)
    )
    assert [s.reason for s in batch.skipped] == ["no_user"]


def test_echo_belongs_to_the_recipient() -> None:
    text, template = parse_file("echo.json").events
    assert text.user.user_id == "1010"
    assert text.recipient_id == "111"
    assert text.message.is_echo and kind_label(text) == "echo"
    assert json.loads(text.message.metadata) == {"in_reply_to": "m_question"}
    assert text.message.app_id == "1517776481860111"
    (attachment,) = template.message.attachments
    assert attachment.type == ev.ATTACHMENT_TYPE_TEMPLATE
    assert json.loads(attachment.payload_json)["template_type"] == "button"


def test_reactions_get_their_own_ids() -> None:
    react, unreact = parse_file("reactions.json").events
    assert react.reaction.action == ev.REACTION_ACTION_REACT
    assert unreact.reaction.action == ev.REACTION_ACTION_UNREACT
    assert react.reaction.mid == unreact.reaction.mid == "m_echo_1"
    assert react.reaction.emoji == "\u2764\ufe0f"
    # Not the mid: that is the reacted-to message's own event id.
    assert len({react.event_id, unreact.event_id, "m_echo_1"}) == 3


def test_postback_with_referral() -> None:
    (event,) = parse_file("postback_referral.json").events
    assert event.event_id == "m_postback_1"
    assert event.postback.referral == ev.Referral(
        ref="summer-sale", source="ADS", type="OPEN_THREAD", ad_id="6045246247433"
    )


def test_multiple_entries_and_pages() -> None:
    batch = parse_file("multiple_entries.json")
    assert [(e.event_id, e.user.tenant_id) for e in batch.events] == [
        ("m_multi_1", "acme"),
        ("m_multi_2", "initech"),
        ("m_multi_3", "acme"),
    ]


def test_deliveries_and_reads_get_stable_ids() -> None:
    first = parse_file("delivery_read.json").events
    again = parse_file("delivery_read.json").events
    assert [e.event_id for e in first] == [e.event_id for e in again]
    delivery, read, same_read = first
    assert list(delivery.delivery.mids) == ["m_echo_1", "m_echo_2"]
    assert millis(delivery.delivery.watermark_time) == 1700000009900
    assert read.event_id == same_read.event_id != delivery.event_id


def test_optins_and_referrals() -> None:
    checkbox, notification, referral = parse_file("optin_referral.json").events
    assert checkbox.user.user_id == "user_ref:ur_5f2c"
    assert checkbox.optin.ref == "checkbox-signup"
    assert json.loads(notification.optin.payload_json)["notification_messages_token"] == "tok_1"
    assert referral.referral.source == "SHORTLINK"


def test_location() -> None:
    (event,) = parse_file("location.json").events
    (location,) = event.message.attachments
    assert location.type == ev.ATTACHMENT_TYPE_LOCATION
    assert (location.coordinates.latitude, location.coordinates.longitude) == (48.8584, 2.2945)
    assert location.title == "Pinned location"


def test_media_without_text() -> None:
    events = parse_file("media_without_text.json").events
    types = [[a.type for a in e.message.attachments] for e in events]
    assert types == [
        [ev.ATTACHMENT_TYPE_AUDIO],
        [ev.ATTACHMENT_TYPE_VIDEO],
        [ev.ATTACHMENT_TYPE_FILE, ev.ATTACHMENT_TYPE_IMAGE],
    ]
    assert all(e.message.text == "" for e in events)


def test_entries_without_messaging() -> None:
    batch = parse_file("no_messaging.json")
    assert batch.events == [] and batch.skipped == []


def test_the_thousand_event_batch_is_whole_and_ordered() -> None:
    batch = parse_file("batch_1000.json")
    assert len(batch.events) == 1000
    assert len({e.event_id for e in batch.events}) == 1000
    by_user: dict[str, list[str]] = {}
    for event in batch.events:
        by_user.setdefault(event.user.user_id, []).append(event.event_id)
    assert len(by_user) == 10
    for user, ids in by_user.items():
        assert ids == [f"m_b_{user}_{i:03d}" for i in range(100)]


def test_pages_of_no_tenant_are_listed_not_queued() -> None:
    doc = {"object": "page", "entry": [{"id": "999", "messaging": [{"sender": {"id": "1"}}]}]}
    batch = parse(doc)
    assert batch.events == [] and batch.unknown_pages == ["999"]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"sender": {"id": 42}, "timestamp": 1, "message": {"mid": 7, "text": 5}}, ("7", "")),
        (
            {"sender": {"id": "x"}, "timestamp": True, "message": {"mid": "m", "text": "t"}},
            ("m", "t"),
        ),
        (
            {"sender": {"id": "x"}, "timestamp": 1e300, "message": {"mid": "m", "text": "\ud800"}},
            ("m", "\ufffd"),
        ),
        ({"sender": {"id": "x"}, "timestamp": "-5", "message": {"mid": "m" * 300}}, None),
    ],
)
def test_odd_values_never_break_parsing(
    item: dict[str, Any], expected: tuple[str, str] | None
) -> None:
    (event,) = parse(
        {"object": "page", "entry": [{"id": "111", "time": 5, "messaging": [item]}]}
    ).events
    event.SerializeToString()  # every string is valid UTF-8
    assert millis(event.event_time) in (1, 5)
    if expected is None:
        assert event.event_id.startswith("sha256:") and len(event.event_id) < 80
    else:
        assert (event.event_id, event.message.text) == expected


def test_order_by_user_is_stable_for_equal_times() -> None:
    def event(user: str, mid: str, ms: int) -> ev.ChatEvent:
        e = ev.ChatEvent(event_id=mid, user=ev.UserRef(tenant_id="t", user_id=user))
        e.event_time.FromMilliseconds(ms)
        return e

    events = [event("a", "a2", 2), event("b", "b1", 1), event("a", "a1", 1), event("a", "a1b", 1)]
    assert [e.event_id for e in order_by_user(events)] == ["a1", "b1", "a1b", "a2"]


def test_handover_protocol_events() -> None:
    batch = parse_file("handovers.json")
    assert not batch.skipped
    take, back, idle, request, roles, between = batch.events
    assert [e.WhichOneof("kind") for e in batch.events] == ["handover"] * 6
    assert take.handover == ev.Handover(
        action=ev.HANDOVER_ACTION_TAKE,
        previous_owner_app_id="1111",
        new_owner_app_id="263902037430900",
        metadata="an agent took over",
    )
    assert take.event_id.startswith("take_thread_control:1700000006000:")
    assert back.handover.action == ev.HANDOVER_ACTION_PASS
    assert (back.handover.previous_owner_app_id, back.handover.new_owner_app_id) == (
        "263902037430900",
        "1111",
    )
    # Out of payload order, the sender's events come in timestamp order; a null
    # previous owner (the thread was idle) is empty.
    assert idle.handover.action == ev.HANDOVER_ACTION_PASS and idle.user.user_id == "1020"
    assert idle.handover.previous_owner_app_id == ""
    assert request.handover.action == ev.HANDOVER_ACTION_REQUEST
    assert request.handover.requested_owner_app_id == "2222"  # a number in the payload
    assert request.handover.metadata == "a CRM asks"
    # app_roles names no person: the page's own conversation.
    assert roles.user.user_id == "111" and roles.handover.action == ev.HANDOVER_ACTION_APP_ROLES
    assert {(r.app_id, tuple(r.roles)) for r in roles.handover.app_roles} == {
        ("1111", ("primary_receiver",)),
        ("263902037430900", ("secondary_receiver",)),
        ("3333", ()),
    }
    assert between.standby and between.handover.new_owner_app_id == "263902037430900"
    assert kind_label(between) == "handover"


def test_handover_ids_are_stable_and_distinct() -> None:
    first, second = parse_file("handovers.json"), parse_file("handovers.json")
    ids = [e.event_id for e in first.events]
    assert ids == [e.event_id for e in second.events]
    assert len(set(ids)) == len(ids)
