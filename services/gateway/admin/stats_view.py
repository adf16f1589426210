"""The stats page's charts, from a GetStats answer."""

from __future__ import annotations

from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from markupsafe import Markup

from services.gateway.admin.charts import Series, horizontal_bars, lines, stacked_bars

MAX_INTENTS = 15


def _day(bucket: chatlog_pb.StatsBucket) -> str:
    return bucket.start_time.ToDatetime().strftime("%m-%d")


def charts(stats: chatlog_pb.GetStatsResponse) -> dict[str, Markup]:
    days = list(stats.days)
    labels = [_day(d) for d in days]
    intents = sorted(stats.total.intent_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = intents[:MAX_INTENTS]
    rest = sum(count for _, count in intents[MAX_INTENTS:])
    if rest:
        shown.append(("(other intents)", rest))
    return {
        "messages": stacked_bars(
            "chart-messages",
            "Messages per day",
            labels,
            [
                Series("in", [float(d.inbound_message_count) for d in days], "s1"),
                Series("out", [float(d.outbound_message_count) for d in days], "s2"),
            ],
        ),
        "latency": lines(
            "chart-latency",
            "Processing time per day, in milliseconds",
            labels,
            [
                Series(
                    "average",
                    [float(d.mean_processing_duration.ToMilliseconds()) for d in days],
                    "s1",
                ),
                Series(
                    "p95", [float(d.p95_processing_duration.ToMilliseconds()) for d in days], "s3"
                ),
            ],
            unit=" ms",
        ),
        "fallback": lines(
            "chart-fallback",
            "Fallback rate per day, in percent",
            labels,
            [Series("fallback rate", [d.fallback_rate * 100 for d in days], "s3")],
            unit="%",
        ),
        "intents": horizontal_bars(
            "chart-intents",
            "Inbound messages per intent",
            [(name, float(count)) for name, count in shown],
        ),
    }
