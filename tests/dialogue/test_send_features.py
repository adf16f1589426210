"""Sending as Messenger allows: buttons, carousels, media, long text, sender actions;
and receipts that become status without taking a turn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb

from harness.standins import GraphApi, KeywordNlu, RecordingChatlog
from mesh.config import ConfigError
from services.dialogue.domain import load_domain
from services.dialogue.processor import SEEN_AFTER_S
from tests.dialogue.conftest import TENANT, Replicas, message_event, settled, submit, wait_for

LONG = " ".join(f"word{i}" for i in range(500))  # about 3,900 characters

DOMAIN = f"""
mark_seen: true
referrals: {{summer-sale: /opening_hours}}
responses:
  greet:
    - text: "Hello! What would you like?"
      buttons:
        - {{title: "Track an order", payload: /order_status}}
        - {{title: "Our shop", url: "https://shop.example/"}}
  thanks:
    - text: "Our bestsellers"
      cards:
        - title: "Shoes"
          subtitle: "For running"
          image: "https://img.example/shoes.png"
          url: "https://shop.example/shoes"
          buttons: [{{title: "Buy", payload: BUY_SHOES}}]
        - {{title: "Socks", image: "https://img.example/socks.png"}}
  opening_hours:
    - file: "https://docs.example/hours.pdf"
      video: "https://docs.example/tour.mp4"
  help:
    - text: "{LONG}"
      buttons: [{{title: "More", payload: MORE}}]
  fallback:
    - text: "Sorry?"
