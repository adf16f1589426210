"""The gateway's Prometheus metrics, in a registry of their own.

One registry per app (not the process-wide default) keeps two apps in one
process, as in tests, from counting into each other.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "gateway_http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route and method.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ack_seconds = Histogram(
            "gateway_messenger_ack_seconds",
            "Messenger webhook POSTs: time to the acknowledgement, by status.",
            ["status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "gateway_events",
            "Events the dialogue service accepted or recognised, by channel and kind.",
            ["channel", "kind"],
            registry=r,
        )
        self.duplicates = Counter(
            "gateway_events_duplicate",
            "Events the dialogue service had seen before (retries), by channel.",
            ["channel"],
            registry=r,
        )
        self.signature_failures = Counter(
            "gateway_signature_failures",
            "Webhook POSTs refused for their signature, by reason.",
            ["reason"],
            registry=r,
        )
        self.rejections = Counter(
            "gateway_rejections",
            "Requests or events refused or dropped, by route and reason.",
            ["route", "reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited",
            "JSON channel requests refused by a rate limit, by scope (user, tenant).",
            ["scope"],
            registry=r,
        )
        self.dialogue_seconds = Histogram(
            "gateway_dialogue_call_seconds",
            "Calls to the dialogue service, by method and outcome.",
            ["method", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
