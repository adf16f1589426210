"""The chatlog's own Prometheus metrics (the gRPC ones come from mesh.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

APPENDED = Counter(
    "chatlog_messages_appended_total",
    "Messages AppendMessages was given, by whether they were new or already stored.",
    ["status"],
)
STORE_UP = Gauge(
    "chatlog_store_up",
    "1 while the store (Cassandra or SQLite) answers the health probe, else 0.",
    ["backend"],
)
