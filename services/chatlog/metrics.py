"""The chatlog's own Prometheus metrics (the gRPC ones come from mesh.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

APPENDED = Counter(
    "chatlog_messages_appended_total",
    "Messages AppendMessages was given, by whether they were new or already stored.",
    ["status"],
)
RECEIPTS = Counter(
    "chatlog_receipts_recorded_total",
    "Delivery and read receipts AppendMessages recorded on their conversations.",
)
STORE_UP = Gauge(
    "chatlog_store_up",
    "1 while the store (Cassandra or SQLite) answers the health probe, else 0.",
    ["backend"],
)
STORE_SECONDS = Histogram(
    "chatlog_store_operation_seconds",
    "Time of one store operation, by backend and operation (append, list_conversations...).",
    ["backend", "operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
STORE_ERRORS = Counter(
    "chatlog_store_errors_total",
    "Store operations that failed (Cassandra time-outs, unreachable nodes...), by backend.",
    ["backend", "operation"],
)
