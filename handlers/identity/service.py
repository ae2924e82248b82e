"""The identity process: keeps the signing key set current and prunes what has expired.

No bus routes yet (no identity messages are declared in ``schemas/``); the gateway calls the
identity functions against the shared database and verifies tokens locally (``verify.py``).
Expects the schema migrated (``soma.db.migrate``) before start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from bus.service import Service
from handlers.identity.config import IdentitySettings
from handlers.identity.revocation import prune
from handlers.identity.signing_keys import ensure_signing_keys
from soma.db import make_engine
from soma.settings import Settings

log = logging.getLogger(__name__)


def maintenance_interval(config: IdentitySettings) -> float:
    """Often enough that a rotation is at most a small fraction of a period late."""
    return max(1.0, min(60.0, config.rotate_every / 10))


async def maintain(engine: AsyncEngine, config: IdentitySettings) -> None:
    """One round: rotate when due, then drop expired keys, revocations and refresh tokens."""
    await ensure_signing_keys(engine, config)
    await prune(engine)


async def _maintain_forever(engine: AsyncEngine, config: IdentitySettings) -> None:
    while True:
        await asyncio.sleep(maintenance_interval(config))
        try:
            await maintain(engine, config)
        except Exception:
            # The database may be briefly unreachable; the next round tries again.
            log.exception("identity key maintenance failed")


def build(settings: Settings, config: IdentitySettings | None = None) -> Service:
    config = config or IdentitySettings()
    engine = make_engine(settings.resolved_database_url())
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        if config.key_passphrase is None:
            log.warning("SOMA_JWT_KEY_PASSPHRASE is unset: signing keys are stored unencrypted")
        kid = await ensure_signing_keys(engine, config)
        log.info("identity signing key %s active", kid)
        tasks.append(asyncio.create_task(_maintain_forever(engine, config)))

    async def stop() -> None:
        while tasks:
            task = tasks.pop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await engine.dispose()

    return Service(name="identity", routes={}, startup=[start], shutdown=[stop])
