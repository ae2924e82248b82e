"""Every identity test runs against SQLite and a throwaway PostgreSQL database.

Each database is migrated once per run with the identity branch only; each test starts from
empty tables.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.identity.config import IdentitySettings
from handlers.identity.directory import create_tenant, create_user
from handlers.identity.principal import Principal
from handlers.identity.revocation import revocations_since
from handlers.identity.signing_keys import ensure_signing_keys, jwks
from handlers.identity.tables import ALL
from handlers.identity.verify import Verifier
from kernel.db import make_engine
from tests.servers import database, migrate_branch


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with database(request.param, tmp_path_factory.mktemp("identity"), "identity.db") as url:
        yield url


@pytest.fixture(scope="session")
async def migrated(database_url: str) -> AsyncIterator[AsyncEngine]:
    await asyncio.to_thread(migrate_branch, database_url, "identity")
    engine = make_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def db(migrated: AsyncEngine) -> AsyncEngine:
    async with migrated.begin() as conn:
        for table in ALL:
            await conn.execute(table.delete())
    return migrated


@pytest.fixture
def settings() -> IdentitySettings:
    return IdentitySettings(
        issuer="soma",
        audience="soma-gateway",
        access_ttl=900,
        refresh_ttl=86400,
        rotate_every=86400,
        leeway=5,
        key_passphrase=None,
    )


@pytest.fixture
def now() -> float:
    return time.time()


@pytest.fixture
async def keys(db: AsyncEngine, settings: IdentitySettings, now: float) -> str:
    """The active kid of a freshly created key set."""
    return await ensure_signing_keys(db, settings, now)


@pytest.fixture
async def alice(db: AsyncEngine, now: float) -> Principal:
    await create_tenant(db, "acme", now=now)
    user = await create_user(db, "acme", "alice", ["admin", "member"], now=now)
    return Principal(tenant="acme", user=user.id, roles=("member",))


async def current_verifier(engine: AsyncEngine, settings: IdentitySettings, now: float) -> Verifier:
    """A gateway's view after one poll of the key set and the revocations."""
    verifier = Verifier(
        issuer=settings.issuer,
        audience=settings.audience,
        jwks=await jwks(engine, now),
        leeway=settings.leeway,
    )
    verifier.apply(await revocations_since(engine, None, now), now)
    return verifier


def refresh_digest() -> str:
    """The SHA-256 of a fresh refresh token, as the gateway sends it; the token itself is not
    needed here, only the holder of a token ever has it."""
    return hashlib.sha256(f"rt-soma-{secrets.token_urlsafe(32)}".encode()).hexdigest()
