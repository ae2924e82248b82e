"""First start: a ``default`` tenant with an ``admin`` user, and one API key to log in with."""

from __future__ import annotations

import time

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.identity.api_keys import IssuedApiKey, insert_api_key
from handlers.identity.directory import (
    Tenant,
    User,
    insert_tenant,
    insert_user,
    load_tenant,
    load_user_by_name,
)

DEFAULT_TENANT = "default"
ADMIN_USER = "admin"
# The first user administers the default tenant and, as the installation's operator, may create
# the other tenants, their first users and keys (over HTTP as at the console).
ADMIN_ROLES = ("admin", "operator")


async def bootstrap(
    engine: AsyncEngine, now: float | None = None
) -> tuple[Tenant, User, IssuedApiKey | None]:
    """Idempotent: creates only what is missing, and returns a key only with a new admin.

    The key is the one way into a fresh installation, so whoever calls this must show it to the
    operator; it cannot be recovered later (only replaced through the admin functions).
    """
    now = time.time() if now is None else now
    for _ in range(3):
        try:
            async with engine.begin() as conn:
                tenant = await load_tenant(conn, DEFAULT_TENANT) or await insert_tenant(
                    conn, DEFAULT_TENANT, "Default", now
                )
                admin = await load_user_by_name(conn, DEFAULT_TENANT, ADMIN_USER)
                if admin is not None:
                    return tenant, admin, None
                admin = await insert_user(conn, DEFAULT_TENANT, ADMIN_USER, ADMIN_ROLES, now)
                key = await insert_api_key(
                    conn, DEFAULT_TENANT, admin.id, "bootstrap", None, None, None, now
                )
                return tenant, admin, key
        except IntegrityError:
            continue  # another process bootstrapped concurrently: read what it created
    raise RuntimeError("bootstrap kept conflicting with concurrent writers")
