"""The identity process on a real nats-server, asked exactly as the gateway asks it.

Every test runs against SQLite and PostgreSQL (the ``database_url`` parameter). The service keeps
its own engine and signing keys for the module, so these tests do not empty the tables: each one
works in a tenant of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import msgspec
import pytest

from bus import runtime
from bus.connection import connect
from bus.publish import envelope_for, publish
from bus.request import Requester
from handlers.identity.bootstrap import ADMIN_USER, DEFAULT_TENANT, bootstrap
from handlers.identity.config import IdentitySettings
from handlers.identity.errors import TokenRevoked
from handlers.identity.service import build
from handlers.identity.verify import RevocationUpdate, Verifier
from kernel.db import make_engine
from kernel.settings import Settings
from schemas.common import CommandFailed
from schemas.identity import (
    SYSTEM_TENANT,
    IdentityCreateKey,
    IdentityCreateTenant,
    IdentityCreateUser,
    IdentityGetKeyLimits,
    IdentityIssueToken,
    IdentityJwks,
    IdentityJwksPublished,
    IdentityKeyCreated,
    IdentityKeyLimitsFound,
    IdentityKeyRevoked,
    IdentityKeysListed,
    IdentityKeyVerified,
    IdentityListKeys,
    IdentityListTenants,
    IdentityListUsers,
    IdentityRefresh,
    IdentityRefreshed,
    IdentityRevocations,
    IdentityRevocationsListed,
    IdentityRevoke,
    IdentityRevoked,
    IdentityRevokeKey,
    IdentityTenantCreated,
    IdentityTenantsListed,
    IdentityTokenIssued,
    IdentityUpdateKey,
    IdentityUpdateTenant,
    IdentityUserCreated,
    IdentityUsersListed,
    IdentityVerifyKey,
)
from tests.identity.conftest import refresh_digest
from tests.servers import NatsServer, nats_server

CONFIG = IdentitySettings(
    issuer="soma",
    audience="soma-gateway",
    access_ttl=900,
    refresh_ttl=86400,
    rotate_every=86400,
    leeway=5,
    key_passphrase=None,
)
# The reply each command is answered with (or ``identity.failed``).
REPLIES: dict[type, str] = {
    IdentityVerifyKey: "identity.key_verified",
    IdentityJwks: "identity.jwks_published",
    IdentityRevocations: "identity.revocations_listed",
    IdentityIssueToken: "identity.token_issued",
    IdentityRefresh: "identity.refreshed",
    IdentityRevoke: "identity.revoked",
    IdentityCreateTenant: "identity.tenant_created",
    IdentityListTenants: "identity.tenants_listed",
    IdentityCreateUser: "identity.user_created",
    IdentityListUsers: "identity.users_listed",
    IdentityCreateKey: "identity.key_created",
    IdentityListKeys: "identity.keys_listed",
    IdentityRevokeKey: "identity.key_revoked",
    IdentityUpdateKey: "identity.key_updated",
    IdentityUpdateTenant: "identity.tenant_updated",
    IdentityGetKeyLimits: "identity.key_limits_found",
}
# Short, so a command published again with the same message id is a redelivery, not a duplicate.
DEDUP_WINDOW = 1.0


@dataclass(frozen=True)
class NewKey:
    """An API key made the way the gateway makes one: identity only ever sees the hash."""

    key_id: str
    secret: str

    @property
    def secret_sha256(self) -> str:
        return hashlib.sha256(self.secret.encode()).hexdigest()


def new_key() -> NewKey:
    return NewKey(secrets.token_hex(8), secrets.token_urlsafe(32))


@pytest.fixture(scope="module")
def bus_server() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture(scope="module")
async def requester(
    bus_server: NatsServer, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Requester]:
    settings = Settings.model_validate(
        {
            "NATS_URL": bus_server.url,
            "DATABASE_URL": database_url,
            "SOMA_DATA_DIR": tmp_path_factory.mktemp("identity-bus"),
            "SOMA_DEDUP_WINDOW": DEDUP_WINDOW,
        }
    )
    running = await runtime.start(build(settings, CONFIG), settings)
    await seed_operator(settings)
    nc = await connect(bus_server.url, "identity-test")
    caller = Requester(nc, nc.jetstream())
    await caller.start()
    yield caller
    await caller.close()
    await nc.close()
    await running.stop()


async def seed_operator(settings: Settings) -> None:
    """The installation's first operator, made as ``soma up`` makes it: tenants are created as
    this user, since identity takes a tenant only from an operator."""
    engine = make_engine(settings.resolved_database_url("identity"))
    try:
        await bootstrap(engine)
    finally:
        await engine.dispose()


async def ask(
    requester: Requester,
    command: msgspec.Struct,
    tenant: str = SYSTEM_TENANT,
    actor: str = "gateway",
    message_id: str | None = None,
) -> Any:
    """The reply's payload: the contract's event, or ``CommandFailed`` for a refusal."""
    env = envelope_for(command, tenant=tenant, actor=actor, message_id=message_id)
    expected = REPLIES[type(command)]
    async with requester.watching(env.correlation_id) as replies:
        await publish(requester.bus, command, env)
        async with asyncio.timeout(20):
            while True:
                reply = await replies.get()
                if reply.envelope.causation_id == env.message_id and reply.schema in (
                    expected,
                    "identity.failed",
                ):
                    return reply.payload


@dataclass(frozen=True)
class Member:
    tenant: str
    user: str
    key: NewKey
    admin: str  # the user id of the tenant's admin


async def operator(requester: Requester) -> str:
    """The user id of the operator ``seed_operator`` made."""
    listed = await ask(requester, IdentityListUsers(), tenant=DEFAULT_TENANT)
    assert isinstance(listed, IdentityUsersListed), listed
    return next(u.id for u in listed.users if u.name == ADMIN_USER)


async def tenant_with_admin(requester: Requester) -> tuple[str, str]:
    """A fresh tenant, made by the operator, and the user id of its admin."""
    tenant = f"t{uuid.uuid4().hex[:12]}"
    ops = await operator(requester)
    created = await ask(
        requester, IdentityCreateTenant(tenant_id=tenant), tenant=DEFAULT_TENANT, actor=ops
    )
    assert isinstance(created, IdentityTenantCreated), created
    admin = await ask(
        requester, IdentityCreateUser(name="root", roles=["admin"]), tenant=tenant, actor=ops
    )
    assert isinstance(admin, IdentityUserCreated), admin
    return tenant, admin.user.id


async def member_with_key(requester: Requester, **key_fields: Any) -> Member:
    tenant, admin = await tenant_with_admin(requester)
    user = await ask(
        requester,
        IdentityCreateUser(name="alice", roles=["member"]),
        tenant=tenant,
        actor=admin,
    )
    assert isinstance(user, IdentityUserCreated), user
    key = new_key()
    created = await ask(
        requester,
        IdentityCreateKey(
            user_id=user.user.id,
            key_id=key.key_id,
            secret_sha256=key.secret_sha256,
            **key_fields,
        ),
        tenant=tenant,
        actor=admin,
    )
    assert isinstance(created, IdentityKeyCreated), created
    return Member(tenant, user.user.id, key, admin)


async def verifier_from_identity(requester: Requester) -> Verifier:
    """A gateway's view: the key set and every revocation, fetched over the bus."""
    keys = await ask(requester, IdentityJwks())
    assert isinstance(keys, IdentityJwksPublished)
    verifier = Verifier(issuer=CONFIG.issuer, audience=CONFIG.audience, jwks={"keys": keys.keys})
    listed = await ask(requester, IdentityRevocations())
    assert isinstance(listed, IdentityRevocationsListed)
    entries = listed.revocations
    update = RevocationUpdate(
        tokens={r.subject: r.expires_at for r in entries if r.kind == "jti"},
        sessions={r.subject: r.expires_at for r in entries if r.kind == "session"},
        users={r.subject: (r.revoked_at, r.expires_at) for r in entries if r.kind == "user"},
        complete=True,
    )
    verifier.apply(update)
    return verifier


