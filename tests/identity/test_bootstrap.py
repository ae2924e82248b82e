from __future__ import annotations

from handlers.identity.api_keys import list_api_keys, verify_api_key
from handlers.identity.bootstrap import bootstrap
from handlers.identity.directory import list_tenants, list_users


async def test_bootstrap_creates_the_default_tenant_an_admin_and_a_first_key(db, now):
    tenant, admin, key = await bootstrap(db, now)

    # The first admin is the installation's operator too: it creates the other tenants.
    roles = ("admin", "operator")
    assert tenant.id == "default"
    assert (admin.tenant, admin.name, admin.roles) == ("default", "admin", roles)
    assert key is not None
    principal = await verify_api_key(db, key.key, now)
    assert (principal.tenant, principal.user, principal.roles) == ("default", admin.id, roles)


async def test_a_second_bootstrap_creates_nothing_and_returns_no_key(db, now):
    first_tenant, first_admin, _ = await bootstrap(db, now)

    tenant, admin, key = await bootstrap(db, now + 1)

    assert key is None
    assert (tenant, admin) == (first_tenant, first_admin)
    assert [t.id for t in await list_tenants(db)] == ["default"]
    assert [u.id for u in await list_users(db, "default")] == [admin.id]
    assert len(await list_api_keys(db, "default")) == 1
