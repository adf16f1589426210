"""The NLU service's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PARSE_SECONDS = Histogram(
    "nlu_model_run_seconds",
    "Time of one model run (a batch of one or more texts).",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_SIZE = Histogram(
    "nlu_batch_texts",
    "Texts per model run: concurrent parses are run together.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
TEXTS = Counter("nlu_texts_parsed_total", "Texts parsed, by outcome.", ["outcome"])
MODEL = Gauge(
    "nlu_model_info",
    "The models loaded (1 per model), by tenant and version.",
    ["tenant", "version"],
)
