"""API keys: ``sk-soma-<id>-<secret>``, shown once, stored as a SHA-256 of the secret.

The secret is 256 random bits, so a plain hash is enough (no password stretching needed), and
the id prefix makes lookup an indexed primary-key read followed by one constant-time comparison.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from handlers.identity.config import IdentitySettings
from handlers.identity.directory import (
    BudgetLimit,
    budget_of,
    check_budget,
    check_grantable,
    check_roles,
    load_user,
)
from handlers.identity.errors import (
    AlreadyExists,
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
KEY_ID = re.compile(r"[0-9a-f]{16}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Compared against when the id is unknown, so a miss costs the same as a wrong secret.
_NO_SUCH_HASH = hashlib.sha256(b"no such key").hexdigest()
# Metadata is for labels (team, purpose), not documents.
METADATA_MAX_BYTES = 4096
# What ``update_api_key`` may change or clear; roles never widen after issue, so not them.
UPDATABLE = frozenset(
    {
        "name",
        "models",
        "expires_at",
        "max_budget",
        "budget_duration",
        "rpm_limit",
        "tpm_limit",
        "metadata",
    }
)


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """What a key may spend and how fast: USD per window, requests and tokens per minute."""

    max_budget: float | None = None
    budget_duration: str | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


def check_limits(limits: KeyLimits) -> None:
    check_budget(limits.max_budget, limits.budget_duration)
    for name in ("rpm_limit", "tpm_limit"):
        value = getattr(limits, name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise InvalidInput(f"{name} must be a whole number of at least 1 (or no limit)")
    if not isinstance(limits.metadata, Mapping):
        raise InvalidInput("metadata must be an object of labels")
    if len(json.dumps(dict(limits.metadata), default=str)) > METADATA_MAX_BYTES:
        raise InvalidInput(f"metadata is at most {METADATA_MAX_BYTES} bytes as JSON")


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
    budget: BudgetLimit | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

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
        budget=budget_of(row),
        rpm_limit=row.rpm_limit,
        tpm_limit=row.tpm_limit,
        metadata=dict(row.key_metadata or {}),
    )


def check_hash(value: str, what: str) -> str:
    """A SHA-256 as the gateway sends it: 64 lower-case hex digits."""
    if not isinstance(value, str) or not SHA256_HEX.fullmatch(value):
        raise InvalidInput(f"{what} must be a SHA-256 as 64 lower-case hex digits")
    return value


async def _grant(
    conn: AsyncConnection,
    tenant: str,
    user_id: str,
    roles: Iterable[str] | None,
    models: Iterable[str] | None,
    expires_at: float | None,
    now: float,
    grantor_roles: Iterable[str] | None,
) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """The roles and models a new key of this user may carry, or why not."""
    user = await load_user(conn, tenant, user_id)
    if user is None:
        raise NotFound(f"no user {user_id!r} in tenant {tenant!r}")
    granted = user.roles if roles is None else check_roles(roles)
    if not set(granted) <= set(user.roles):
        extra = sorted(set(granted) - set(user.roles))
        raise InvalidInput(f"a key cannot carry roles its user lacks: {extra}")
    if grantor_roles is not None:
        check_grantable(granted, grantor_roles)
    allowed = None if models is None else tuple(sorted(set(models)))
    if allowed is not None and not all(isinstance(m, str) and m for m in allowed):
        raise InvalidInput("model names must be non-empty strings")
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("expires_at is in the past")
    return granted, allowed


def _limited(info: ApiKeyInfo, limits: KeyLimits, now: float) -> ApiKeyInfo:
    """``info`` carrying ``limits``; a budget's first window starts ``now``."""
    check_limits(limits)
    budget = (
        None
        if limits.max_budget is None
        else BudgetLimit(float(limits.max_budget), limits.budget_duration, now)
    )
    return ApiKeyInfo(
        id=info.id,
        tenant=info.tenant,
        user=info.user,
        name=info.name,
        roles=info.roles,
        models=info.models,
        created_at=info.created_at,
        expires_at=info.expires_at,
        revoked_at=info.revoked_at,
        budget=budget,
        rpm_limit=limits.rpm_limit,
        tpm_limit=limits.tpm_limit,
        metadata=dict(limits.metadata),
    )


def _limit_columns(info: ApiKeyInfo) -> dict[str, Any]:
    budget = info.budget
    return {
        "max_budget": None if budget is None else budget.max_budget,
        "budget_duration": None if budget is None else budget.budget_duration,
        "budget_start": None if budget is None else budget.budget_start,
        "rpm_limit": info.rpm_limit,
        "tpm_limit": info.tpm_limit,
        "key_metadata": dict(info.metadata) or None,
    }


