"""Issuing access tokens (RFC 9068 JWTs) and rotating refresh tokens.

A refresh token is opaque, stored as its SHA-256, and good for one exchange: each use returns a
new pair and marks the old token used. Tokens descending from one login form a *family* (its id
is the access tokens' ``sid``). When a used token is presented again, someone holds a copy, and
there is no telling whether it is the thief or the owner — so the whole family is revoked: the
newest refresh token stops working and the family's access tokens are refused by the gateways.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from handlers.identity.api_keys import check_usable, key_info
from handlers.identity.config import IdentitySettings
from handlers.identity.directory import User, load_user
from handlers.identity.errors import (
    InvalidApiKey,
    InvalidInput,
    InvalidRefreshToken,
    NotFound,
    RefreshTokenExpired,
    RefreshTokenReused,
    RefreshTokenRevoked,
    UnknownRefreshToken,
)
from handlers.identity.principal import Principal
from handlers.identity.revocation import revoke_family
from handlers.identity.signing_keys import active_signing_key
from handlers.identity.tables import api_keys, refresh_tokens, token_families

REFRESH_PREFIX = "rt-soma-"


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    jti: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    jti: str
    session: str
    expires_at: float
    token_type: str = "Bearer"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _grantable_roles(
    conn: AsyncConnection, principal: Principal
) -> tuple[User, tuple[str, ...]]:
    user = await load_user(conn, principal.tenant, principal.user)
    if user is None:
        raise NotFound(f"no user {principal.user!r} in tenant {principal.tenant!r}")
    extra = set(principal.roles) - set(user.roles)
    if extra:
        raise InvalidInput(f"user {user.name!r} lacks roles {sorted(extra)}")
    return user, tuple(sorted(set(principal.roles)))


async def _sign(
    conn: AsyncConnection,
    settings: IdentitySettings,
    principal: Principal,
    client_id: str,
    scope: str,
    session: str | None,
    now: float,
) -> AccessToken:
    key = await active_signing_key(conn, settings)
    iat = int(now)
    exp = iat + int(settings.access_ttl)
    jti = uuid.uuid4().hex
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "sub": principal.user,
        "aud": settings.audience,
        "exp": exp,
        "iat": iat,
        "nbf": iat,
        "jti": jti,
        "client_id": client_id,
        "tenant": principal.tenant,
        "roles": list(principal.roles),
        "scope": scope,
    }
    if principal.models is not None:
        claims["models"] = list(principal.models)
    if principal.key_id is not None:
        claims["key_id"] = principal.key_id
    if session is not None:
        claims["sid"] = session
    token = jwt.encode(
        claims,
        key.private_key,
        algorithm="EdDSA",
        headers={"typ": "at+jwt", "kid": key.kid},
    )
    return AccessToken(token=token, jti=jti, expires_at=float(exp))


def _client_id(principal: Principal, client_id: str | None) -> str:
    return client_id or principal.key_id or "soma"


async def issue_access_token(
    engine: AsyncEngine,
    settings: IdentitySettings,
    principal: Principal,
    client_id: str | None = None,
    scope: str = "",
    now: float | None = None,
) -> AccessToken:
    """A signed access token for ``principal`` (no refresh token, no session).

    ``client_id`` defaults to the API key id the principal came from. The principal's roles must
    be roles its user holds; ``models`` carries over as a claim so the limit survives.
    """
    now = time.time() if now is None else now
    async with engine.connect() as conn:
        _, roles = await _grantable_roles(conn, principal)
        grant = Principal(
            tenant=principal.tenant,
            user=principal.user,
            roles=roles,
            models=principal.models,
            key_id=principal.key_id,
        )
        return await _sign(
            conn, settings, grant, _client_id(principal, client_id), scope, None, now
        )


async def _new_refresh_token(
    conn: AsyncConnection, family_id: str, settings: IdentitySettings, now: float
) -> str:
    token = REFRESH_PREFIX + secrets.token_urlsafe(32)
    await conn.execute(
        refresh_tokens.insert().values(
            token_hash=_hash(token),
            family_id=family_id,
            created_at=now,
            expires_at=now + settings.refresh_ttl,
        )
    )
    return token


async def issue_tokens(
    engine: AsyncEngine,
    settings: IdentitySettings,
    principal: Principal,
    client_id: str | None = None,
    scope: str = "",
    now: float | None = None,
) -> TokenPair:
    """Start a refresh family: an access token plus the first refresh token."""
    now = time.time() if now is None else now
    family_id = uuid.uuid4().hex
    client = _client_id(principal, client_id)
    async with engine.begin() as conn:
        _, roles = await _grantable_roles(conn, principal)
        await conn.execute(
            token_families.insert().values(
                id=family_id,
                tenant_id=principal.tenant,
                user_id=principal.user,
                key_id=principal.key_id,
                client_id=client,
                roles=list(roles),
                models=None if principal.models is None else list(principal.models),
                scope=scope,
                created_at=now,
            )
        )
        grant = Principal(
            tenant=principal.tenant,
            user=principal.user,
            roles=roles,
            models=principal.models,
            key_id=principal.key_id,
        )
        access = await _sign(conn, settings, grant, client, scope, family_id, now)
        refresh_token = await _new_refresh_token(conn, family_id, settings, now)
    return TokenPair(
        access_token=access.token,
        refresh_token=refresh_token,
        jti=access.jti,
        session=family_id,
        expires_at=access.expires_at,
    )


async def refresh(
    engine: AsyncEngine,
    settings: IdentitySettings,
    refresh_token: str,
    now: float | None = None,
) -> TokenPair:
    """Exchange a refresh token for a new pair; the presented token is spent.

    Roles are re-checked against the user's current roles (a role removed since login is
    dropped), and a family started from an API key ends when that key is revoked or expires.
    """
    now = time.time() if now is None else now
    failure: InvalidRefreshToken | None = None
    pair: TokenPair | None = None
    async with engine.begin() as conn:
        query = (
            sa.select(
                refresh_tokens.c.token_hash,
                refresh_tokens.c.expires_at,
                token_families,
            )
            .join(token_families, token_families.c.id == refresh_tokens.c.family_id)
            .where(refresh_tokens.c.token_hash == _hash(refresh_token))
        )
        row = (await conn.execute(query)).first()
        if row is None:
            raise UnknownRefreshToken("unknown refresh token")
        # Touching the family row serialises every exchange and revocation of this family.
        touched = await conn.execute(
            token_families.update()
            .where(token_families.c.id == row.id, token_families.c.revoked_at.is_(None))
            .values(last_used_at=now)
        )
        spent = await conn.execute(
            refresh_tokens.update()
            .where(
                refresh_tokens.c.token_hash == row.token_hash,
                refresh_tokens.c.used_at.is_(None),
            )
            .values(used_at=now)
        )
        if touched.rowcount != 1:
            failure = RefreshTokenRevoked("this refresh token's session was revoked")
        elif spent.rowcount != 1:
            await revoke_family(conn, row.id, settings, now)
            failure = RefreshTokenReused("refresh token reused; its session is revoked")
        elif row.expires_at <= now:
            failure = RefreshTokenExpired("refresh token expired")
        else:
            failure = await _still_granted(conn, row, now)
            if failure is not None:
                await revoke_family(conn, row.id, settings, now)
            else:
                pair = await _next_pair(conn, settings, row, now)
    if failure is not None:
        raise failure
    assert pair is not None
    return pair


async def _still_granted(
    conn: AsyncConnection, family: sa.Row, now: float
) -> InvalidRefreshToken | None:
    user = await load_user(conn, family.tenant_id, family.user_id)
    if user is None:
        return RefreshTokenRevoked("the session's user no longer exists")
    if family.key_id is not None:
        query = sa.select(api_keys).where(api_keys.c.id == family.key_id)
        key = (await conn.execute(query)).first()
        if key is None:
            return RefreshTokenRevoked("the session's API key no longer exists")
        try:
            check_usable(key_info(key), now)
        except InvalidApiKey as exc:
            return RefreshTokenRevoked(f"the session's API key is no longer valid: {exc}")
    return None


async def _next_pair(
    conn: AsyncConnection, settings: IdentitySettings, family: sa.Row, now: float
) -> TokenPair:
    user = await load_user(conn, family.tenant_id, family.user_id)
    assert user is not None
    roles = tuple(r for r in family.roles if r in user.roles)
    grant = Principal(
        tenant=family.tenant_id,
        user=family.user_id,
        roles=roles,
        models=None if family.models is None else tuple(family.models),
        key_id=family.key_id,
    )
    access = await _sign(conn, settings, grant, family.client_id, family.scope, family.id, now)
    refresh_token = await _new_refresh_token(conn, family.id, settings, now)
    return TokenPair(
        access_token=access.token,
        refresh_token=refresh_token,
        jti=access.jti,
        session=family.id,
        expires_at=access.expires_at,
    )