async def issue(requester: Requester, member: Member, refresh_sha256: str) -> Any:
    return await ask(
        requester,
        IdentityIssueToken(
            key_id=member.key.key_id,
            secret_sha256=member.key.secret_sha256,
            refresh_sha256=refresh_sha256,
            scope=["chat", "models"],
        ),
        tenant=member.tenant,
        actor=member.user,
    )


# API keys.


async def test_a_key_created_over_the_bus_verifies_to_its_tenant_user_and_roles(requester):
    member = await member_with_key(requester, models=["soma-local-dev"])

    verdict = await ask(
        requester,
        IdentityVerifyKey(key_id=member.key.key_id, secret_sha256=member.key.secret_sha256),
    )

    assert isinstance(verdict, IdentityKeyVerified)
    assert verdict.valid, verdict.reason
    assert (verdict.tenant, verdict.user, verdict.roles) == (member.tenant, member.user, ["member"])
    assert verdict.models == ["soma-local-dev"]


async def test_a_wrong_secret_hash_is_an_invalid_verdict_not_a_refusal(requester):
    member = await member_with_key(requester)

    verdict = await ask(
        requester,
        IdentityVerifyKey(key_id=member.key.key_id, secret_sha256=new_key().secret_sha256),
    )

    assert isinstance(verdict, IdentityKeyVerified)
    assert not verdict.valid
    assert verdict.reason == "unknown API key"
    assert (verdict.tenant, verdict.user) == ("", "")


