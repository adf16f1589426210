"""The dialogue service's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_SUBMITTED = Counter(
    "dialogue_events_submitted_total", "Events submitted, by outcome.", ["outcome"]
)
MESSAGES_PROCESSED = Counter(
    "dialogue_items_processed_total", "Queue items processed to the end, by kind.", ["kind"]
)
PROCESSING_SECONDS = Histogram(
    "dialogue_item_processing_seconds",
    "Time to process one queue item under the lease.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ATTEMPTS_FAILED = Counter("dialogue_attempts_failed_total", "Processing attempts that failed.")
DEAD_LETTERS = Counter("dialogue_dead_letters_total", "Items moved to the dead letters.")
FENCED = Counter(
    "dialogue_fencing_rejections_total", "Steps refused because the worker's lease was lost."
)
LEASES = Gauge("dialogue_active_leases", "Leases this replica holds now.")
READY_USERS = Gauge("dialogue_ready_users", "Users waiting in the ready list (sampled).")
RESCHEDULED = Counter(
    "dialogue_users_rescheduled_total", "Users the reaper found stranded and scheduled again."
)
ACTIVE_USERS = Gauge(
    "dialogue_active_users", "Users with queued or in-flight items, all replicas (sampled)."
)
STAGE_SECONDS = Histogram(
    "dialogue_stage_seconds",
    "Time spent in each stage of processing an item.",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SEND_RESULTS = Counter(
    "dialogue_send_results_total",
    "Send API calls by outcome: ok, or the error code Meta returned.",
    ["outcome"],
)
QUEUED_ITEMS = Gauge(
    "dialogue_queued_items",
    "Items waiting in users' queues, all replicas (sampled over up to 200 active users).",
)
OLDEST_QUEUED_SECONDS = Gauge(
    "dialogue_oldest_queued_item_age_seconds",
    "Age of the oldest item at the head of a user's queue (sampled like dialogue_queued_items).",
)
SEND_ATTEMPTS = Counter(
    "dialogue_send_attempts_total",
    "Send API requests by outcome: ok; refused (an error answer); unreachable (failed before"
    " the request was written: safe to retry); lost (failed after it may have arrived).",
    ["outcome"],
)
SEND_RESENT_AFTER_LOST = Counter(
    "dialogue_send_resent_after_lost_total",
    "Messages sent again after an attempt whose answer was lost: each may reach the user twice.",
)
SEND_HELD = Counter(
    "dialogue_sends_held_total",
    "Sends that waited before starting, by reason: breaker (the Send API fails or hangs) or"
    " lease (too little of the lease left for an attempt).",
    ["reason"],
)
SENDS_WAITING = Gauge("dialogue_sends_waiting", "Sends waiting for the Send API breaker now.")
SEND_BREAKER_OPEN = Gauge(
    "dialogue_send_breaker_open",
    "1 while the Send API breaker holds new sends (the API fails or hangs), else 0.",
)
SEND_BREAKER_CHANGES = Counter(
    "dialogue_send_breaker_transitions_total",
    "Changes of the Send API breaker, by new state: open, hanging, closed.",
    ["state"],
)
SEND_PROBES = Counter(
    "dialogue_send_probes_total", "Recovery probes of the Send API, by outcome.", ["outcome"]
)
OUTBOX_ENTRIES = Gauge(
    "dialogue_chatlog_outbox_entries",
    "Chatlog records waiting in the outbox, all shards (sampled; alert well below the cap).",
)
OUTBOX_DROPPED = Gauge(
    "dialogue_chatlog_outbox_dropped",
    "Chatlog records dropped since Redis was set up because the outbox was full (sampled).",
)
CHATLOG_WRITTEN = Counter(
    "dialogue_chatlog_messages_written_total",
    "Chatlog records the outbox writer delivered (inbound and outbound messages).",
)
CHATLOG_BATCH = Histogram(
    "dialogue_chatlog_batch_messages",
    "Records per chatlog call of the outbox writer.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
