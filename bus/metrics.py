"""Prometheus metrics every process exposes at ``/metrics``."""

from prometheus_client import Counter, Histogram

MESSAGES = Counter(
    "soma_messages_total",
    "Messages handled by outcome (ok, rejected, retried, dead_lettered)",
    ["service", "schema", "outcome"],
)
HANDLE_SECONDS = Histogram(
    "soma_handle_seconds",
    "Time spent in a handler",
    ["service", "schema"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