async def test_a_revoked_key_no_longer_verifies(requester):
    member = await member_with_key(requester)

    revoked = await ask(
        requester,
        IdentityRevokeKey(key_id=member.key.key_id),
        tenant=member.tenant,
        actor=member.admin,
    )
    verdict = await ask(
        requester,
        IdentityVerifyKey(key_id=member.key.key_id, secret_sha256=member.key.secret_sha256),
    )

    assert isinstance(revoked, IdentityKeyRevoked) and revoked.key.revoked_at is not None
    assert isinstance(verdict, IdentityKeyVerified)
    assert not verdict.valid
    assert "revoked" in verdict.reason


async def test_revoking_a_key_keeps_its_first_revocation_time(requester):
    member = await member_with_key(requester)
    revoke = IdentityRevokeKey(key_id=member.key.key_id)
    first = await ask(requester, revoke, tenant=member.tenant, actor=member.admin)

    again = await ask(requester, revoke, tenant=member.tenant, actor=member.admin)

    assert isinstance(again, IdentityKeyRevoked)
    assert again.key.revoked_at == first.key.revoked_at


async def test_another_tenants_key_is_not_found(requester):
    member = await member_with_key(requester)
    other, other_admin = await tenant_with_admin(requester)

    refused = await ask(
        requester, IdentityRevokeKey(key_id=member.key.key_id), tenant=other, actor=other_admin
    )
    listed = await ask(requester, IdentityListKeys(user_id=member.user), tenant=other)

    assert isinstance(refused, CommandFailed)
    assert refused.code == "not_found"
    assert isinstance(listed, IdentityKeysListed) and listed.keys == []


async def test_creating_a_key_twice_with_one_key_id_returns_the_same_key(requester):
    tenant, admin = await tenant_with_admin(requester)
    key = new_key()
    command = IdentityCreateKey(
        user_id=admin, key_id=key.key_id, secret_sha256=key.secret_sha256, name="ci"
    )

    first = await ask(requester, command, tenant=tenant, actor=admin)
    again = await ask(requester, command, tenant=tenant, actor=admin)

    listed = await ask(requester, IdentityListKeys(), tenant=tenant)
    assert isinstance(again, IdentityKeyCreated)
    assert again.key == first.key
    assert [k.id for k in listed.keys] == [key.key_id]


