"""The judge's verdicts kept in SQL by content hash, so every policy replica — and a restarted
one — judges a text under a constitution once, not once per process.

A verdict is only ever written for a judge that answered: a silent judge's outcome depends on
the moment, not on the text. Verdicts older than ``KEPT`` are forgotten at start; a changed
constitution has a new hash, so its verdicts never mix with the old one's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import Column, DateTime, Index, String, Table, Text, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.policy.evaluate import Finding
from handlers.policy.judge import Judgement
from kernel.db import metadata
from schemas.policy import JudgeVerdict

KEPT = timedelta(days=30)

judgements = Table(
    "policy_judgements",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("verdict", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_policy_judgements_created_at", "created_at"),
)


def _encode(judgement: Judgement) -> str:
    findings = [[f.rule_id, f.action, f.reason] for f in judgement.findings]
    return msgspec.json.encode({"verdict": judgement.verdict, "findings": findings}).decode()


def _decode(text: str) -> Judgement:
    data: dict[str, Any] = msgspec.json.decode(text)
    verdict = msgspec.convert(data["verdict"], JudgeVerdict)
    findings = tuple(
        Finding(rule_id, action, reason) for rule_id, action, reason in data["findings"]
    )
    return Judgement(verdict, findings)


class SqlJudgements:
    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock  # dates each verdict, so ``prune`` forgets it on time

    async def load(self, key: str) -> Judgement | None:
        async with self.engine.connect() as conn:
            text = (
                await conn.execute(select(judgements.c.verdict).where(judgements.c.key == key))
            ).scalar()
        return _decode(text) if text is not None else None

    async def save(self, key: str, judgement: Judgement) -> None:
        async with self.engine.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            await conn.execute(
                dialect.insert(judgements)
                .values(
                    key=key,
                    verdict=_encode(judgement),
                    created_at=datetime.fromtimestamp(self.clock(), UTC),
                )
                .on_conflict_do_nothing(index_elements=["key"])
            )


async def prune(engine: AsyncEngine, before: datetime) -> int:
    async with engine.begin() as conn:
        result = await conn.execute(delete(judgements).where(judgements.c.created_at < before))
        return int(result.rowcount)
