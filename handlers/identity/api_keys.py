"""API keys: ``sk-soma-<id>-<secret>``, shown once, stored as a SHA-256 of the secret.

The secret is 256 random bits, so a plain hash is enough (no password stretching needed), and
the id prefix makes lookup an indexed primary-key read followed by one constant-time comparison.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from handlers.identity.config import IdentitySettings
from handlers.identity.directory import check_roles, load_user
from handlers.identity.errors import (
    ExpiredApiKey,
    InvalidInput,
    NotFound,
    RevokedApiKey,
    UnknownApiKey,
)
from handlers.identity.principal import Principal
from handlers.identity.revocation import revoke_family
from handlers.identity.tables import api_keys, token_families

PREFIX = "sk-soma-"
KEY = re.compile(r"sk-soma-([0-9a-f]{16})-([A-Za-z0-9_-]{43})")
# Compared against when the id is unknown, so a miss costs the same as a wrong secret.
_NO_SUCH_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    id: str
    tenant: str
    user: str
    name: str
    roles: tuple[str, ...]
    models: tuple[str, ...] | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    @property
    def hint(self) -> str:
        """Enough of the key to recognise it in a list; the secret part is gone for good."""
        return f"{PREFIX}{self.id}-…"


@dataclass(frozen=True, slots=True)
class IssuedApiKey:
    key: str
    info: ApiKeyInfo


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_info(row: sa.Row) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,
        tenant=row.tenant_id,
        user=row.user_id,
        name=row.name,
        roles=tuple(row.roles),
        models=None if row.models is None else tuple(row.models),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


async def insert_api_key(
    conn: AsyncConnection,
    tenant: str,
    user_id: str,
    name: str,
    roles: Iterable[str] | None,
    models: Iterable[str] | None,
    expires_at: float | None,
    now: float,
) -> IssuedApiKey:
    user = await load_user(conn, tenant, user_id)
    if user is None:
        raise NotFound(f"no user {user_id!r} in tenant {tenant!r}")
    granted = user.roles if roles is None else check_roles(roles)
    if not set(granted) <= set(user.roles):
        extra = sorted(set(granted) - set(user.roles))
        raise InvalidInput(f"a key cannot carry roles its user lacks: {extra}")
    allowed = None if models is None else tuple(sorted(set(models)))
    if allowed is not None and not all(isinstance(m, str) and m for m in allowed):
        raise InvalidInput("model names must be non-empty strings")
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("expires_at is in the past")
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    info = ApiKeyInfo(
        id=key_id,
        tenant=tenant,
        user=user_id,
        name=name,
        roles=granted,
        models=allowed,
        created_at=now,
        expires_at=expires_at,
        revoked_at=None,
    )
    await conn.execute(
        api_keys.insert().values(
            id=key_id,
            tenant_id=tenant,
            user_id=user_id,
            name=name,
            secret_hash=hash_secret(secret),
            roles=list(granted),
            models=None if allowed is None else list(allowed),
            created_at=now,
            expires_at=expires_at,
        )
    )
    return IssuedApiKey(key=f"{PREFIX}{key_id}-{secret}", info=info)


async def create_api_key(
    engine: AsyncEngine,
    tenant: str,
    user_id: str,
    name: str = "",
    roles: Iterable[str] | None = None,
    models: Iterable[str] | None = None,
    expires_at: float | None = None,
    now: float | None = None,
) -> IssuedApiKey:
    """A new key; ``.key`` is the only time the secret exists outside the caller's hands.

    ``roles`` defaults to the user's roles and may only narrow them; ``models`` None allows all.
    """
    async with engine.begin() as conn:
        return await insert_api_key(
            conn,
            tenant,
            user_id,
            name,
            roles,
            models,
            expires_at,
            time.time() if now is None else now,
        )


async def list_api_keys(
    engine: AsyncEngine, tenant: str, user_id: str | None = None
) -> list[ApiKeyInfo]:
    query = sa.select(api_keys).where(api_keys.c.tenant_id == tenant)
    if user_id is not None:
        query = query.where(api_keys.c.user_id == user_id)
    async with engine.connect() as conn:
        rows = await conn.execute(query.order_by(api_keys.c.created_at, api_keys.c.id))
        return [key_info(r) for r in rows]


async def revoke_api_key(
    engine: AsyncEngine,
    tenant: str,
    key_id: str,
    settings: IdentitySettings,
    now: float | None = None,
) -> ApiKeyInfo:
    """Revoke the key and end the token sessions started with it.

    Idempotent: a revoked key keeps its first revocation time.
    """
    now = time.time() if now is None else now
    async with engine.begin() as conn:
        revoked = await conn.execute(
            api_keys.update()
            .where(
                api_keys.c.id == key_id,
                api_keys.c.tenant_id == tenant,
                api_keys.c.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        )
        if revoked.rowcount == 1:
            query = sa.select(token_families.c.id).where(
                token_families.c.key_id == key_id, token_families.c.revoked_at.is_(None)
            )
            for family_id in (await conn.execute(query)).scalars().all():
                await revoke_family(conn, family_id, settings, now)
        query = sa.select(api_keys).where(api_keys.c.id == key_id, api_keys.c.tenant_id == tenant)
        row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"no API key {key_id!r} in tenant {tenant!r}")
    return key_info(row)


def check_usable(info: ApiKeyInfo, now: float) -> None:
    if info.revoked_at is not None:
        raise RevokedApiKey(f"API key {info.id} was revoked")
    if info.expires_at is not None and info.expires_at <= now:
        raise ExpiredApiKey(f"API key {info.id} expired")


async def verify_api_key(engine: AsyncEngine, key: str, now: float | None = None) -> Principal:
    """The principal a presented key speaks for, or a typed ``InvalidApiKey``.

    Revoked / expired are only reported to someone holding the right secret; every other
    failure is ``UnknownApiKey``.
    """
    now = time.time() if now is None else now
    match = KEY.fullmatch(key)
    if match is None:
        raise UnknownApiKey("not a Soma API key")
    key_id, secret = match.groups()
    async with engine.connect() as conn:
        query = sa.select(api_keys).where(api_keys.c.id == key_id)
        row = (await conn.execute(query)).first()
    stored = row.secret_hash if row is not None else _NO_SUCH_HASH
    if not hmac.compare_digest(stored, hash_secret(secret)) or row is None:
        raise UnknownApiKey("unknown API key")
    info = key_info(row)
    check_usable(info, now)
    return Principal(
        tenant=info.tenant, user=info.user, roles=info.roles, models=info.models, key_id=info.id
    )
