"""Tenants and their users, each user holding a set of role names."""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from handlers.identity.errors import AlreadyExists, Forbidden, InvalidInput, NotFound
from handlers.identity.tables import tenants, users
from schemas.durations import BadDuration, duration_seconds
from schemas.identity import KNOWN_ROLES

# A tenant id is a NATS subject token (soma.cmd.<tenant>.…): no dots, wildcards or spaces.
TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# Roles travel space-separated in ``scope``-like places, so no whitespace.
ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
# Roles that reach beyond one tenant (operators create and list tenants): a tenant's admin
# must not be able to hand them out, only someone who holds them already.
OPERATOR = "operator"
PRIVILEGED_ROLES = frozenset({OPERATOR})


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    """At most ``max_budget`` USD per window of ``budget_duration`` from ``budget_start``."""

    max_budget: float
    budget_duration: str | None
    budget_start: float


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    created_at: float
    budget: BudgetLimit | None = None


def check_budget(max_budget: float | None, budget_duration: str | None) -> None:
    """A budget is a non-negative amount of USD; a duration means nothing without one."""
    if max_budget is not None:
        if isinstance(max_budget, bool) or not isinstance(max_budget, int | float):
            raise InvalidInput("max_budget must be a number of US dollars")
        if not math.isfinite(max_budget) or max_budget < 0:
            raise InvalidInput("max_budget must be zero or more US dollars")
    if budget_duration is not None:
        if max_budget is None:
            raise InvalidInput("budget_duration needs a max_budget to reset")
        try:
            duration_seconds(budget_duration)
        except BadDuration as exc:
            raise InvalidInput(f"budget_duration: {exc}") from None


def budget_of(row: sa.Row) -> BudgetLimit | None:
    """The budget columns of a tenant or key row."""
    if row.max_budget is None:
        return None
    return BudgetLimit(
        max_budget=row.max_budget,
        budget_duration=row.budget_duration,
        budget_start=row.budget_start or 0.0,
    )


@dataclass(frozen=True, slots=True)
class User:
    id: str
    tenant: str
    name: str
    roles: tuple[str, ...]
    created_at: float


def check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """Validated, de-duplicated and sorted, so stored and compared sets read the same."""
    checked = sorted(set(roles))
    for role in checked:
        if not isinstance(role, str) or not ROLE.fullmatch(role):
            raise InvalidInput(f"invalid role name {role!r}; choose from {', '.join(KNOWN_ROLES)}")
        if role not in KNOWN_ROLES:
            raise InvalidInput(f"unknown role {role!r}; choose from {', '.join(KNOWN_ROLES)}")
    return tuple(checked)


def check_grantable(roles: Iterable[str], grantor_roles: Iterable[str]) -> None:
    """Refuse to grant a privileged role the grantor does not hold."""
    beyond = sorted((set(roles) & PRIVILEGED_ROLES) - set(grantor_roles))
    if beyond:
        raise Forbidden(f"only a holder of the {', '.join(beyond)} role may grant it")


def _tenant(row: sa.Row) -> Tenant:
    return Tenant(id=row.id, name=row.name, created_at=row.created_at, budget=budget_of(row))


def _user(row: sa.Row) -> User:
    return User(
        id=row.id,
        tenant=row.tenant_id,
        name=row.name,
        roles=tuple(row.roles),
        created_at=row.created_at,
    )


async def insert_tenant(
    conn: AsyncConnection,
    tenant_id: str,
    name: str | None,
    now: float,
    created_by: str | None = None,
) -> Tenant:
    if not TENANT_ID.fullmatch(tenant_id):
        raise InvalidInput(f"invalid tenant id {tenant_id!r} (expected [a-z0-9][a-z0-9_-]*)")
    if name is not None and len(name) > 200:
        raise InvalidInput("a tenant name is at most 200 characters")
    tenant = Tenant(id=tenant_id, name=name or tenant_id, created_at=now)
    await conn.execute(
        tenants.insert().values(
            id=tenant.id, name=tenant.name, created_at=tenant.created_at, created_by=created_by
        )
    )
    return tenant


async def insert_user(
    conn: AsyncConnection,
    tenant: str,
    name: str,
    roles: Iterable[str],
    now: float,
    created_by: str | None = None,
) -> User:
    if not name or len(name) > 200:
        raise InvalidInput("a user name is 1 to 200 characters")
    user = User(
        id=uuid.uuid4().hex, tenant=tenant, name=name, roles=check_roles(roles), created_at=now
    )
    await conn.execute(
        users.insert().values(
            id=user.id,
            tenant_id=user.tenant,
            name=user.name,
            roles=list(user.roles),
            created_at=user.created_at,
            created_by=created_by,
        )
    )
    return user


async def load_tenant(conn: AsyncConnection, tenant_id: str) -> Tenant | None:
    row = (await conn.execute(sa.select(tenants).where(tenants.c.id == tenant_id))).first()
    return _tenant(row) if row else None


async def load_user(conn: AsyncConnection, tenant: str, user_id: str) -> User | None:
    query = sa.select(users).where(users.c.id == user_id, users.c.tenant_id == tenant)
    row = (await conn.execute(query)).first()
    return _user(row) if row else None


