"""Prometheus metrics every process exposes at ``/metrics``.

Names are stable: dashboards (deploy/grafana/soma.json) and alerts are written against them, and
the README's Metrics table lists them all. What the server knows better than a process — how far
each durable consumer is behind, what it has redelivered — is read from the server when the
metrics are scraped, never on the message path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("soma.bus")

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
CONSUMER_PENDING = Gauge(
    "soma_consumer_pending_messages",
    "Messages of the stream a durable consumer has not delivered yet: its lag",
    ["stream", "durable"],
)
CONSUMER_ACK_PENDING = Gauge(
    "soma_consumer_ack_pending_messages",
    "Messages a durable consumer delivered that are not acknowledged yet",
    ["stream", "durable"],
)
CONSUMER_REDELIVERED = Gauge(
    "soma_consumer_redelivered_messages",
    "Messages a durable consumer delivered more than once that are not acknowledged yet",
    ["stream", "durable"],
)
SAGA_INSTANCES = Gauge(
    "soma_saga_instances",
    "Saga instances not finished yet, by saga type and state",
    ["type", "state"],
)
MODEL_TOKENS = Counter(
    "soma_model_tokens_total",
    "Model tokens by model, provider and direction (input, output)",
    ["model", "provider", "direction"],
)
MODEL_COST = Counter(
    "soma_model_cost_usd_total",
    "Cost of model calls in US dollars, by model and provider",
    ["model", "provider"],
)

SCRAPE_TIMEOUT = 2.0

_counters: dict[tuple[str, str, str], Counter] = {}
_timers: dict[tuple[str, str], Histogram] = {}
_scrape_hooks: list[Callable[[], Awaitable[None]]] = []


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


def model_usage(
    model: str, provider: str, input_tokens: int, output_tokens: int, cost_usd: float
) -> None:
    MODEL_TOKENS.labels(model, provider, "input").inc(input_tokens)
    MODEL_TOKENS.labels(model, provider, "output").inc(output_tokens)
    MODEL_COST.labels(model, provider).inc(cost_usd)


def on_scrape(hook: Callable[[], Awaitable[None]]) -> None:
    """Run ``hook`` before each scrape, to bring gauges read from elsewhere up to date."""
    _scrape_hooks.append(hook)


async def refresh() -> None:
    """Every scrape hook, each bounded: a slow server leaves its gauges as they were."""
    for hook in list(_scrape_hooks):
        try:
            await asyncio.wait_for(hook(), SCRAPE_TIMEOUT)
        except Exception as exc:
            log.debug("metrics: a scrape hook failed: %s", exc)


async def consumer_state(js: JetStreamContext, consumers: Iterable[tuple[str, str]]) -> None:
    """Lag, in-flight and redelivered messages of each ``(stream, durable)``, from the server."""
    for stream, durable in consumers:
        info = await js.consumer_info(stream, durable)
        CONSUMER_PENDING.labels(stream, durable).set(info.num_pending or 0)
        CONSUMER_ACK_PENDING.labels(stream, durable).set(info.num_ack_pending or 0)
        CONSUMER_REDELIVERED.labels(stream, durable).set(info.num_redelivered or 0)


def saga_instances(counts: Iterable[tuple[str, str, int]]) -> None:
    """Replace the saga gauge with ``(type, state, instances)``: a state left empty disappears."""
    SAGA_INSTANCES.clear()
    for saga_type, state, instances in counts:
        SAGA_INSTANCES.labels(saga_type, state).set(instances)