async def test_a_key_id_held_by_another_key_is_a_conflict(requester):
    member = await member_with_key(requester)

    taken = await ask(
        requester,
        IdentityCreateKey(
            user_id=member.user, key_id=member.key.key_id, secret_sha256=new_key().secret_sha256
        ),
        tenant=member.tenant,
        actor=member.admin,
    )

    assert isinstance(taken, CommandFailed)
    assert taken.code == "conflict"


async def test_a_key_may_not_carry_a_role_its_user_lacks(requester):
    tenant, admin = await tenant_with_admin(requester)
    key = new_key()

    refused = await ask(
        requester,
        IdentityCreateKey(
            user_id=admin, key_id=key.key_id, secret_sha256=key.secret_sha256, roles=["operator"]
        ),
        tenant=tenant,
        actor=admin,
    )

    assert isinstance(refused, CommandFailed)
    assert refused.code == "invalid"


async def test_listed_keys_never_show_a_secret_or_its_hash(requester):
    member = await member_with_key(requester, name="laptop")

    listed = await ask(requester, IdentityListKeys(user_id=member.user), tenant=member.tenant)

    assert [(k.id, k.name, k.user) for k in listed.keys] == [
        (member.key.key_id, "laptop", member.user)
    ]
    shown = msgspec.json.encode(listed).decode()
    assert member.key.secret_sha256 not in shown and member.key.secret not in shown


async def test_a_keys_limits_are_found_in_its_tenant_with_the_tenants_budget(requester):
    member = await member_with_key(requester, max_budget=2.5, budget_duration="1d", rpm_limit=7)

    found = await ask(requester, IdentityGetKeyLimits(key_id=member.key.key_id), member.tenant)

    assert isinstance(found, IdentityKeyLimitsFound) and found.valid, found
    assert found.budget is not None
    assert (found.budget.max_budget, found.budget.budget_duration) == (2.5, "1d")
    assert (found.rpm_limit, found.tpm_limit, found.tenant_budget) == (7, None, None)


async def test_the_limits_of_another_tenants_or_a_revoked_key_are_not_valid(requester):
    member = await member_with_key(requester)
    other, _ = await tenant_with_admin(requester)
    asked = IdentityGetKeyLimits(key_id=member.key.key_id)

    foreign = await ask(requester, asked, tenant=other)
    await ask(requester, IdentityRevokeKey(key_id=member.key.key_id), member.tenant, member.admin)
    revoked = await ask(requester, asked, tenant=member.tenant)

    assert isinstance(foreign, IdentityKeyLimitsFound) and not foreign.valid
    assert isinstance(revoked, IdentityKeyLimitsFound) and not revoked.valid
    assert revoked.reason == "revoked API key"


# Admin commands are checked where the records are, whoever relays them.

ADMIN_COMMANDS = [
    "create_tenant",
    "create_user",
    "create_key",
    "update_key",
    "revoke_key",
    "update_tenant",
    "revoke_user",
]


def admin_command(name: str, member: Member) -> msgspec.Struct:
    key = new_key()
    return {
        "create_tenant": IdentityCreateTenant(tenant_id=f"t{uuid.uuid4().hex[:12]}"),
        "create_user": IdentityCreateUser(name="mallory", roles=["member"]),
        "create_key": IdentityCreateKey(
            user_id=member.user, key_id=key.key_id, secret_sha256=key.secret_sha256
        ),
        "update_key": IdentityUpdateKey(key_id=member.key.key_id, clear=["max_budget"]),
        "revoke_key": IdentityRevokeKey(key_id=member.key.key_id),
        "update_tenant": IdentityUpdateTenant(tenant_id=member.tenant, clear=True),
        "revoke_user": IdentityRevoke(user_id=member.admin),
    }[name]


@pytest.mark.parametrize("name", ADMIN_COMMANDS)
async def test_an_admin_command_published_with_a_member_actor_is_forbidden(requester, name):
    member = await member_with_key(requester)

    refused = await ask(
        requester, admin_command(name, member), tenant=member.tenant, actor=member.user
    )

    assert isinstance(refused, CommandFailed), refused
    assert refused.code == "forbidden", refused.error


