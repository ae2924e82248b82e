"""Whose memories a command may reach, decided where the memories are.

The gateway and the sagas already name the caller's own user; this is the check that holds even
when they did not: a role the tenant grants tenant-wide memory (``kernel.grants``) reaches any user
of the tenant, every other role only its own — the user the envelope says the command acts for.
"""

from __future__ import annotations

import logging

from kernel.grants import MEMORY_OTHER_USER, GrantStore, MemoryGrants, PolicyError

log = logging.getLogger(__name__)


class OtherUser(PermissionError):
    """The command names a user its caller's role may not reach."""


def grants_of(store: GrantStore, tenant: str) -> MemoryGrants:
    """The tenant's memory grants; a policy that does not load grants nothing."""
    try:
        return store.get(tenant).memory
    except PolicyError as exc:
        log.warning("memory of tenant %s kept to each caller's own: %s", tenant, exc)
        return MemoryGrants()


def whose(grants: MemoryGrants, actor: str, role: str | None, user: str | None) -> str | None:
    """The user to scope to (None: every user of the tenant), or ``OtherUser``.

    ``user=None`` reaches as far as the role does: the whole tenant for a tenant-wide role, the
    caller's own memories for any other.
    """
    if grants.tenant_wide(role):
        return user
    if user is None or user == actor:
        return actor
    raise OtherUser(
        f"{MEMORY_OTHER_USER}: role {role!r} may reach only its own user's memories, "
        f"not those of {user!r}"
    )
