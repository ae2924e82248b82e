"""Revocation records, the database's side of what ``board`` publishes to the gateways.

An access token cannot be recalled, so revoking one means telling every gateway to refuse it
until it would have expired anyway; after that the record is pruned. Three kinds: one token
(``jti``), one refresh family and its access tokens (``sid``), and every token a user holds
(a not-before time, which also revokes the user's refresh families).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from handlers.identity.config import IdentitySettings
from handlers.identity.errors import InvalidInput, NotFound
from handlers.identity.tables import refresh_tokens, revocations, token_families, users
from handlers.identity.verify import RevocationUpdate

Kind = Literal["jti", "session", "user"]
TOKEN, SESSION, USER = "jti", "session", "user"
# A poll re-reads this much before its cursor, so a revocation committed late (or stamped by
# a slightly slower clock on another identity process) is still seen. Re-reading is harmless.
OVERLAP = 30.0


@dataclass(frozen=True, slots=True)
class Entry:
    """One revocation as recorded: what the bus feed lists."""

    kind: Kind
    subject: str
    revoked_at: float
    expires_at: float


async def record(
    conn: AsyncConnection,
    kind: str,
    subject: str,
    settings: IdentitySettings,
    now: float,
    command_id: str | None = None,
    expires_at: float | None = None,
) -> None:
    await conn.execute(
        revocations.insert().values(
            kind=kind,
            subject=subject,
            revoked_at=now,
            expires_at=now + settings.revocation_ttl if expires_at is None else expires_at,
            command_id=command_id,
        )
    )


async def _recorded_by(conn: AsyncConnection, command_id: str | None) -> bool:
    """Whether this command was carried out already (it is being delivered again)."""
    if command_id is None:
        return False
    query = sa.select(revocations.c.id).where(revocations.c.command_id == command_id).limit(1)
    return (await conn.execute(query)).first() is not None


async def revoke_family(
    conn: AsyncConnection, family_id: str, settings: IdentitySettings, now: float
) -> bool:
    """No more refreshes from this family, and its outstanding access tokens refused.

    False when it was revoked already (nothing recorded twice).
    """
    ended = await conn.execute(
        token_families.update()
        .where(token_families.c.id == family_id, token_families.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    if ended.rowcount != 1:
        return False
    await record(conn, SESSION, family_id, settings, now)
    return True


async def revoke(
    engine: AsyncEngine,
    jti: str,
    settings: IdentitySettings,
    now: float | None = None,
    expires_at: float | None = None,
    command_id: str | None = None,
) -> None:
    """Refuse one access token from now on (idempotent).

    ``expires_at``: the token's own expiry, when known; the entry is kept until then (plus the
    clock leeway), never longer than any token of ours can live.
    """
    if not jti or len(jti) > 64:
        raise InvalidInput("a jti is 1 to 64 characters")
    now = time.time() if now is None else now
    until = now + settings.revocation_ttl
    if expires_at is not None:
        until = min(until, expires_at + settings.leeway)
    async with engine.begin() as conn:
        query = sa.select(revocations.c.id).where(
            revocations.c.kind == TOKEN,
            revocations.c.subject == jti,
            revocations.c.expires_at >= until,
        )
        if await _recorded_by(conn, command_id):
            return
        if (await conn.execute(query.limit(1))).first() is None:
            await record(conn, TOKEN, jti, settings, now, command_id, until)


async def revoke_session(
    engine: AsyncEngine,
    tenant: str,
    refresh_sha256: str,
    settings: IdentitySettings,
    now: float | None = None,
) -> bool:
    """End the refresh family of a refresh token (any of its tokens) if it is ``tenant``'s.

    True when the family exists in the tenant (revoked now or before), False when unknown.
    """
    now = time.time() if now is None else now
    async with engine.begin() as conn:
        query = (
            sa.select(token_families.c.id)
            .join(refresh_tokens, refresh_tokens.c.family_id == token_families.c.id)
            .where(
                refresh_tokens.c.token_hash == refresh_sha256,
                token_families.c.tenant_id == tenant,
            )
        )
        family_id = (await conn.execute(query)).scalar_one_or_none()
        if family_id is None:
            return False
        await revoke_family(conn, family_id, settings, now)
        return True


async def revoke_user(
    engine: AsyncEngine,
    tenant: str,
    user_id: str,
    settings: IdentitySettings,
    now: float | None = None,
    command_id: str | None = None,
) -> None:
    """Refuse every access token the user was issued before now, and end their refresh families.

    API keys are separate credentials and stay valid; revoke them with ``revoke_api_key``. A
    token issued within the same second as this call is refused too (``iat`` is whole seconds).
    The same ``command_id`` again does nothing: a redelivery must not revoke tokens issued after
    the first delivery.
    """
    now = time.time() if now is None else now
    async with engine.begin() as conn:
        query = sa.select(users.c.id).where(users.c.id == user_id, users.c.tenant_id == tenant)
        if (await conn.execute(query)).first() is None:
            raise NotFound(f"no user {user_id!r} in tenant {tenant!r}")
        if await _recorded_by(conn, command_id):
            return
        await conn.execute(
            token_families.update()
            .where(token_families.c.user_id == user_id, token_families.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        await record(conn, USER, user_id, settings, now, command_id)


async def list_revocations(
    engine: AsyncEngine, since: float | None = None, now: float | None = None
) -> list[Entry]:
    """Live entries recorded at or after ``since`` (all live ones when None), oldest first."""
    now = time.time() if now is None else now
    query = sa.select(revocations).where(revocations.c.expires_at >= now)
    if since is not None:
        query = query.where(revocations.c.revoked_at >= since)
    async with engine.connect() as conn:
        rows = await conn.execute(query.order_by(revocations.c.revoked_at, revocations.c.id))
        return [
            Entry(
                kind=cast(Kind, r.kind),
                subject=r.subject,
                revoked_at=r.revoked_at,
                expires_at=r.expires_at,
            )
            for r in rows
        ]


async def revocations_since(
    engine: AsyncEngine, cursor: float | None = None, now: float | None = None
) -> RevocationUpdate:
    """Revocations recorded since ``cursor`` (all live ones when None), for ``Verifier.apply``.

    Pass back the returned ``cursor`` on the next poll. Entries already past their expiry are
    left out: no token they cover can still be valid.
    """
    now = time.time() if now is None else now
    query = sa.select(revocations).where(revocations.c.expires_at >= now)
    if cursor is not None:
        query = query.where(revocations.c.revoked_at >= cursor - OVERLAP)
    tokens: dict[str, float] = {}
    sessions: dict[str, float] = {}
    by_user: dict[str, tuple[float, float]] = {}
    latest = cursor
    async with engine.connect() as conn:
        for row in await conn.execute(query):
            latest = row.revoked_at if latest is None else max(latest, row.revoked_at)
            if row.kind == TOKEN:
                tokens[row.subject] = max(row.expires_at, tokens.get(row.subject, 0.0))
            elif row.kind == SESSION:
                sessions[row.subject] = max(row.expires_at, sessions.get(row.subject, 0.0))
            elif row.kind == USER:
                nbf, until = by_user.get(row.subject, (0.0, 0.0))
                by_user[row.subject] = (max(nbf, row.revoked_at), max(until, row.expires_at))
    return RevocationUpdate(
        tokens=tokens,
        sessions=sessions,
        users=by_user,
        cursor=latest,
        complete=cursor is None,
    )


async def prune(engine: AsyncEngine, now: float | None = None) -> None:
    """Forget revocations and refresh tokens that can no longer matter."""
    now = time.time() if now is None else now
    async with engine.begin() as conn:
        await conn.execute(revocations.delete().where(revocations.c.expires_at < now))
        await conn.execute(refresh_tokens.delete().where(refresh_tokens.c.expires_at < now))
        live = sa.select(refresh_tokens.c.family_id).where(
            refresh_tokens.c.family_id == token_families.c.id
        )
        await conn.execute(token_families.delete().where(~sa.exists(live)))
