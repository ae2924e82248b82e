"""Fixtures for analytics: the rollup store on SQLite and on a throwaway database of the real
PostgreSQL, and envelopes that say when, for whom and under which correlation an event happened."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from schemas.base import Usage
from schemas.envelope import Envelope, new_id
from schemas.slm import ChatMessage, SlmCompleted
from tests.servers import area_engines

# 2026-03-10 12:00 UTC: a fixed noon, so a test's events stay inside one UTC day.
NOON = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0


sqlite_engine, postgresql_url, postgresql_engine, engine = area_engines("analytics")


@pytest.fixture
def tenant() -> str:
    """A tenant of this test alone, so tests sharing a database do not see each other's usage."""
    return f"t{uuid.uuid4().hex[:10]}"


def envelope(
    schema: str,
    *,
    tenant: str,
    at: float = NOON,
    correlation_id: str | None = None,
    actor: str = "u-ada",
    message_id: str | None = None,
) -> Envelope:
    """The envelope of a ``schema`` event published at ``at``."""
    mid = message_id or new_id()
    return Envelope(
        message_id=mid,
        correlation_id=correlation_id or mid,
        tenant=tenant,
        schema=schema,
        actor=actor,
        timestamp=at,
    )


def completion(
    model: str = "gpt-4o-mini",
    prompt: int = 100,
    completion_tokens: int = 20,
    cost: float = 0.0001,
    latency: float = 250.0,
) -> SlmCompleted:
    return SlmCompleted(
        model=model,
        provider="openai",
        message=ChatMessage(role="assistant", content="ok"),
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion_tokens),
        cost_usd=cost,
        latency_ms=latency,
    )
