"""The identity process: answers the identity commands, keeps the signing key set current,
publishes revocations and the key set to the gateways' bucket, and prunes what has expired.

Composition root: one engine and the ``SOMA_JWT_*`` settings shared by every command
(``commands.py``); the schema is migrated at start, as every handler does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from bus.service import Clock, Connected, Handler, Service
from handlers.identity.board import RevocationBoard
from handlers.identity.commands import IdentityCommands
from handlers.identity.config import IdentitySettings
from handlers.identity.revocation import prune
from handlers.identity.signing_keys import ensure_signing_keys, jwks
from kernel.db import make_engine, migrate
from kernel.settings import Settings
from schemas.identity import (
    IdentityCreateKey,
    IdentityCreateTenant,
    IdentityCreateUser,
    IdentityGetKey,
    IdentityGetKeyLimits,
    IdentityIssueToken,
    IdentityJwks,
    IdentityListKeys,
    IdentityListTenants,
    IdentityListUsers,
    IdentityRefresh,
    IdentityRevocations,
    IdentityRevoke,
    IdentityRevokeKey,
    IdentityUpdateKey,
    IdentityUpdateTenant,
    IdentityVerifyKey,
)

log = logging.getLogger(__name__)


def maintenance_interval(config: IdentitySettings) -> float:
    """Often enough that a rotation is at most a small fraction of a period late."""
    return max(1.0, min(60.0, config.rotate_every / 10))


async def maintain(
    engine: AsyncEngine,
    config: IdentitySettings,
    board: RevocationBoard | None = None,
    clock: Clock = time.time,
) -> None:
    """One round: rotate when due, drop expired keys, revocations and refresh tokens, and
    publish a changed key set or a revocation some process recorded but did not publish."""
    await ensure_signing_keys(engine, config, clock())
    await prune(engine, clock())
    if board is not None:
        await board.publish_jwks((await jwks(engine, clock()))["keys"])
        await board.sync()


async def _maintain_forever(
    engine: AsyncEngine, config: IdentitySettings, board: RevocationBoard, clock: Clock
) -> None:
    while True:
        await asyncio.sleep(maintenance_interval(config))
        try:
            await maintain(engine, config, board, clock)
        except Exception:
            # The database may be briefly unreachable; the next round tries again.
            log.exception("identity key maintenance failed")


def routes(commands: IdentityCommands) -> dict[type, Handler]:
    return {
        IdentityVerifyKey: commands.verify_key,
        IdentityGetKeyLimits: commands.key_limits,
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
        IdentityUpdateKey: commands.update_key,
        IdentityGetKey: commands.get_key,
        IdentityUpdateTenant: commands.update_tenant,
    }


def build(settings: Settings, config: IdentitySettings | None = None) -> Service:
    config = config or IdentitySettings()
    database_url = settings.resolved_database_url("identity")
    engine = make_engine(database_url)
    tasks: list[asyncio.Task[None]] = []
    commands = IdentityCommands(engine, config)

    async def start(bus: Connected) -> None:
        if config.key_passphrase is None:
            log.warning("SOMA_JWT_KEY_PASSPHRASE is unset: signing keys are stored unencrypted")
        commands.clock = bus.clock
        await migrate(database_url, "identity")
        kid = await ensure_signing_keys(engine, config, bus.clock())
        log.info("identity signing key %s active", kid)
        # Published before the commands are consumed: the gateways must have the key set before
        # the first token is issued.
        board = await RevocationBoard.open(bus.js, engine, bus.clock)
        await board.publish_jwks((await jwks(engine, bus.clock()))["keys"])
        await board.sync()
        commands.board = board
        tasks.append(asyncio.create_task(_maintain_forever(engine, config, board, bus.clock)))

    async def stop() -> None:
        while tasks:
            task = tasks.pop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        commands.board = None
        await engine.dispose()

    return Service(
        name="identity",
        routes=routes(commands),
        startup=[start],
        shutdown=[stop],
    )
