"""Delivery and read receipts: watermarks kept per conversation, shown as a status."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.common.v1 import event_pb2

from tests.chatlog.conftest import MESSENGER, OUT, T0, Chatlog, ts

DELIVERED, READ = pb.RECEIPT_KIND_DELIVERED, pb.RECEIPT_KIND_READ


def receipt(
    chatlog: Chatlog, conversation: str, kind: int, at: float, user: str = "u1"
) -> pb.Receipt:
    return pb.Receipt(
        user=event_pb2.UserRef(tenant_id=chatlog.tenant, channel=MESSENGER, user_id=user),
        conversation_id=conversation,
        kind=kind,  # type: ignore[arg-type]
        watermark_time=ts(at),
    )


def record(chatlog: Chatlog, *receipts: pb.Receipt) -> pb.AppendMessagesResponse:
    return chatlog.stub.AppendMessages(pb.AppendMessagesRequest(receipts=receipts), timeout=30)


def statuses(chatlog: Chatlog, conversation: str) -> dict[str, int]:
    reply = chatlog.stub.ListMessages(
        pb.ListMessagesRequest(tenant_id=chatlog.tenant, conversation_id=conversation), timeout=30
    )
    return {m.message_id: int(m.delivery_status) for m in reply.messages}


def scene(chatlog: Chatlog) -> None:
    m = chatlog.message
    sent = ts(12)
    chatlog.append(
        m("c1", "in1", at=0, text="hello"),
        m("c1", "out1", at=1, text="hi", direction=OUT),  # created 1, never sent: by create
        m("c1", "out2", at=2, text="how can I help?", direction=OUT, sent_time=sent),
        m("c1", "in2", at=20, text="thanks"),
        m("c1", "out3", at=21, text="welcome", direction=OUT, sent_time=ts(22)),
    )


def test_receipts_give_each_outbound_message_its_status(chatlog: Chatlog) -> None:
    scene(chatlog)
    assert statuses(chatlog, "c1") == {
        "in1": pb.DELIVERY_STATUS_UNSPECIFIED,
        "out1": pb.DELIVERY_STATUS_SENT,
        "out2": pb.DELIVERY_STATUS_SENT,
        "in2": pb.DELIVERY_STATUS_UNSPECIFIED,
        "out3": pb.DELIVERY_STATUS_SENT,
    }
    # Delivered up to 15 (out2 was sent at 12, though created at 2); read up to 5.
    assert not record(chatlog, receipt(chatlog, "c1", DELIVERED, 15)).results
    record(chatlog, receipt(chatlog, "c1", READ, 5))
    assert statuses(chatlog, "c1") == {
        "in1": pb.DELIVERY_STATUS_UNSPECIFIED,
        "out1": pb.DELIVERY_STATUS_READ,
        "out2": pb.DELIVERY_STATUS_DELIVERED,
        "in2": pb.DELIVERY_STATUS_UNSPECIFIED,
        "out3": pb.DELIVERY_STATUS_SENT,
    }
    # A read past everything covers what it reads, without a delivery receipt.
    record(chatlog, receipt(chatlog, "c1", READ, 30))
    assert set(statuses(chatlog, "c1").values()) == {
        pb.DELIVERY_STATUS_UNSPECIFIED,
        pb.DELIVERY_STATUS_READ,
    }


def test_late_and_repeated_receipts_never_lower_a_watermark(chatlog: Chatlog) -> None:
    scene(chatlog)
    record(chatlog, receipt(chatlog, "c1", DELIVERED, 30))
    record(
        chatlog,
        receipt(chatlog, "c1", DELIVERED, 3),
        receipt(chatlog, "c1", DELIVERED, 30),
        receipt(chatlog, "c1", READ, 1.5),
    )
    record(chatlog, receipt(chatlog, "c1", READ, 1))
    assert statuses(chatlog, "c1") == {
        "in1": pb.DELIVERY_STATUS_UNSPECIFIED,
        "out1": pb.DELIVERY_STATUS_READ,
        "out2": pb.DELIVERY_STATUS_DELIVERED,
        "in2": pb.DELIVERY_STATUS_UNSPECIFIED,
        "out3": pb.DELIVERY_STATUS_DELIVERED,
    }


def test_receipts_are_kept_per_conversation_and_erased_with_the_user(chatlog: Chatlog) -> None:
    scene(chatlog)
    m = chatlog.message
    chatlog.append(m("c2", "other", at=1, user="u2", text="hi", direction=OUT))
    record(chatlog, receipt(chatlog, "c1", READ, 100))
    assert statuses(chatlog, "c2") == {"other": pb.DELIVERY_STATUS_SENT}
    chatlog.stub.DeleteUserData(pb.DeleteUserDataRequest(tenant_id=chatlog.tenant, user_id="u1"))
    chatlog.append(m("c1", "again", at=50, text="back again", direction=OUT))
    assert statuses(chatlog, "c1") == {"again": pb.DELIVERY_STATUS_SENT}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r.ClearField("user"), "receipts[0].user is required"),
        (lambda r: setattr(r, "conversation_id", ""), "receipts[0].conversation_id"),
        (lambda r: setattr(r, "kind", 0), "receipts[0].kind"),
        (lambda r: r.ClearField("watermark_time"), "receipts[0].watermark_time is required"),
        (lambda r: setattr(r.watermark_time, "seconds", -5), "between 1970 and 2200"),
        (lambda r: setattr(r.user, "tenant_id", "nobody"), "receipts[0].user.tenant_id"),
    ],
)
def test_a_bad_receipt_is_refused_with_its_reason(
    sqlite_chatlog: Chatlog, change: object, reason: str
) -> None:
    bad = receipt(sqlite_chatlog, "c1", READ, 1)
    change(bad)  # type: ignore[operator]
    with pytest.raises(grpc.RpcError) as caught:
        record(sqlite_chatlog, bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (caught.value.details() or "")


def test_a_watermark_ahead_of_now_covers_only_what_was_sent_until_now(chatlog: Chatlog) -> None:
    m = chatlog.message
    ahead = (dt.datetime.now(dt.UTC) - T0).total_seconds() + 400 * 86_400
    chatlog.append(m("c1", "early", at=0, text="hi", direction=OUT))
    record(chatlog, receipt(chatlog, "c1", READ, ahead))
    chatlog.append(m("c1", "later", at=ahead - 86_400, text="hi", direction=OUT))
    assert statuses(chatlog, "c1") == {
        "early": pb.DELIVERY_STATUS_READ,
        "later": pb.DELIVERY_STATUS_SENT,
    }
    # Erasure removes it all the same.
    chatlog.stub.DeleteUserData(pb.DeleteUserDataRequest(tenant_id=chatlog.tenant, user_id="u1"))
    chatlog.append(m("c1", "again", at=1, text="hi", direction=OUT))
    assert statuses(chatlog, "c1") == {"again": pb.DELIVERY_STATUS_SENT}
