"""Issuing access tokens (RFC 9068 JWTs) and rotating refresh tokens.

A refresh token is opaque and good for one exchange. Its holder (the gateway) makes it and sends
only its SHA-256, so the token itself is neither stored nor seen on the bus; each exchange names
the hash of the next token and marks the presented one used. Tokens descending from one login
form a *family* (its id is the access tokens' ``sid``). When a used token is presented again,
someone holds a copy, and there is no telling whether it is the thief or the owner — so the
whole family is revoked: the newest refresh token stops working and the family's access tokens
are refused by the gateways.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import jwt
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from handlers.identity.api_keys import check_hash, check_usable, key_info
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

# One API area (or ``*``) per entry; the claim joins them with spaces, so no whitespace inside.
SCOPE_ENTRY = re.compile(r"[A-Za-z0-9*][A-Za-z0-9_.:*-]{0,63}")


def check_scope(scope: Iterable[str]) -> tuple[str, ...]:
    """Validated, de-duplicated and sorted; empty means every area the roles allow."""
    checked = sorted(set(scope))
    for entry in checked:
        if not isinstance(entry, str) or not SCOPE_ENTRY.fullmatch(entry):
            raise InvalidInput(f"invalid scope entry {entry!r}")
    return tuple(checked)


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    jti: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Issued:
    """An access token of a refresh family (``session``) and whom it speaks for."""

    access_token: str
    jti: str
    session: str
    expires_at: float
    tenant: str
    user: str
    scope: tuple[str, ...]


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


async def _insert_refresh_token(
    conn: AsyncConnection,
    family_id: str,
    token_hash: str,
    settings: IdentitySettings,
    now: float,
) -> None:
    taken = sa.select(refresh_tokens.c.token_hash).where(refresh_tokens.c.token_hash == token_hash)
    if (await conn.execute(taken)).first() is not None:
        raise InvalidInput("that refresh token is already in use; make a new one")
    await conn.execute(
        refresh_tokens.insert().values(
            token_hash=token_hash,
            family_id=family_id,
            created_at=now,
            expires_at=now + settings.refresh_ttl,
        )
    )


def _issued(access: AccessToken, principal: Principal, scope: str, session: str) -> Issued:
    return Issued(
        access_token=access.token,
        jti=access.jti,
        session=session,
        expires_at=access.expires_at,
        tenant=principal.tenant,
        user=principal.user,
        scope=tuple(scope.split()),
    )


async def _family_of(
    conn: AsyncConnection, token_hash: str, tenant: str | None = None
) -> sa.Row | None:
    query = (
        sa.select(token_families)
        .join(refresh_tokens, refresh_tokens.c.family_id == token_families.c.id)
        .where(refresh_tokens.c.token_hash == token_hash)
    )
    if tenant is not None:
        query = query.where(token_families.c.tenant_id == tenant)
    return (await conn.execute(query)).first()


async def issue_tokens(
    engine: AsyncEngine,
    settings: IdentitySettings,
    principal: Principal,
    refresh_sha256: str,
    client_id: str | None = None,
    scope: str = "",
    now: float | None = None,
) -> Issued:
    """Start a refresh family whose first refresh token hashes to ``refresh_sha256`` (the
    caller made the token and keeps it), and sign its first access token.

    The hash is the idempotency key: asked again for the same principal and hash (a redelivered
    command), the same family signs a fresh access token instead of starting a second family.
    """
    now = time.time() if now is None else now
    check_hash(refresh_sha256, "refresh_sha256")
    client = _client_id(principal, client_id)
    for _ in range(2):
        try:
            async with engine.begin() as conn:
                _, roles = await _grantable_roles(conn, principal)
                grant = replace(principal, roles=roles)
                family = await _family_of(conn, refresh_sha256)
                if family is not None:
                    return await _issue_again(conn, settings, grant, family, now)
                family_id = uuid.uuid4().hex
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
                await _insert_refresh_token(conn, family_id, refresh_sha256, settings, now)
                access = await _sign(conn, settings, grant, client, scope, family_id, now)
                return _issued(access, grant, scope, family_id)
        except IntegrityError:
            continue  # the same family was started concurrently (a redelivery): use it
    raise InvalidInput("that refresh token is already in use; make a new one")


async def _issue_again(
    conn: AsyncConnection,
    settings: IdentitySettings,
    principal: Principal,
    family: sa.Row,
    now: float,
) -> Issued:
    same = (family.tenant_id, family.user_id, family.key_id) == (
        principal.tenant,
        principal.user,
        principal.key_id,
    )
    if not same:
        raise InvalidInput("that refresh token is already in use; make a new one")
    if family.revoked_at is not None:
        raise RefreshTokenRevoked("this refresh token's session was revoked")
    return await _next_access(conn, settings, family, now)


async def refresh(
    engine: AsyncEngine,
    settings: IdentitySettings,
    refresh_sha256: str,
    new_refresh_sha256: str,
    now: float | None = None,
    command_id: str | None = None,
    tenant: str | None = None,
) -> Issued:
    """Spend the refresh token hashing to ``refresh_sha256``: ``new_refresh_sha256`` becomes
    the family's current token, and a new access token is signed.

    A token presented after it was spent is reuse and revokes the family — unless it is the
    same exchange again (``command_id`` or ``new_refresh_sha256`` as recorded with the
    rotation): a redelivered command gets a fresh access token for the family, not a revocation.
    Roles are re-checked against the user's current roles (a role removed since login is
    dropped), and a family started from an API key ends when that key is revoked or expires.
    With ``tenant``, a token of another tenant is unknown.
    """
    now = time.time() if now is None else now
    check_hash(new_refresh_sha256, "new_refresh_sha256")
    failure: InvalidRefreshToken | None = None
    issued: Issued | None = None
    async with engine.begin() as conn:
        family = await _family_of(conn, refresh_sha256, tenant)
        if family is None:
            raise UnknownRefreshToken("unknown refresh token")
        # Touching the family row serialises every exchange and revocation of this family, so
        # the token is read below only once no other exchange of it is in flight.
        touched = await conn.execute(
            token_families.update()
            .where(token_families.c.id == family.id, token_families.c.revoked_at.is_(None))
            .values(last_used_at=now)
        )
        query = sa.select(refresh_tokens).where(refresh_tokens.c.token_hash == refresh_sha256)
        token = (await conn.execute(query)).one()
        repeated = token.used_at is not None and (
            (command_id is not None and token.rotated_by == command_id)
            or token.successor == new_refresh_sha256
        )
        if touched.rowcount != 1:
            failure = RefreshTokenRevoked("this refresh token's session was revoked")
        elif token.used_at is not None and not repeated:
            await revoke_family(conn, family.id, settings, now)
            failure = RefreshTokenReused("refresh token reused; its session is revoked")
        elif not repeated and token.expires_at <= now:
            failure = RefreshTokenExpired("refresh token expired")
        else:
            failure = await _still_granted(conn, family, now)
            if failure is not None:
                await revoke_family(conn, family.id, settings, now)
            elif repeated:
                issued = await _next_access(conn, settings, family, now)
            else:
                await _insert_refresh_token(conn, family.id, new_refresh_sha256, settings, now)
                await conn.execute(
                    refresh_tokens.update()
                    .where(refresh_tokens.c.token_hash == refresh_sha256)
                    .values(used_at=now, rotated_by=command_id, successor=new_refresh_sha256)
                )
                issued = await _next_access(conn, settings, family, now)
    if failure is not None:
        raise failure
    assert issued is not None
    return issued


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


async def _next_access(
    conn: AsyncConnection, settings: IdentitySettings, family: sa.Row, now: float
) -> Issued:
    """A new access token of the family, with the roles its user still holds."""
    user = await load_user(conn, family.tenant_id, family.user_id)
    if user is None:
        raise RefreshTokenRevoked("the session's user no longer exists")
    roles = tuple(r for r in family.roles if r in user.roles)
    grant = Principal(
        tenant=family.tenant_id,
        user=family.user_id,
        roles=roles,
        models=None if family.models is None else tuple(family.models),
        key_id=family.key_id,
    )
    access = await _sign(conn, settings, grant, family.client_id, family.scope, family.id, now)
    return _issued(access, grant, family.scope, family.id)
