"""The identity process: answers the identity commands, keeps the signing key set current and
prunes what has expired.

Composition root: one engine and the ``SOMA_JWT_*`` settings shared by every command
(``commands.py``); the schema is migrated at start, as every handler does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from bus.service import Handler, Service
from handlers.identity.commands import IdentityCommands
from handlers.identity.config import IdentitySettings
from handlers.identity.revocation import prune
from handlers.identity.signing_keys import ensure_signing_keys
from schemas.identity import (
    IdentityCreateKey,
    IdentityCreateTenant,
    IdentityCreateUser,
    IdentityIssueToken,
    IdentityJwks,
    IdentityListKeys,
    IdentityListTenants,
    IdentityListUsers,
    IdentityRefresh,
    IdentityRevocations,
    IdentityRevoke,
    IdentityRevokeKey,
    IdentityVerifyKey,
)
from soma.db import make_engine, migrate
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


def routes(commands: IdentityCommands) -> dict[type, Handler]:
    return {
        IdentityVerifyKey: commands.verify_key,
        IdentityJwks: commands.jwks,
        IdentityRevocations: commands.revocations,
        IdentityIssueToken: commands.issue_token,
        IdentityRefresh: commands.refresh,
        IdentityRevoke: commands.revoke,
        IdentityCreateTenant: commands.create_tenant,
        IdentityListTenants: commands.list_tenants,
        IdentityCreateUser: commands.create_user,
        IdentityListUsers: commands.list_users,
        IdentityCreateKey: commands.create_key,
        IdentityListKeys: commands.list_keys,
        IdentityRevokeKey: commands.revoke_key,
    }


def build(settings: Settings, config: IdentitySettings | None = None) -> Service:
    config = config or IdentitySettings()
    database_url = settings.resolved_database_url("identity")
    engine = make_engine(database_url)
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        if config.key_passphrase is None:
            log.warning("SOMA_JWT_KEY_PASSPHRASE is unset: signing keys are stored unencrypted")
        await migrate(database_url, "identity")
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

    return Service(
        name="identity",
        routes=routes(IdentityCommands(engine, config)),
        startup=[start],
        shutdown=[stop],
    )
