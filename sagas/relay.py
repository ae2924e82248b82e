"""The outbox relay: publishes what committed steps decided to send, exactly once in effect.

Rows are published right after their transaction commits; a sweep republishes anything left
unpublished (a crash between commit and publish, another runner that died). Each row's id is its
``Nats-Msg-Id``, so a row published twice inside the dedup window is stored once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from nats.js import JetStreamContext
from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from kernel.db import reader
from sagas import tables

log = logging.getLogger("soma.sagas.relay")


class Relay:
    def __init__(self, db: AsyncEngine, js: JetStreamContext) -> None:
        self.db = db
        self.js = js
        self.sent: set[str] = set()  # published, not yet marked in the outbox

    async def publish(self, rows: list[dict[str, Any]]) -> None:
        """Publish now; the rows are marked later in one batch (``mark_sent``), off the path
        of the next step. Should the process die first, the sweep republishes them and the
        server drops the repeats."""
        if not rows:
            return
        await asyncio.gather(
            *(
                self.js.publish(r["subject"], bytes(r["body"]), headers=dict(r["headers"]))
                for r in rows
            )
        )
        self.sent.update(r["id"] for r in rows)

    async def publish_now(self, rows: list[dict[str, Any]]) -> None:
        """Publish what a group mode transition sends, before its commit: nothing to mark, as
        such rows reach the outbox only when this fails (RECOVERY.md)."""
        await asyncio.gather(
            *(
                self.js.publish(r["subject"], bytes(r["body"]), headers=dict(r["headers"]))
                for r in rows
            )
        )

    async def mark_sent(self) -> int:
        if not self.sent:
            return 0
        ids, self.sent = list(self.sent), set()
        async with self.db.begin() as conn:
            await conn.execute(
                update(tables.outbox)
                .where(tables.outbox.c.id.in_(ids))
                .values(published_at=time.time())
            )
        return len(ids)

    async def sweep(self, older_than: float = 1.0, limit: int = 500) -> int:
        async with reader(self.db).connect() as conn:
            rows = (
                (
                    await conn.execute(
                        select(tables.outbox)
                        .where(
                            and_(
                                tables.outbox.c.published_at.is_(None),
                                tables.outbox.c.created_at < time.time() - older_than,
                            )
                        )
                        .order_by(tables.outbox.c.created_at)
                        .limit(limit)
                    )
                )
                .mappings()
                .all()
            )
        batch = [dict(r) for r in rows if r["id"] not in self.sent]
        if batch:
            log.info("relay: publishing %d outbox rows left unpublished", len(batch))
            await self.publish(batch)
        return len(batch)
