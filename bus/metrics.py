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


_counters: dict[tuple[str, str, str], Counter] = {}
_timers: dict[tuple[str, str], Histogram] = {}


def count(service: str, schema: str, outcome: str) -> None:
    """``MESSAGES.labels(...).inc()`` with the label lookup done once per combination."""
    key = (service, schema, outcome)
    child = _counters.get(key)
    if child is None:
        child = _counters[key] = MESSAGES.labels(service, schema, outcome)
    child.inc()


def observe(service: str, schema: str, seconds: float) -> None:
    key = (service, schema)
    child = _timers.get(key)
    if child is None:
        child = _timers[key] = HANDLE_SECONDS.labels(service, schema)
    child.observe(seconds)
