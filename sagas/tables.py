"""The saga store's tables: instances, inbox, outbox, history."""

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from kernel.db import metadata

instances = Table(
    "saga_instances",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("type", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("run", Integer, nullable=False, default=1),
    Column("tenant", String(128), nullable=False),
    Column("correlation_id", String(128), nullable=False),
    Column("actor", String(128), nullable=False, default="system"),
    Column("parent_id", String(128), nullable=True),
    Column("state", String(32), nullable=False),
    Column("step", String(64), nullable=True),
    Column("input", JSON, nullable=False),
    Column("data", JSON, nullable=False),
    # What the instance waits for: {"kind": schemas.sagas.Waiting, ...}
    Column("waiting", JSON, nullable=True),
    Column("wake_at", Float, nullable=True),
    Column("result", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("error_code", String(32), nullable=True),  # schemas.common.FailureCode
    Column("seq", Integer, nullable=False, default=0),
    Column("rev", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Index("ix_saga_instances_wake_at", "wake_at"),
    Index("ix_saga_instances_listing", "tenant", "type", "state", "created_at"),
)

inbox = Table(
    "saga_inbox",
    metadata,
    Column("saga_id", String(128), primary_key=True),
    Column("message_id", String(200), primary_key=True),
    Column("at", Float, nullable=False),
)

outbox = Table(
    "saga_outbox",
    metadata,
    Column("id", String(200), primary_key=True),  # = Nats-Msg-Id of the command
    Column("saga_id", String(128), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("headers", JSON, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("published_at", Float, nullable=True),
    Index("ix_saga_outbox_unpublished", "published_at", "created_at"),
    Index("ix_saga_outbox_saga", "saga_id"),
)

history = Table(
    "saga_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("saga_id", String(128), nullable=False),
    Column("run", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("step", String(64), nullable=True),
    Column("event", String(64), nullable=False),
    Column("detail", JSON, nullable=True),
    Column("at", Float, nullable=False),
    Column("duration_ms", Float, nullable=True),
    UniqueConstraint("saga_id", "run", "seq", "event", name="uq_saga_history_step"),
)

# The turns gateways run without a saga (direct turns), from their first answer until their end:
# ``deadline`` is when the runner ends a turn whose gateway has not (sagas/turns.py); an ended
# turn keeps its row, without a deadline, so a late redelivery of its first answer does not
# watch it again.
turn_watch = Table(
    "saga_turn_watch",
    metadata,
    Column("correlation_id", String(128), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("deadline", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    Index("ix_saga_turn_watch_deadline", "deadline"),
    Index("ix_saga_turn_watch_ended_at", "ended_at"),
)