@pytest.mark.parametrize("name", ["create_user", "create_key", "update_key", "revoke_key"])
async def test_an_admin_command_published_with_no_known_actor_is_forbidden(requester, name):
    member = await member_with_key(requester)

    refused = await ask(requester, admin_command(name, member), tenant=member.tenant)

    assert isinstance(refused, CommandFailed) and refused.code == "forbidden", refused


async def test_a_member_refused_a_revocation_leaves_the_key_working(requester):
    member = await member_with_key(requester)

    await ask(requester, IdentityRevokeKey(key_id=member.key.key_id), member.tenant, member.user)

    verdict = await ask(
        requester,
        IdentityVerifyKey(key_id=member.key.key_id, secret_sha256=member.key.secret_sha256),
    )
    assert isinstance(verdict, IdentityKeyVerified) and verdict.valid


async def test_a_member_may_end_its_own_tokens(requester):
    member = await member_with_key(requester)

    revoked = await ask(
        requester, IdentityRevoke(user_id=member.user), tenant=member.tenant, actor=member.user
    )

    assert isinstance(revoked, IdentityRevoked) and revoked.revoked


# Tenants and users.


async def test_a_tenant_is_listed_once_created_and_a_second_is_a_conflict(requester):
    tenant, _ = await tenant_with_admin(requester)

    ops = await operator(requester)
    again = await ask(
        requester, IdentityCreateTenant(tenant_id=tenant), tenant=DEFAULT_TENANT, actor=ops
    )
    listed = await ask(requester, IdentityListTenants(), tenant=DEFAULT_TENANT)

    assert isinstance(again, CommandFailed) and again.code == "conflict"
    assert isinstance(listed, IdentityTenantsListed)
    assert tenant in [t.id for t in listed.tenants]


async def test_a_bad_tenant_id_is_invalid(requester):
    refused = await ask(
        requester,
        IdentityCreateTenant(tenant_id="Not A.Token"),
        tenant=DEFAULT_TENANT,
        actor=await operator(requester),
    )

    assert isinstance(refused, CommandFailed) and refused.code == "invalid"


async def test_users_are_listed_in_their_own_tenant_only(requester):
    tenant, admin = await tenant_with_admin(requester)
    other, _ = await tenant_with_admin(requester)

    mine = await ask(requester, IdentityListUsers(), tenant=tenant)
    theirs = await ask(requester, IdentityListUsers(), tenant=other)

    assert isinstance(mine, IdentityUsersListed)
    assert [u.id for u in mine.users] == [admin]
    assert admin not in [u.id for u in theirs.users]


async def test_a_duplicate_user_name_is_a_conflict_and_a_bad_role_invalid(requester):
    tenant, admin = await tenant_with_admin(requester)

    duplicate = await ask(requester, IdentityCreateUser(name="root"), tenant=tenant, actor=admin)
    bad_role = await ask(
        requester, IdentityCreateUser(name="bob", roles=["has space"]), tenant=tenant, actor=admin
    )

    assert isinstance(duplicate, CommandFailed) and duplicate.code == "conflict"
    assert isinstance(bad_role, CommandFailed) and bad_role.code == "invalid"


async def test_an_admin_cannot_make_an_operator(requester):
    tenant, admin = await tenant_with_admin(requester)

    refused = await ask(
        requester, IdentityCreateUser(name="ops", roles=["operator"]), tenant=tenant, actor=admin
    )

    assert isinstance(refused, CommandFailed) and refused.code == "forbidden"


async def test_a_redelivered_create_user_returns_the_same_user(requester):
    tenant, admin = await tenant_with_admin(requester)
    command = IdentityCreateUser(name="carol", roles=["member"])
    message_id = uuid.uuid4().hex

    first = await ask(requester, command, tenant=tenant, actor=admin, message_id=message_id)
    await asyncio.sleep(DEDUP_WINDOW + 0.5)
    again = await ask(requester, command, tenant=tenant, actor=admin, message_id=message_id)

    assert isinstance(again, IdentityUserCreated), again
    assert again.user == first.user


# Tokens.


