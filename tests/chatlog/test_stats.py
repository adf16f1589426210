"""GetStats: per UTC day and in total, with latency percentiles from a histogram."""

from __future__ import annotations

import grpc
import pytest
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from tests.chatlog.conftest import API, OUT, Chatlog, rpc_error, ts

DAY = 86_400
HOUR = 3600


def scene(chatlog: Chatlog) -> None:
    m = chatlog.message
    chatlog.append(
        m("c1", "m1", at=0, text="hi", intent="greet", processing_ms=100),
        m("c1", "m2", at=60, text="order?", intent="order_status", processing_ms=200),
        m("c1", "r1", at=61, text="here", direction=OUT),
        m(
            "c2",
            "m3",
            at=HOUR,
            user="u2",
            channel=API,
            text="zzz",
            intent="nlu_fallback",
            fallback=True,
            confidence=0.2,
            processing_ms=300,
        ),
        m("c3", "m4", at=2 * DAY, text="hey", intent="greet", processing_ms=1000),
        m("c3", "r4", at=2 * DAY + 1, text="hello", direction=OUT),
        m("c3", "m5", at=2 * DAY + 2, text="[sticker]"),  # not parsed, no latency
    )


def seconds(duration: object) -> float:
    return duration.ToNanoseconds() / 1e9  # type: ignore[attr-defined, no-any-return]


def test_days_and_total(chatlog: Chatlog) -> None:
    scene(chatlog)
    # 07:00 on day 0 to 05:00 on day 3: rounded out to four whole days.
    reply = chatlog.stub.GetStats(
        pb.GetStatsRequest(
            tenant_id=chatlog.tenant, start_time=ts(-2 * HOUR), end_time=ts(3 * DAY - 4 * HOUR)
        )
    )
    assert len(reply.days) == 4
    day0, day1, day2, day3 = reply.days
    assert day0.start_time == Timestamp(seconds=ts(0).seconds - 9 * HOUR)
    assert day3.end_time == Timestamp(seconds=day0.start_time.seconds + 4 * DAY)
    assert (day0.inbound_message_count, day0.outbound_message_count) == (3, 1)
    assert (day0.conversation_count, day0.user_count) == (2, 2)
    assert day0.fallback_count == 1
    assert day0.fallback_rate == pytest.approx(1 / 3)
    assert seconds(day0.mean_processing_duration) == pytest.approx(0.2)
    assert seconds(day0.p50_processing_duration) == pytest.approx(0.2, rel=0.05)
    assert seconds(day0.p95_processing_duration) == pytest.approx(0.3, rel=0.05)
    assert dict(day0.intent_counts) == {"greet": 1, "order_status": 1, "nlu_fallback": 1}
    for empty in (day1, day3):
        assert empty.inbound_message_count == empty.outbound_message_count == 0
        assert empty.fallback_rate == 0 and not empty.intent_counts
        assert seconds(empty.p95_processing_duration) == 0
    assert (day2.inbound_message_count, day2.outbound_message_count) == (2, 1)
    assert seconds(day2.p50_processing_duration) == pytest.approx(1.0, rel=0.05)
    total = reply.total
    assert (total.start_time, total.end_time) == (day0.start_time, day3.end_time)
    assert (total.inbound_message_count, total.outbound_message_count) == (5, 2)
    # Distinct over the range, not sums: u1 wrote on two days.
    assert (total.conversation_count, total.user_count) == (3, 2)
    assert total.fallback_rate == pytest.approx(1 / 4)
    assert seconds(total.mean_processing_duration) == pytest.approx(0.4)
    assert dict(total.intent_counts) == {"greet": 2, "order_status": 1, "nlu_fallback": 1}


def test_channel_filter(chatlog: Chatlog) -> None:
    scene(chatlog)
    reply = chatlog.stub.GetStats(
        pb.GetStatsRequest(
            tenant_id=chatlog.tenant, start_time=ts(0), end_time=ts(DAY), channel=API
        )
    )
    assert (reply.total.inbound_message_count, reply.total.user_count) == (1, 1)
    assert reply.total.fallback_rate == 1.0


def test_percentiles_are_close(chatlog: Chatlog) -> None:
    chatlog.append(
        *(
            chatlog.message("c1", f"m{n}", at=n, text="x", intent="greet", processing_ms=n)
            for n in range(1, 201)
        )
    )
    reply = chatlog.stub.GetStats(
        pb.GetStatsRequest(tenant_id=chatlog.tenant, start_time=ts(0), end_time=ts(DAY))
    )
    day = reply.days[0]
    assert seconds(day.mean_processing_duration) == pytest.approx(0.1005)
    assert seconds(day.p50_processing_duration) == pytest.approx(0.100, rel=0.05)
    assert seconds(day.p95_processing_duration) == pytest.approx(0.190, rel=0.05)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"start_time": None}, "start_time"),
        ({"end_time": None}, "end_time"),
        ({"end_time": ts(0)}, "end_time"),
        ({"end_time": ts(367 * DAY)}, "maximum is 366"),
        ({"tenant_id": ""}, "tenant_id"),
        ({"channel": -1}, "channel"),
    ],
)
def test_bad_requests(chatlog: Chatlog, fields: dict[str, object], named: str) -> None:
    request: dict[str, object] = {
        "tenant_id": chatlog.tenant,
        "start_time": ts(0),
        "end_time": ts(DAY),
    }
    request.update(fields)
    request = {k: v for k, v in request.items() if v is not None}
    error = rpc_error(chatlog.stub.GetStats, pb.GetStatsRequest(**request))  # type: ignore[arg-type]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in error.details()


def test_a_year_is_allowed(chatlog: Chatlog) -> None:
    reply = chatlog.stub.GetStats(
        pb.GetStatsRequest(tenant_id=chatlog.tenant, start_time=ts(0), end_time=ts(365 * DAY))
    )
    assert len(reply.days) == 366  # 09:00 to 09:00 spans 366 calendar days
