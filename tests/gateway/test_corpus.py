"""Every payload of the corpus, signed as sent, through the real gateway: what
reached the dialogue service, in which order, with which fields."""

from __future__ import annotations

import pytest
from chatbot.common.v1 import event_pb2 as ev

from tests.gateway.harness import PAYLOADS, DialogueServer, Gateway, payload

# file -> the events the dialogue service must receive: (id or id prefix, kind, user, tenant)
EXPECTED: dict[str, list[tuple[str, str, str, str]]] = {
    "messenger_md_example.json": [
        ("m_AAA", "message", "1001", "acme"),
        ("m_BBB", "message", "1001", "acme"),
        ("m_CCC", "postback", "1001", "acme"),
    ],
    "escaped_unicode.json": [("m_unicode_1", "message", "1002", "acme")],
    "standby.json": [
        ("m_standby_1", "message", "1003", "acme"),
        ("read:", "read", "1003", "acme"),
        ("m_standby_2", "message", "1004", "acme"),
    ],
    "sticker.json": [("m_sticker_1", "message", "1005", "acme")],
    "link_fallback.json": [
        ("m_link_1", "message", "1006", "acme"),
        ("m_link_2", "message", "1006", "acme"),
    ],
    "string_timestamps.json": [
        ("m_ts_1", "message", "1007", "acme"),
        ("m_ts_2", "message", "1007", "acme"),
        ("m_ts_other", "message", "1008", "acme"),
        ("m_ts_3", "message", "1007", "acme"),
        ("read:", "read", "1007", "acme"),
        ("m_ts_none", "message", "1007", "acme"),
    ],
    "unknown_kinds.json": [
        ("message_edit:", "unknown", "1009", "acme"),
        ("game_play:", "unknown", "1009", "acme"),
        ("message:", "unknown", "1009", "acme"),
        ("empty:", "unknown", "1009", "acme"),
    ],
    "echo.json": [
        ("m_echo_1", "message", "1010", "acme"),
        ("m_echo_2", "message", "1010", "acme"),
    ],
    "reactions.json": [
        ("reaction:", "reaction", "1011", "acme"),
        ("reaction:", "reaction", "1011", "acme"),
    ],
    "postback_referral.json": [("m_postback_1", "postback", "1012", "acme")],
    "multiple_entries.json": [
        ("m_multi_1", "message", "1013", "acme"),
        ("m_multi_2", "message", "1013", "initech"),
        ("m_multi_3", "message", "1014", "acme"),
    ],
    "delivery_read.json": [
        ("delivery:", "delivery", "1015", "acme"),
        ("read:", "read", "1015", "acme"),
        ("read:", "read", "1015", "acme"),
    ],
    "optin_referral.json": [
        ("optin:", "optin", "user_ref:ur_5f2c", "acme"),
        ("optin:", "optin", "1016", "acme"),
        ("referral:", "referral", "1016", "acme"),
    ],
    "location.json": [("m_location_1", "message", "1017", "acme")],
    "media_without_text.json": [
        ("m_audio_1", "message", "1018", "acme"),
        ("m_video_1", "message", "1018", "acme"),
        ("m_file_1", "message", "1018", "acme"),
    ],
    "no_messaging.json": [],
    "handovers.json": [
        ("take_thread_control:", "handover", "1019", "acme"),
        ("pass_thread_control:", "handover", "1019", "acme"),
        ("pass_thread_control:", "handover", "1020", "acme"),
        ("request_thread_control:", "handover", "1020", "acme"),
        ("app_roles:", "handover", "111", "acme"),
        ("pass_thread_control:", "handover", "1021", "acme"),
    ],
}


def test_the_corpus_covers_every_file() -> None:
    files = {p.name for p in PAYLOADS.glob("*.json")}
    assert files == set(EXPECTED) | {"batch_1000.json"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_payload_reaches_the_dialogue_service(
    gateway: Gateway, dialogue: DialogueServer, name: str
) -> None:
    response = gateway.post_webhook(payload(name))
    assert response.status_code == 200, response.text
    received = dialogue.events()
    got = [(e.event_id, e.WhichOneof("kind"), e.user.user_id, e.user.tenant_id) for e in received]
    expected = EXPECTED[name]
    assert len(got) == len(expected), got
    for (event_id, *rest), (prefix, *want) in zip(got, expected, strict=True):
        assert event_id == prefix or (prefix.endswith(":") and event_id.startswith(prefix))
        assert rest == want
    for event in received:
        assert event.user.channel == ev.CHANNEL_MESSENGER
        assert event.receive_time.seconds > 0
    _assert_ordered_per_user(received)
    assert response.json()["events"] == len(expected)


def _assert_ordered_per_user(events: list[ev.ChatEvent]) -> None:
    last: dict[tuple[str, str], int] = {}
    for event in events:
        key = (event.user.tenant_id, event.user.user_id)
        stamp = event.event_time.ToMilliseconds()
        assert stamp >= last.get(key, 0), f"{event.event_id} out of order"
        last[key] = stamp


def test_fields_survive_the_trip(gateway: Gateway, dialogue: DialogueServer) -> None:
    for name in ("sticker.json", "link_fallback.json", "echo.json", "standby.json"):
        assert gateway.post_webhook(payload(name)).status_code == 200
    by_id = {e.event_id: e for e in dialogue.events()}
    sticker = by_id["m_sticker_1"].message.attachments[0]
    assert (sticker.type, sticker.sticker_id) == (ev.ATTACHMENT_TYPE_STICKER, 369239263222822)
    fallback = by_id["m_link_1"].message.attachments[0]
    assert (fallback.type, fallback.payload_json) == (ev.ATTACHMENT_TYPE_FALLBACK, "")
    echo = by_id["m_echo_1"]
    assert echo.message.is_echo and echo.recipient_id == "111"
    assert by_id["m_standby_1"].standby and not by_id["m_standby_2"].standby


def test_the_same_read_twice_in_one_batch_is_one_event(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    response = gateway.post_webhook(payload("delivery_read.json"))
    assert response.json() == {
        "events": 3,
        "accepted": 2,
        "duplicates": 1,
        "refused": 0,
        "skipped": 0,
    }


def test_unknown_and_unusable_items_are_reported(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    response = gateway.post_webhook(payload("unknown_kinds.json"))
    assert response.json()["skipped"] == 1  # the policy_enforcement item names no user
    logs = gateway.logs()
    assert "unknown Messenger event kinds" in logs and "message_edit" in logs


def test_a_thousand_events_arrive_whole_in_order_in_chunks(
    gateway: Gateway, dialogue: DialogueServer
) -> None:
    response = gateway.post_webhook(payload("batch_1000.json"))
    assert response.status_code == 200
    assert response.json()["accepted"] == 1000
    calls = dialogue.calls("SubmitEvents")
    assert [len(c.events) for c in calls] == [500, 500]  # GATEWAY_SUBMIT_CHUNK_EVENTS
    received = dialogue.events()
    assert len({e.event_id for e in received}) == 1000
    _assert_ordered_per_user(received)
    by_user: dict[str, list[str]] = {}
    for event in received:
        by_user.setdefault(event.user.user_id, []).append(event.event_id)
    for user, ids in by_user.items():
        assert ids == [f"m_b_{user}_{i:03d}" for i in range(100)]
    again = gateway.post_webhook(payload("batch_1000.json"))
    assert again.json()["duplicates"] == 1000
