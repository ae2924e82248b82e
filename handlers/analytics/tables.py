"""The analytics store: daily rollups, the event ids already counted, and what is known of the
sagas and correlations the events belong to.

Rollups rather than raw events: the report answers from a few rows per tenant and day however many
completions there were, and the event stream itself keeps the raw history for replay.

A rollup row is one of two kinds of fact. ``model`` rows count model calls (``slm.completed`` and
``slm.failed``): their tokens, cost and latency. ``saga`` rows count saga runs (``sagas.finished``,
starts the saga runner refused, and the ends of turns run without a saga, ``gateway.turn_finished``
under their turn type): how many, how many failed, and how long they ran. Unknown
dimension values (a model call outside any saga, a failure that names no model) are stored as "".

Events arrive in any order — a consumer handles a fetched batch concurrently, and replicas run
side by side — so a model call may be counted before the start of the saga it belongs to. Until
then it waits in ``analytics_unattributed`` (reported under saga type ""), and the saga's start
moves it into the rollups under the saga's type.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Date, Float, Index, String, Table

from kernel.db import metadata

MODEL = "model"
SAGA = "saga"


def _sums() -> list[Column[Any]]:
    return [
        Column("requests", BigInteger, nullable=False),
        Column("errors", BigInteger, nullable=False),
        Column("prompt_tokens", BigInteger, nullable=False),
        Column("completion_tokens", BigInteger, nullable=False),
        Column("cost_usd", Float, nullable=False),
        Column("latency_ms_sum", Float, nullable=False),
        Column("latency_count", BigInteger, nullable=False),
    ]


usage_daily = Table(
    "analytics_usage_daily",
    metadata,
    Column("tenant", String(128), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("kind", String(8), primary_key=True),
    Column("model", String(255), primary_key=True),
    Column("saga_type", String(128), primary_key=True),
    Column("actor", String(255), primary_key=True),
    Column("key_id", String(255), primary_key=True),
    *_sums(),
)

# Model calls of a correlation whose saga start has not been seen (yet).
unattributed = Table(
    "analytics_unattributed",
    metadata,
    Column("tenant", String(128), primary_key=True),
    Column("correlation_id", String(255), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("model", String(255), primary_key=True),
    Column("actor", String(255), primary_key=True),
    Column("key_id", String(255), primary_key=True),
    *_sums(),
)

# Every event counted, so a redelivered or replayed event is not counted again.
processed = Table(
    "analytics_processed",
    metadata,
    Column("message_id", String(255), primary_key=True),
    Column("seen_at", Float, nullable=False),
    Index("ix_analytics_processed_seen_at", "seen_at"),
)

# The saga type of each correlation ("" until a saga start is seen). Its row is also the lock
# that orders a model call and a saga start of the same correlation.
correlations = Table(
    "analytics_correlations",
    metadata,
    Column("tenant", String(128), primary_key=True),
    Column("correlation_id", String(255), primary_key=True),
    Column("saga_type", String(128), nullable=False),
    Column("seen_at", Float, nullable=False),
    Index("ix_analytics_correlations_seen_at", "seen_at"),
)

# Each saga's latest run: its start and end as far as seen, for the run's duration.
sagas = Table(
    "analytics_sagas",
    metadata,
    Column("saga_id", String(255), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("saga_type", String(128), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("seen_at", Float, nullable=False),
    Index("ix_analytics_sagas_seen_at", "seen_at"),
)