"""


@pytest.fixture
def domain_file(tmp_path: Path) -> Path:
    path = tmp_path / "domain.yml"
    path.write_text(DOMAIN)
    return path


def _messages_to(graph: GraphApi, user: str) -> list[dict[str, Any]]:
    with graph.lock:
        return [s.body["message"] for s in graph.sent if s.recipient == user]


def test_replies_go_as_messenger_templates_media_and_word_split_text(
    replicas: Replicas, graph_api: GraphApi, recording_chatlog: RecordingChatlog, domain_file: Path
) -> None:
    replicas.start(1, DOMAIN_FILE=str(domain_file))
    stub = replicas.stub()
    user = "send-features"
    texts = ["hello", "thank you", "opening hours?", "help"]
    submit(stub, *(message_event(user, f"m_sf_{i}", t) for i, t in enumerate(texts)))
    wait_for(lambda: settled(replicas, [user]) and len(_messages_to(graph_api, user)) == 9)
    greet, intro, carousel, file, video, *help_parts = _messages_to(graph_api, user)

    assert greet["attachment"] == {
        "type": "template",
        "payload": {
            "template_type": "button",
            "text": "Hello! What would you like?",
            "buttons": [
                {"type": "postback", "title": "Track an order", "payload": "/order_status"},
                {"type": "web_url", "title": "Our shop", "url": "https://shop.example/"},
            ],
        },
    }
    assert intro == {"text": "Our bestsellers", "metadata": json.dumps({"in_reply_to": "m_sf_1"})}
    elements = carousel["attachment"]["payload"]["elements"]
    assert carousel["attachment"]["payload"]["template_type"] == "generic"
    assert elements[0] == {
        "title": "Shoes",
        "subtitle": "For running",
        "image_url": "https://img.example/shoes.png",
        "default_action": {"type": "web_url", "url": "https://shop.example/shoes"},
        "buttons": [{"type": "postback", "title": "Buy", "payload": "BUY_SHOES"}],
    }
    assert elements[1] == {"title": "Socks", "image_url": "https://img.example/socks.png"}
    assert file["attachment"] == {
        "type": "file",
        "payload": {"url": "https://docs.example/hours.pdf", "is_reusable": True},
    }
    assert video["attachment"]["type"] == "video"

    # Long text: parts of at most 2,000 characters cut between words, the last
    # one (at most 640) carrying the buttons; nothing lost or doubled.
    *texts_sent, last = help_parts
    parts = [m["text"] for m in texts_sent] + [last["attachment"]["payload"]["text"]]
    assert all(len(p) <= 2000 for p in parts) and len(parts[-1]) <= 640
    assert " ".join(parts) == LONG
    assert all(not p.startswith(" ") and not p.endswith(" ") for p in parts)
    assert last["attachment"]["payload"]["buttons"] == [
        {"type": "postback", "title": "More", "payload": "MORE"}
    ]

    # The chatlog has each reply typed by what it carried, with its send time.
    def outbound() -> dict[str, chatlog_pb.ChatMessage]:
        with recording_chatlog.lock:
            return {
                m.in_reply_to: m
                for m in recording_chatlog.messages.values()
                if m.user.user_id == user and m.direction == chatlog_pb.DIRECTION_OUTBOUND
            }

    wait_for(lambda: len(outbound()) == 4)
    kinds = {mid: (m.type, m.HasField("sent_time")) for mid, m in outbound().items()}
    assert kinds == {
        "m_sf_0": (chatlog_pb.MESSAGE_TYPE_TEMPLATE, True),
        "m_sf_1": (chatlog_pb.MESSAGE_TYPE_TEMPLATE, True),
        "m_sf_2": (chatlog_pb.MESSAGE_TYPE_FILE, True),
        "m_sf_3": (chatlog_pb.MESSAGE_TYPE_TEMPLATE, True),
    }
    assert outbound()["m_sf_3"].text == LONG

    # Answered at once: no "seen" of its own (the answer shows it).
    with graph_api.lock:
        seen = [a for a in graph_api.sender_actions if a["recipient"]["id"] == user]
    assert seen == []


def test_a_slow_answer_is_marked_seen_meanwhile(
    replicas: Replicas, graph_api: GraphApi, keyword_nlu: KeywordNlu
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    keyword_nlu.delay_s = 3 * SEEN_AFTER_S
    submit(stub, message_event("slow-1", "m_slow_1", "hello"))
    wait_for(lambda: settled(replicas, ["slow-1"]) and _messages_to(graph_api, "slow-1"))
    with graph_api.lock:
        seen = [a for a in graph_api.sender_actions if a["recipient"]["id"] == "slow-1"]
        reply = next(s for s in graph_api.sent if s.recipient == "slow-1")
    assert [a["sender_action"] for a in seen] == ["mark_seen"]
    assert seen[0]["recipient"] == {"id": "slow-1"}
    assert reply.in_reply_to == "m_slow_1"


def test_receipts_take_no_turn_and_reach_the_chatlog(
    replicas: Replicas, graph_api: GraphApi, recording_chatlog: RecordingChatlog
) -> None:
    replicas.start(1)
    stub = replicas.stub()
    user = "receipts-user"
    submit(stub, message_event(user, "m_rc_0", "hello"))
    wait_for(lambda: settled(replicas, [user]) and _messages_to(graph_api, user))
    ref = event_pb2.UserRef(tenant_id=TENANT, channel=event_pb2.CHANNEL_MESSENGER, user_id=user)
    read = event_pb2.ChatEvent(event_id="read:1", user=ref, read=event_pb2.Read())
    read.read.watermark_time.FromMilliseconds(1_800_000_000_000)
    delivered = event_pb2.ChatEvent(event_id="delivery:1", user=ref, delivery=event_pb2.Delivery())
    delivered.delivery.watermark_time.FromMilliseconds(1_800_000_000_001)
    assert submit(stub, read, delivered, read) == [pb.SUBMIT_STATUS_ACCEPTED] * 3

    def receipts() -> list[tuple[int, int]]:
        with recording_chatlog.lock:
            return [
                (r.kind, r.watermark_time.ToMilliseconds())
                for r in recording_chatlog.receipts
                if r.user.user_id == user and r.conversation_id == f"1:{user}"
            ]

    wait_for(lambda: len(receipts()) == 3)
    assert sorted(receipts()) == [
        (chatlog_pb.RECEIPT_KIND_DELIVERED, 1_800_000_000_001),
        (chatlog_pb.RECEIPT_KIND_READ, 1_800_000_000_000),
        (chatlog_pb.RECEIPT_KIND_READ, 1_800_000_000_000),
    ]
    state = stub.GetConversationState(pb.GetConversationStateRequest(user=ref), timeout=10).state
    assert (state.queue_length, state.last_processed_event_id) == (0, "m_rc_0")
    # Nothing to wait for: Converse refuses a receipt rather than time out.
    with pytest.raises(grpc.RpcError) as refused:
        stub.Converse(pb.ConverseRequest(event=read), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "receipt" in (refused.value.details() or "")


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ("[{buttons: [{title: A, payload: X}]}]", "needs 'text', 'cards'"),
        ("[{text: hi, buttons: [{title: A}]}]", "either a 'payload' or a 'url'"),
        ("[{text: hi, buttons: [{title: A, payload: X, url: 'https://a'}]}]", "either a"),
        ("[{text: hi, buttons: [{title: A, url: 'ftp://a'}]}]", "not a web address"),
        ("[{text: hi, buttons: [{title: " + "L" * 21 + ", payload: X}]}]", "over 20 characters"),
        ("[{text: hi, buttons: [" + "{title: A, payload: X}," * 4 + "]}]", "at most 3 buttons"),
        ("[{text: hi, cards: []}]", "1 to 10 cards"),
        ("[{cards: [{subtitle: no title}]}]", "a card needs a 'title'"),
    ],
)
def test_a_domain_that_messenger_would_refuse_is_refused_at_start(
    tmp_path: Path, response: str, reason: str
) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(f"responses:\n  greet: {response}\n  fallback: [{{text: '?'}}]\n")
    with pytest.raises(ConfigError, match="greet") as caught:
        load_domain(path)
    assert reason in str(caught.value)


def test_a_link_s_ref_is_answered_as_the_domain_routes_it(
    replicas: Replicas, graph_api: GraphApi, domain_file: Path
) -> None:
    replicas.start(1, DOMAIN_FILE=str(domain_file))
    stub = replicas.stub()
    ref = event_pb2.UserRef(tenant_id=TENANT, channel=event_pb2.CHANNEL_MESSENGER, user_id="ref-1")
    routed = event_pb2.ChatEvent(
        event_id="referral:1", user=ref, referral=event_pb2.Referral(ref="summer-sale")
    )
    unrouted = event_pb2.ChatEvent(
        event_id="referral:2", user=ref, referral=event_pb2.Referral(ref="other")
    )
    submit(stub, routed, unrouted, message_event("ref-1", "m_ref_1", "hello"))
    wait_for(lambda: settled(replicas, ["ref-1"]) and len(_messages_to(graph_api, "ref-1")) == 3)
    sent = _messages_to(graph_api, "ref-1")
    # The routed link's two attachments, nothing for the other ref, then the greeting.
    assert [m["attachment"]["type"] for m in sent[:2]] == ["file", "video"]
    assert sent[2]["attachment"]["payload"]["template_type"] == "button"