async def load_user_by_name(conn: AsyncConnection, tenant: str, name: str) -> User | None:
    query = sa.select(users).where(users.c.tenant_id == tenant, users.c.name == name)
    row = (await conn.execute(query)).first()
    return _user(row) if row else None


async def create_tenant(
    engine: AsyncEngine,
    tenant_id: str,
    name: str | None = None,
    now: float | None = None,
    created_by: str | None = None,
) -> Tenant:
    """A new tenant; ``created_by`` (a command id) makes a repeat of that command a no-op that
    returns the tenant again instead of a conflict."""
    try:
        async with engine.begin() as conn:
            return await insert_tenant(
                conn, tenant_id, name, time.time() if now is None else now, created_by
            )
    except IntegrityError as exc:
        async with engine.connect() as conn:
            query = sa.select(tenants).where(tenants.c.id == tenant_id)
            row = (await conn.execute(query)).first()
        if row is not None and created_by is not None and row.created_by == created_by:
            return _tenant(row)
        raise AlreadyExists(f"tenant {tenant_id!r} exists") from exc


async def list_tenants(engine: AsyncEngine) -> list[Tenant]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(tenants).order_by(tenants.c.id))
        return [_tenant(r) for r in rows]


async def get_tenant(engine: AsyncEngine, tenant_id: str) -> Tenant:
    async with engine.connect() as conn:
        tenant = await load_tenant(conn, tenant_id)
    if tenant is None:
        raise NotFound(f"no tenant {tenant_id!r}")
    return tenant


async def create_user(
    engine: AsyncEngine,
    tenant: str,
    name: str,
    roles: Iterable[str] = (),
    now: float | None = None,
    created_by: str | None = None,
    grantor_roles: Iterable[str] | None = None,
) -> User:
    """A new user; a repeat of the command ``created_by`` returns the same user again.

    ``grantor_roles``: the roles of whoever asks (None: unchecked, for operators at the console).
    """
    if grantor_roles is not None:
        check_grantable(check_roles(roles), grantor_roles)
    try:
        async with engine.begin() as conn:
            if await load_tenant(conn, tenant) is None:
                raise NotFound(f"no tenant {tenant!r}")
            return await insert_user(
                conn, tenant, name, roles, time.time() if now is None else now, created_by
            )
    except IntegrityError as exc:
        async with engine.connect() as conn:
            query = sa.select(users).where(users.c.tenant_id == tenant, users.c.name == name)
            row = (await conn.execute(query)).first()
        if row is not None and created_by is not None and row.created_by == created_by:
            return _user(row)
        raise AlreadyExists(f"user {name!r} exists in tenant {tenant!r}") from exc


async def roles_of(engine: AsyncEngine, tenant: str, user_id: str) -> tuple[str, ...]:
    """The roles of a user of ``tenant``; none for anyone else (an unknown actor grants none)."""
    async with engine.connect() as conn:
        user = await load_user(conn, tenant, user_id)
    return user.roles if user is not None else ()


async def actor_roles(engine: AsyncEngine, tenant: str, actor: str) -> tuple[str, ...]:
    """The roles ``actor`` acts with in ``tenant``: its own there, or — for an operator of
    another tenant, who manages every tenant — its roles at home. Anyone else holds none."""
    async with engine.connect() as conn:
        user = await load_user(conn, tenant, actor)
        if user is not None:
            return user.roles
        row = (await conn.execute(sa.select(users).where(users.c.id == actor))).first()
    if row is not None and OPERATOR in row.roles:
        return tuple(row.roles)
    return ()


async def list_users(engine: AsyncEngine, tenant: str) -> list[User]:
    async with engine.connect() as conn:
        query = sa.select(users).where(users.c.tenant_id == tenant).order_by(users.c.name)
        return [_user(r) for r in await conn.execute(query)]


async def get_user(engine: AsyncEngine, tenant: str, user_id: str) -> User:
    async with engine.connect() as conn:
        user = await load_user(conn, tenant, user_id)
    if user is None:
        raise NotFound(f"no user {user_id!r} in tenant {tenant!r}")
    return user


async def set_tenant_budget(
    engine: AsyncEngine,
    tenant_id: str,
    max_budget: float | None,
    budget_duration: str | None,
    now: float,
) -> Tenant:
    """Set (``max_budget`` None: remove) the tenant's budget. A budget that differs from the
    stored one starts its first window ``now``; the same one again changes nothing, so a
    redelivered command does not restart the window."""
    check_budget(max_budget, budget_duration)
    async with engine.begin() as conn:
        row = (await conn.execute(sa.select(tenants).where(tenants.c.id == tenant_id))).first()
        if row is None:
            raise NotFound(f"no tenant {tenant_id!r}")
        if (row.max_budget, row.budget_duration) != (max_budget, budget_duration):
            start = None if max_budget is None else now
            await conn.execute(
                tenants.update()
                .where(tenants.c.id == tenant_id)
                .values(max_budget=max_budget, budget_duration=budget_duration, budget_start=start)
            )
        tenant = await load_tenant(conn, tenant_id)
    assert tenant is not None
    return tenant