async def _insert(conn: AsyncConnection, info: ApiKeyInfo, secret_sha256: str) -> None:
    await conn.execute(
        api_keys.insert().values(
            id=info.id,
            tenant_id=info.tenant,
            user_id=info.user,
            name=info.name,
            secret_hash=secret_sha256,
            roles=list(info.roles),
            models=None if info.models is None else list(info.models),
            created_at=info.created_at,
            expires_at=info.expires_at,
            **_limit_columns(info),
        )
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
    limits: KeyLimits | None = None,
) -> IssuedApiKey:
    """Generate a key here (for callers that show it themselves: the CLI, bootstrap)."""
    if len(name) > 200:
        raise InvalidInput("a key name is at most 200 characters")
    granted, allowed = await _grant(conn, tenant, user_id, roles, models, expires_at, now, None)
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
    info = _limited(info, limits or KeyLimits(), now)
    await _insert(conn, info, hash_secret(secret))
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
    limits: KeyLimits | None = None,
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
            limits,
        )


async def record_api_key(
    engine: AsyncEngine,
    tenant: str,
    user_id: str,
    key_id: str,
    secret_sha256: str,
    name: str = "",
    roles: Iterable[str] | None = None,
    models: Iterable[str] | None = None,
    expires_at: float | None = None,
    now: float | None = None,
    grantor_roles: Iterable[str] | None = None,
    limits: KeyLimits | None = None,
) -> ApiKeyInfo:
    """Keep a key generated elsewhere (the gateway), of which only the secret's hash is sent.

    The key id is the idempotency key: recording the same key (same tenant, user and hash)
    again returns it as it is now, so a redelivered command gets the same answer; the id held
    by any other key is a conflict. ``grantor_roles``: the roles of whoever asks, who may not
    hand out a privileged role they lack (None: no such check, for operators at the console).
    """
    now = time.time() if now is None else now
    if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
        raise InvalidInput("a key id is 16 lower-case hex digits")
    check_hash(secret_sha256, "secret_sha256")
    if len(name) > 200:
        raise InvalidInput("a key name is at most 200 characters")
    for _ in range(2):
        try:
            async with engine.begin() as conn:
                query = sa.select(api_keys).where(api_keys.c.id == key_id)
                row = (await conn.execute(query)).first()
                if row is not None:
                    same = (row.tenant_id, row.user_id) == (tenant, user_id)
                    if not (same and hmac.compare_digest(row.secret_hash, secret_sha256)):
                        raise AlreadyExists(f"API key id {key_id} is taken")
                    return key_info(row)
                granted, allowed = await _grant(
                    conn, tenant, user_id, roles, models, expires_at, now, grantor_roles
                )
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
                info = _limited(info, limits or KeyLimits(), now)
                await _insert(conn, info, secret_sha256)
                return info
        except IntegrityError:
            continue  # recorded concurrently (a redelivery raced us): read it back
    raise AlreadyExists(f"API key id {key_id} is taken")


async def find_api_key(engine: AsyncEngine, key_id: str) -> ApiKeyInfo | None:
    """A key by id in whichever tenant holds it (for operators, who act across tenants)."""
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).first()
    return key_info(row) if row is not None else None


async def get_api_key(engine: AsyncEngine, tenant: str, key_id: str) -> ApiKeyInfo:
    """A key of ``tenant``; another tenant's key is as unknown as a missing one."""
    async with engine.connect() as conn:
        query = sa.select(api_keys).where(api_keys.c.id == key_id, api_keys.c.tenant_id == tenant)
        row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"no API key {key_id!r} in tenant {tenant!r}")
    return key_info(row)