async def test_an_issued_token_verifies_with_the_published_key_set(requester):
    member = await member_with_key(requester)

    issued = await issue(requester, member, refresh_digest())

    assert isinstance(issued, IdentityTokenIssued), issued
    principal = (await verifier_from_identity(requester)).verify(issued.access_token)
    assert (principal.tenant, principal.user) == (member.tenant, member.user)
    assert principal.roles == ("member",)
    assert principal.key_id == member.key.key_id
    assert principal.session == issued.session
    assert principal.scope == ("chat", "models")
    assert issued.scope == ["chat", "models"]
    assert (issued.expires_in, issued.refresh_expires_in) == (900, 86400)
    assert jwt.get_unverified_header(issued.access_token)["typ"] == "at+jwt"


async def test_a_token_for_a_wrong_secret_is_refused_as_unauthenticated(requester):
    member = await member_with_key(requester)
    wrong = Member(member.tenant, member.user, NewKey(member.key.key_id, "x" * 43), member.admin)

    refused = await issue(requester, wrong, refresh_digest())

    assert isinstance(refused, CommandFailed)
    assert refused.code == "unauthenticated"


async def test_the_published_key_set_holds_public_keys_only(requester):
    keys = await ask(requester, IdentityJwks())

    assert len(keys.keys) >= 2  # the active key and the next one
    for jwk in keys.keys:
        assert {"kty", "crv", "x", "kid", "alg", "use"} <= set(jwk)
        assert "d" not in jwk


async def test_a_refresh_rotates_and_the_new_token_verifies(requester):
    member = await member_with_key(requester)
    r1, r2 = refresh_digest(), refresh_digest()
    issued = await issue(requester, member, r1)

    refreshed = await ask(requester, IdentityRefresh(refresh_sha256=r1, new_refresh_sha256=r2))

    assert isinstance(refreshed, IdentityRefreshed), refreshed
    principal = (await verifier_from_identity(requester)).verify(refreshed.access_token)
    assert refreshed.session == issued.session == principal.session
    assert (refreshed.tenant, refreshed.user) == (member.tenant, member.user)
    assert refreshed.access_token != issued.access_token


async def test_reusing_a_rotated_refresh_token_revokes_the_whole_session(requester):
    member = await member_with_key(requester)
    r1, r2 = refresh_digest(), refresh_digest()
    issued = await issue(requester, member, r1)
    await ask(requester, IdentityRefresh(refresh_sha256=r1, new_refresh_sha256=r2))

    reused = await ask(
        requester, IdentityRefresh(refresh_sha256=r1, new_refresh_sha256=refresh_digest())
    )
    after = await ask(
        requester, IdentityRefresh(refresh_sha256=r2, new_refresh_sha256=refresh_digest())
    )

    assert isinstance(reused, CommandFailed) and reused.code == "unauthenticated"
    assert isinstance(after, CommandFailed) and after.code == "unauthenticated"
    listed = await ask(requester, IdentityRevocations())
    assert ("session", issued.session) in [(r.kind, r.subject) for r in listed.revocations]
    with pytest.raises(TokenRevoked):
        (await verifier_from_identity(requester)).verify(issued.access_token)


async def test_a_redelivered_refresh_is_answered_again_and_is_not_reuse(requester):
    member = await member_with_key(requester)
    r1, r2 = refresh_digest(), refresh_digest()
    await issue(requester, member, r1)
    command = IdentityRefresh(refresh_sha256=r1, new_refresh_sha256=r2)
    message_id = uuid.uuid4().hex

    first = await ask(requester, command, message_id=message_id)
    await asyncio.sleep(DEDUP_WINDOW + 0.5)
    again = await ask(requester, command, message_id=message_id)

    assert isinstance(again, IdentityRefreshed), again
    assert again.session == first.session
    later = await ask(
        requester, IdentityRefresh(refresh_sha256=r2, new_refresh_sha256=refresh_digest())
    )
    assert isinstance(later, IdentityRefreshed), later


