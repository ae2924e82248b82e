"""The Ed25519 key set that signs access tokens, and its rotation.

Three kinds of key are published in the JWKS: the **active** key signs; the **next** key is
published one rotation period before it starts signing, so gateways that cache the JWKS already
know it when it becomes active; **retired** keys sign nothing and stay published until every
token they signed has expired (``verify_until``), then they are deleted.

Rotation is safe with several identity processes: it retires the active key only if it is still
the active one (a conditional update), and a partial unique index allows one active and one
next key at most.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from handlers.identity.config import IdentitySettings
from handlers.identity.errors import NoSigningKey
from handlers.identity.tables import signing_keys

ACTIVE, NEXT, RETIRED = "active", "next", "retired"


class _LostRace(Exception):
    """Another process retired the key we meant to retire; roll back and take its result."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(private_key: Ed25519PrivateKey) -> dict[str, str]:
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    x = _b64url(raw)
    # RFC 7638: the thumbprint hashes the required members, sorted, without whitespace.
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    kid = _b64url(hashlib.sha256(canonical.encode()).digest())
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": "EdDSA"}


def _passphrase(settings: IdentitySettings) -> bytes | None:
    secret = settings.key_passphrase
    return secret.get_secret_value().encode() if secret is not None else None


def _seal(private_key: Ed25519PrivateKey, passphrase: bytes | None) -> str:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode()


@lru_cache(maxsize=8)
def _unseal(pem: str, passphrase: bytes | None) -> Ed25519PrivateKey:
    """Cached: decrypting runs a deliberately slow KDF, and the active key signs every token."""
    key = serialization.load_pem_private_key(pem.encode(), password=passphrase or None)
    if not isinstance(key, Ed25519PrivateKey):
        raise TypeError("identity_signing_keys holds a key that is not Ed25519")
    return key


async def _insert_key(
    conn: AsyncConnection, status: str, settings: IdentitySettings, now: float
) -> str:
    private_key = Ed25519PrivateKey.generate()
    jwk = public_jwk(private_key)
    await conn.execute(
        signing_keys.insert().values(
            kid=jwk["kid"],
            status=status,
            private_pem=_seal(private_key, _passphrase(settings)),
            public_jwk=jwk,
            created_at=now,
            activated_at=now if status == ACTIVE else None,
        )
    )
    return jwk["kid"]


async def _key_row(conn: AsyncConnection, status: str) -> sa.Row | None:
    query = sa.select(signing_keys).where(signing_keys.c.status == status)
    return (await conn.execute(query)).first()


async def _prune(conn: AsyncConnection, now: float) -> None:
    await conn.execute(
        signing_keys.delete().where(
            signing_keys.c.status == RETIRED, signing_keys.c.verify_until < now
        )
    )


async def active_signing_key(conn: AsyncConnection, settings: IdentitySettings) -> SigningKey:
    row = await _key_row(conn, ACTIVE)
    if row is None:
        raise NoSigningKey("no active signing key; run ensure_signing_keys first")
    return SigningKey(kid=row.kid, private_key=_unseal(row.private_pem, _passphrase(settings)))


async def rotate_keys(
    engine: AsyncEngine,
    settings: IdentitySettings,
    now: float | None = None,
    replacing: str | None = None,
) -> str:
    """Promote the next key to active, retire the old active key, publish a fresh next key.

    The retired key keeps verifying until ``now + access_ttl + leeway``. With ``replacing``,
    rotate only if that key is still the active one: processes that all found the same key due
    then rotate once between them, instead of each promoting a next key nobody has fetched yet.
    Returns the active kid afterwards.
    """
    now = time.time() if now is None else now
    try:
        async with engine.begin() as conn:
            active = await _key_row(conn, ACTIVE)
            if replacing is not None and (active is None or active.kid != replacing):
                raise _LostRace
            if active is not None:
                retired = await conn.execute(
                    signing_keys.update()
                    .where(signing_keys.c.kid == active.kid, signing_keys.c.status == ACTIVE)
                    .values(status=RETIRED, verify_until=now + settings.revocation_ttl)
                )
                if retired.rowcount != 1:
                    raise _LostRace
            upcoming = await _key_row(conn, NEXT)
            if upcoming is not None:
                await conn.execute(
                    signing_keys.update()
                    .where(signing_keys.c.kid == upcoming.kid)
                    .values(status=ACTIVE, activated_at=now)
                )
                kid = str(upcoming.kid)
            else:
                kid = await _insert_key(conn, ACTIVE, settings, now)
            await _insert_key(conn, NEXT, settings, now)
            await _prune(conn, now)
            return kid
    except (IntegrityError, _LostRace):
        # A concurrent rotation got there first; its result is as good as ours.
        return await _active_kid(engine)


async def _create_key_set(engine: AsyncEngine, settings: IdentitySettings, now: float) -> str:
    """First start: an active and a next key, unless a concurrent first start made them."""
    try:
        async with engine.begin() as conn:
            if await _key_row(conn, ACTIVE) is not None:
                raise _LostRace
            kid = await _insert_key(conn, ACTIVE, settings, now)
            if await _key_row(conn, NEXT) is None:
                await _insert_key(conn, NEXT, settings, now)
            return kid
    except (IntegrityError, _LostRace):
        return await _active_kid(engine)


async def _active_kid(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        row = await _key_row(conn, ACTIVE)
    if row is None:
        raise NoSigningKey("no active signing key after a concurrent rotation")
    return str(row.kid)


async def ensure_signing_keys(
    engine: AsyncEngine, settings: IdentitySettings, now: float | None = None
) -> str:
    """Make the key set current: create it on a fresh database, rotate when due, prune.

    Cheap when nothing is due, so it runs at start and then periodically. Returns the active kid.
    """
    now = time.time() if now is None else now
    async with engine.connect() as conn:
        active = await _key_row(conn, ACTIVE)
        upcoming = await _key_row(conn, NEXT)
    if active is None:
        return await _create_key_set(engine, settings, now)
    if active.activated_at + settings.rotate_every <= now:
        return await rotate_keys(engine, settings, now, replacing=active.kid)
    if upcoming is None:
        try:
            async with engine.begin() as conn:
                await _insert_key(conn, NEXT, settings, now)
        except IntegrityError:
            pass  # another process published one
    async with engine.begin() as conn:
        await _prune(conn, now)
    return str(active.kid)


async def prune_signing_keys(engine: AsyncEngine, now: float | None = None) -> None:
    async with engine.begin() as conn:
        await _prune(conn, time.time() if now is None else now)


async def jwks(engine: AsyncEngine, now: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """The public key set (RFC 7517) for verifiers: next, active and unexpired retired keys."""
    now = time.time() if now is None else now
    query = (
        sa.select(signing_keys.c.public_jwk)
        .where(
            sa.or_(
                signing_keys.c.status != RETIRED,
                signing_keys.c.verify_until >= now,
            )
        )
        .order_by(signing_keys.c.created_at.desc(), signing_keys.c.kid)
    )
    async with engine.connect() as conn:
        rows = await conn.execute(query)
        return {"keys": [dict(r.public_jwk) for r in rows]}