async def update_api_key(
    engine: AsyncEngine,
    tenant: str,
    key_id: str,
    changes: Mapping[str, Any],
    clear: Iterable[str] = (),
    now: float | None = None,
) -> ApiKeyInfo:
    """Change a key's limits in place; its secret, user and roles stay.

    ``changes`` sets fields, ``clear`` removes them (no limit, every model, no expiry). A
    budget whose amount or duration changes starts a new window at ``now``; setting the same
    values again changes nothing, so a redelivered command leaves the key as the first did.
    A revoked key is not changed (a conflict): it will never be used again.
    """
    now = time.time() if now is None else now
    cleared = set(clear)
    unknown = sorted((set(changes) | cleared) - UPDATABLE)
    if unknown:
        raise InvalidInput(
            f"cannot change {', '.join(unknown)}; choose from {', '.join(sorted(UPDATABLE))}"
        )
    both = sorted(set(changes) & cleared)
    if both:
        raise InvalidInput(f"{', '.join(both)}: both set and cleared")
    async with engine.begin() as conn:
        query = sa.select(api_keys).where(api_keys.c.id == key_id, api_keys.c.tenant_id == tenant)
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"no API key {key_id!r} in tenant {tenant!r}")
        if row.revoked_at is not None:
            raise AlreadyExists(f"API key {key_id} is revoked; make a new key instead")
        current = key_info(row)
        budget = current.budget
        wanted: dict[str, Any] = {
            "name": current.name,
            "models": current.models,
            "expires_at": current.expires_at,
            "max_budget": None if budget is None else budget.max_budget,
            "budget_duration": None if budget is None else budget.budget_duration,
            "rpm_limit": current.rpm_limit,
            "tpm_limit": current.tpm_limit,
            "metadata": dict(current.metadata),
        }
        wanted.update(changes)
        for name in cleared:
            wanted[name] = {} if name == "metadata" else "" if name == "name" else None
        if wanted["max_budget"] is None:
            wanted["budget_duration"] = None
        if not isinstance(wanted["name"], str) or len(wanted["name"]) > 200:
            raise InvalidInput("a key name is at most 200 characters")
        models = wanted["models"]
        if models is not None:
            if not all(isinstance(m, str) and m for m in models):
                raise InvalidInput("model names must be non-empty strings")
            models = tuple(sorted(set(models)))
        if "expires_at" in changes and wanted["expires_at"] is not None:
            if wanted["expires_at"] <= now:
                raise InvalidInput("expires_at is in the past")
        limits = KeyLimits(
            max_budget=wanted["max_budget"],
            budget_duration=wanted["budget_duration"],
            rpm_limit=wanted["rpm_limit"],
            tpm_limit=wanted["tpm_limit"],
            metadata=wanted["metadata"],
        )
        check_limits(limits)
        same_budget = budget is not None and (budget.max_budget, budget.budget_duration) == (
            limits.max_budget,
            limits.budget_duration,
        )
        start = budget.budget_start if same_budget and budget is not None else now
        updated = ApiKeyInfo(
            id=current.id,
            tenant=current.tenant,
            user=current.user,
            name=wanted["name"],
            roles=current.roles,
            models=models,
            created_at=current.created_at,
            expires_at=wanted["expires_at"],
            revoked_at=None,
            budget=None
            if limits.max_budget is None
            else BudgetLimit(float(limits.max_budget), limits.budget_duration, start),
            rpm_limit=limits.rpm_limit,
            tpm_limit=limits.tpm_limit,
            metadata=dict(limits.metadata),
        )
        await conn.execute(
            api_keys.update()
            .where(api_keys.c.id == key_id)
            .values(
                name=updated.name,
                models=None if models is None else list(models),
                expires_at=updated.expires_at,
                **_limit_columns(updated),
            )
        )
    return updated


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


async def check_api_key(
    engine: AsyncEngine,
    key_id: str,
    secret_sha256: str,
    now: float | None = None,
    tenant: str | None = None,
) -> ApiKeyInfo:
    """The key whose secret hashes to ``secret_sha256``, or a typed ``InvalidApiKey``.

    Revoked / expired are only reported to someone holding the right secret; every other
    failure (including a key of a tenant other than ``tenant``, when given) is
    ``UnknownApiKey``.
    """
    now = time.time() if now is None else now
    row = None
    if isinstance(key_id, str) and KEY_ID.fullmatch(key_id):
        async with engine.connect() as conn:
            query = sa.select(api_keys).where(api_keys.c.id == key_id)
            row = (await conn.execute(query)).first()
    stored = row.secret_hash if row is not None else _NO_SUCH_HASH
    presented = secret_sha256 if isinstance(secret_sha256, str) else ""
    matches = hmac.compare_digest(stored.encode(), presented.encode())
    if row is None or not matches or (tenant is not None and row.tenant_id != tenant):
        raise UnknownApiKey("unknown API key")
    info = key_info(row)
    check_usable(info, now)
    return info


def principal_of(info: ApiKeyInfo) -> Principal:
    return Principal(
        tenant=info.tenant, user=info.user, roles=info.roles, models=info.models, key_id=info.id
    )


async def verify_api_key(engine: AsyncEngine, key: str, now: float | None = None) -> Principal:
    """The principal a presented key ``sk-soma-<id>-<secret>`` speaks for, or ``InvalidApiKey``."""
    match = KEY.fullmatch(key)
    if match is None:
        raise UnknownApiKey("not a Soma API key")
    key_id, secret = match.groups()
    return principal_of(await check_api_key(engine, key_id, hash_secret(secret), now))
