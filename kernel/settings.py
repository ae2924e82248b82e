"""Settings from the environment; anything unset falls back to the embedded defaults.

Embedded defaults need no services: the wheel's nats-server, a SQLite file per area and an
in-process Qdrant edge shard under ``SOMA_DATA_DIR``, and in-process rate limits.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    nats_url: str | None = Field(default=None, alias="NATS_URL")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    redis_url: str | None = Field(default=None, alias="REDIS_URL")
    qdrant_url: str | None = Field(default=None, alias="QDRANT_URL")
    openai_api_key: str | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    anthropic_api_key: str | None = Field(default=None, alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(default=None, alias="ANTHROPIC_BASE_URL")
    data_dir: Path = Field(default=Path(".soma"), alias="SOMA_DATA_DIR")
    http_port: int = Field(default=8080, alias="SOMA_HTTP_PORT")
    http_host: str = Field(default="127.0.0.1", alias="SOMA_HTTP_HOST")
    # Streams: replicas > 1 needs a JetStream cluster; ages in seconds.
    stream_replicas: int = Field(default=1, alias="SOMA_STREAM_REPLICAS")
    commands_max_age: float = Field(default=7 * 86400, alias="SOMA_COMMANDS_MAX_AGE")
    events_max_age: float = Field(default=30 * 86400, alias="SOMA_EVENTS_MAX_AGE")
    events_max_bytes: int = Field(default=-1, alias="SOMA_EVENTS_MAX_BYTES")
    dedup_window: float = Field(default=120, alias="SOMA_DEDUP_WINDOW")
    # How long the gateway's Idempotency-Key records live in their key-value bucket (seconds).
    idempotency_ttl: float = Field(default=86400, gt=0, alias="SOMA_IDEMPOTENCY_TTL")
    # Replies and pull deliveries arrive under this prefix; nats-accounts.conf lets each user
    # subscribe only under its own. Unset: `_INBOX.<user>` for the user named in NATS_URL.
    nats_inbox_prefix: str | None = Field(default=None, alias="SOMA_NATS_INBOX_PREFIX")
    # Consumers: redeliveries before a dead letter, backoff between them, in-flight limits.
    max_deliver: int = Field(default=5, alias="SOMA_MAX_DELIVER")
    retry_initial: float = Field(default=1.0, alias="SOMA_RETRY_INITIAL")
    retry_maximum: float = Field(default=60.0, alias="SOMA_RETRY_MAXIMUM")
    ack_wait: float = Field(default=30.0, alias="SOMA_ACK_WAIT")
    # After a direct turn's first answer, how long the saga runner waits for its end before it
    # publishes one for the gateway that ran it (sagas/turns.py); above SOMA_CHAT_TIMEOUT.
    turn_deadline: float = Field(default=360.0, gt=0, alias="SOMA_TURN_DEADLINE")
    max_ack_pending: int = Field(default=1000, alias="SOMA_MAX_ACK_PENDING")
    fetch_batch: int = Field(default=64, alias="SOMA_FETCH_BATCH")
    health_port: int | None = Field(default=None, alias="SOMA_HEALTH_PORT")

    def resolved_database_url(self, area: str) -> str:
        """The SQLAlchemy async URL of ``area``'s store (one of ``kernel.db.AREAS``).

        ``DATABASE_URL`` (postgres → asyncpg) is one database for every area. Unset, each area
        has its own SQLite file under the data folder (``sagas.db``, ``analytics.db``, …):
        SQLite takes one writer per file, so areas in one file would queue on one write lock.
        """
        url = self.database_url
        if not url:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            return f"sqlite+aiosqlite:///{(self.data_dir / f'{area}.db').resolve()}"
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+asyncpg://" + url[len(plain) :]
        return url


def load() -> Settings:
    return Settings()