async def test_an_unknown_refresh_token_is_unauthenticated(requester):
    refused = await ask(
        requester,
        IdentityRefresh(refresh_sha256=refresh_digest(), new_refresh_sha256=refresh_digest()),
    )

    assert isinstance(refused, CommandFailed) and refused.code == "unauthenticated"


async def test_revoking_a_key_revokes_the_sessions_started_from_it(requester):
    member = await member_with_key(requester)
    r1 = refresh_digest()
    issued = await issue(requester, member, r1)

    await ask(
        requester,
        IdentityRevokeKey(key_id=member.key.key_id),
        tenant=member.tenant,
        actor=member.admin,
    )

    listed = await ask(requester, IdentityRevocations())
    assert ("session", issued.session) in [(r.kind, r.subject) for r in listed.revocations]
    refused = await ask(
        requester, IdentityRefresh(refresh_sha256=r1, new_refresh_sha256=refresh_digest())
    )
    assert isinstance(refused, CommandFailed)


# Revocation.


async def test_a_revoked_jti_is_listed_in_the_revocations(requester):
    member = await member_with_key(requester)
    issued = await issue(requester, member, refresh_digest())
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})
    before = await ask(requester, IdentityRevocations())

    revoked = await ask(
        requester,
        IdentityRevoke(jti=claims["jti"], expires_at=claims["exp"]),
        tenant=member.tenant,
    )

    assert isinstance(revoked, IdentityRevoked) and revoked.revoked
    listed = await ask(requester, IdentityRevocations(since=before.as_of - 30))
    entries = [(r.kind, r.subject) for r in listed.revocations]
    assert ("jti", claims["jti"]) in entries
    with pytest.raises(TokenRevoked):
        (await verifier_from_identity(requester)).verify(issued.access_token)


async def test_a_refresh_token_revoked_by_its_hash_ends_its_session(requester):
    member = await member_with_key(requester)
    r1 = refresh_digest()
    issued = await issue(requester, member, r1)

    revoked = await ask(requester, IdentityRevoke(refresh_sha256=r1), tenant=member.tenant)
    unknown = await ask(
        requester, IdentityRevoke(refresh_sha256=refresh_digest()), tenant=member.tenant
    )

    assert revoked.revoked and not unknown.revoked
    with pytest.raises(TokenRevoked):
        (await verifier_from_identity(requester)).verify(issued.access_token)


async def test_another_tenant_cannot_revoke_a_refresh_token(requester):
    member = await member_with_key(requester)
    r1 = refresh_digest()
    await issue(requester, member, r1)
    other, _ = await tenant_with_admin(requester)

    answer = await ask(requester, IdentityRevoke(refresh_sha256=r1), tenant=other)

    assert isinstance(answer, IdentityRevoked) and not answer.revoked
    refreshed = await ask(
        requester, IdentityRefresh(refresh_sha256=r1, new_refresh_sha256=refresh_digest())
    )
    assert isinstance(refreshed, IdentityRefreshed)


async def test_revoking_a_user_is_listed_and_another_tenants_user_is_not_found(requester):
    member = await member_with_key(requester)
    other, other_admin = await tenant_with_admin(requester)

    revoked = await ask(
        requester, IdentityRevoke(user_id=member.user), tenant=member.tenant, actor=member.admin
    )
    foreign = await ask(
        requester, IdentityRevoke(user_id=member.user), tenant=other, actor=other_admin
    )

    assert isinstance(revoked, IdentityRevoked) and revoked.revoked
    assert isinstance(foreign, CommandFailed) and foreign.code == "not_found"
    listed = await ask(requester, IdentityRevocations())
    assert ("user", member.user) in [(r.kind, r.subject) for r in listed.revocations]


async def test_a_revoke_naming_nothing_or_two_things_is_invalid(requester):
    tenant, admin = await tenant_with_admin(requester)

    nothing = await ask(requester, IdentityRevoke(), tenant=tenant)
    two = await ask(requester, IdentityRevoke(jti="a", user_id=admin), tenant=tenant)

    assert isinstance(nothing, CommandFailed) and nothing.code == "invalid"
    assert isinstance(two, CommandFailed) and two.code == "invalid"
