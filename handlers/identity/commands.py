"""The identity commands on the bus, answered as ``gateway/CONTRACTS.md`` promises.

Every command is scoped to the envelope's tenant, except those sent before a tenant is known
(``_system``: key verification, refresh, key set and revocation polls). A refusal is a
typed ``Rejected`` (``NotFound``, ``Conflict``, ``Invalid``, ``Forbidden``, ``Unauthenticated``)
whose code the gateway turns into a status. Delivery is at least once, so
each command is safe to carry out twice: records are keyed by what the gateway generated (key
id, refresh token hash) or by the command's message id.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.ext.asyncio import AsyncEngine

from bus import errors as bus_errors
from handlers.identity import api_keys, directory, revocation, signing_keys, tokens
from handlers.identity.board import RevocationBoard
from handlers.identity.config import IdentitySettings
from handlers.identity.errors import (
    AlreadyExists,
    Forbidden,
    IdentityError,
    InvalidApiKey,
    InvalidInput,
    NotFound,
    Unauthenticated,
)
from schemas.envelope import Envelope
from schemas.identity import (
    SYSTEM_TENANT,
    ApiKeyInfo,
    Budget,
    IdentityCreateKey,
    IdentityCreateTenant,
    IdentityCreateUser,
    IdentityGetKey,
    IdentityGetKeyLimits,
    IdentityIssueToken,
    IdentityJwks,
    IdentityJwksPublished,
    IdentityKeyCreated,
    IdentityKeyFound,
    IdentityKeyLimitsFound,
    IdentityKeyRevoked,
    IdentityKeysListed,
    IdentityKeyUpdated,
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
    IdentityTenantUpdated,
    IdentityTokenIssued,
    IdentityUpdateKey,
    IdentityUpdateTenant,
    IdentityUserCreated,
    IdentityUsersListed,
    IdentityVerifyKey,
    Revocation,
    TenantInfo,
    UserInfo,
)

# Most specific first: the first matching class names the refusal.
_REFUSALS: tuple[tuple[type[IdentityError], type[bus_errors.Rejected]], ...] = (
    (NotFound, bus_errors.NotFound),
    (AlreadyExists, bus_errors.Conflict),
    (InvalidInput, bus_errors.Invalid),
    (Forbidden, bus_errors.Forbidden),
    (Unauthenticated, bus_errors.Unauthenticated),
)


@contextmanager
def refusals() -> Iterator[None]:
    """Identity's own failures become refusals with their code; anything else is retried."""
    try:
        yield
    except IdentityError as exc:
        for kind, refusal in _REFUSALS:
            if isinstance(exc, kind):
                raise refusal(str(exc)) from exc
        raise


def command_id(env: Envelope) -> str:
    """The command's message id as stored beside what it did (its digest when too long)."""
    if len(env.message_id) <= 64:
        return env.message_id
    return hashlib.sha256(env.message_id.encode()).hexdigest()


def _scope_of(env: Envelope) -> str | None:
    """The tenant a command is limited to; None for the system polls that precede one."""
    return None if env.tenant == SYSTEM_TENANT else env.tenant


def _budget(b: directory.BudgetLimit | None) -> Budget | None:
    if b is None:
        return None
    return Budget(
        max_budget=b.max_budget, budget_duration=b.budget_duration, budget_start=b.budget_start
    )


def _tenant(t: directory.Tenant) -> TenantInfo:
    return TenantInfo(id=t.id, name=t.name, created_at=t.created_at, budget=_budget(t.budget))


def _user(u: directory.User) -> UserInfo:
    return UserInfo(
        id=u.id, tenant=u.tenant, name=u.name, roles=list(u.roles), created_at=u.created_at
    )


def _key(k: api_keys.ApiKeyInfo) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=k.id,
        tenant=k.tenant,
        user=k.user,
        name=k.name,
        roles=list(k.roles),
        models=None if k.models is None else list(k.models),
        created_at=k.created_at,
        expires_at=k.expires_at,
        revoked_at=k.revoked_at,
        budget=_budget(k.budget),
        rpm_limit=k.rpm_limit,
        tpm_limit=k.tpm_limit,
        metadata=dict(k.metadata),
    )


# Roles that may add users and keys to a tenant, change what its keys may spend and revoke them
# (an operator in any tenant), and that may create tenants and set their budgets.
KEY_ADMINS = frozenset({"admin", "operator"})
TENANT_ADMINS = frozenset({"operator"})


async def _actor_holds(
    engine: AsyncEngine, env: Envelope, allowed: frozenset[str], what: str
) -> tuple[str, ...]:
    """The actor's roles, refused unless one of ``allowed`` is among them.

    Checked here, where the records are, and not only by the gateway's routes: any process with
    the right to publish identity commands could otherwise act for a member as an admin."""
    roles = await directory.actor_roles(engine, env.tenant, env.actor)
    if not allowed & set(roles):
        needed = " or ".join(sorted(allowed))
        raise bus_errors.Forbidden(f"only an {needed} may {what}")
    return roles


class IdentityCommands:
    """The handlers, sharing one engine and the token settings."""

    def __init__(
        self,
        engine: AsyncEngine,
        config: IdentitySettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        # Set once the process is connected; without one nothing reaches the gateways.
        self.board: RevocationBoard | None = None

    async def _publish_revocations(self) -> None:
        """Tell the gateways at once; a failure here fails the command, so it is redelivered
        and published then (the revocation itself is recorded once)."""
        if self.board is not None:
            await self.board.sync()

    # Credentials and tokens.

    async def verify_key(self, cmd: IdentityVerifyKey, env: Envelope) -> IdentityKeyVerified:
        try:
            info = await api_keys.check_api_key(
                self.engine, cmd.key_id, cmd.secret_sha256, self.clock(), _scope_of(env)
            )
        except InvalidApiKey as exc:
            return IdentityKeyVerified(key_id=cmd.key_id, valid=False, reason=str(exc))
        tenant = await directory.get_tenant(self.engine, info.tenant)
        return IdentityKeyVerified(
            key_id=info.id,
            valid=True,
            tenant=info.tenant,
            user=info.user,
            roles=list(info.roles),
            models=None if info.models is None else list(info.models),
            expires_at=info.expires_at,
            budget=_budget(info.budget),
            tenant_budget=_budget(tenant.budget),
            rpm_limit=info.rpm_limit,
            tpm_limit=info.tpm_limit,
        )

    async def key_limits(self, cmd: IdentityGetKeyLimits, env: Envelope) -> IdentityKeyLimitsFound:
        """For a gateway holding an access token of a key it has not verified itself: the
        token is held to the key's limits from its first request, wherever it is presented."""
        try:
            info = await api_keys.get_api_key(self.engine, env.tenant, cmd.key_id)
        except NotFound as exc:
            return IdentityKeyLimitsFound(key_id=cmd.key_id, valid=False, reason=str(exc))
        if info.revoked_at is not None:
            return IdentityKeyLimitsFound(key_id=info.id, valid=False, reason="revoked API key")
        if info.expires_at is not None and info.expires_at <= self.clock():
            return IdentityKeyLimitsFound(key_id=info.id, valid=False, reason="expired API key")
        tenant = await directory.get_tenant(self.engine, info.tenant)
        return IdentityKeyLimitsFound(
            key_id=info.id,
            valid=True,
            budget=_budget(info.budget),
            tenant_budget=_budget(tenant.budget),
            rpm_limit=info.rpm_limit,
            tpm_limit=info.tpm_limit,
        )

    async def jwks(self, cmd: IdentityJwks, env: Envelope) -> IdentityJwksPublished:
        document = await signing_keys.jwks(self.engine, self.clock())
        return IdentityJwksPublished(keys=document["keys"])

    async def revocations(
        self, cmd: IdentityRevocations, env: Envelope
    ) -> IdentityRevocationsListed:
        now = self.clock()
        entries = await revocation.list_revocations(self.engine, cmd.since, now)
        return IdentityRevocationsListed(
            as_of=now,
            revocations=[
                Revocation(
                    kind=e.kind,
                    subject=e.subject,
                    revoked_at=e.revoked_at,
                    expires_at=e.expires_at,
                )
                for e in entries
            ],
        )

    async def issue_token(self, cmd: IdentityIssueToken, env: Envelope) -> IdentityTokenIssued:
        now = self.clock()
        with refusals():
            scope = tokens.check_scope(cmd.scope)
            info = await api_keys.check_api_key(
                self.engine, cmd.key_id, cmd.secret_sha256, now, _scope_of(env)
            )
            issued = await tokens.issue_tokens(
                self.engine,
                self.config,
                api_keys.principal_of(info),
                cmd.refresh_sha256,
                client_id=cmd.client_id or None,
                scope=" ".join(scope),
                now=now,
            )
        return IdentityTokenIssued(
            access_token=issued.access_token,
            expires_in=int(self.config.access_ttl),
            refresh_expires_in=int(self.config.refresh_ttl),
            tenant=issued.tenant,
            user=issued.user,
            scope=list(issued.scope),
            session=issued.session,
        )

    async def refresh(self, cmd: IdentityRefresh, env: Envelope) -> IdentityRefreshed:
        try:
            with refusals():
                issued = await tokens.refresh(
                    self.engine,
                    self.config,
                    cmd.refresh_sha256,
                    cmd.new_refresh_sha256,
                    now=self.clock(),
                    command_id=command_id(env),
                    tenant=_scope_of(env),
                )
        except bus_errors.Rejected:
            # A reused refresh token revokes its whole family before it is refused.
            await self._publish_revocations()
            raise
        return IdentityRefreshed(
            access_token=issued.access_token,
            expires_in=int(self.config.access_ttl),
            refresh_expires_in=int(self.config.refresh_ttl),
            tenant=issued.tenant,
            user=issued.user,
            scope=list(issued.scope),
            session=issued.session,
        )

    async def revoke(self, cmd: IdentityRevoke, env: Envelope) -> IdentityRevoked:
        given = [name for name in ("jti", "refresh_sha256", "user_id") if getattr(cmd, name)]
        if len(given) != 1:
            raise bus_errors.Invalid("give exactly one of jti, refresh_sha256 and user_id")
        if cmd.user_id and cmd.user_id != env.actor:
            # Anyone may end their own tokens; another user's only an admin.
            await _actor_holds(self.engine, env, KEY_ADMINS, "revoke another user's tokens")
        now = self.clock()
        with refusals():
            if cmd.jti:
                await revocation.revoke(
                    self.engine,
                    cmd.jti,
                    self.config,
                    now,
                    expires_at=cmd.expires_at,
                    command_id=command_id(env),
                )
                revoked = True
            elif cmd.refresh_sha256:
                revoked = await revocation.revoke_session(
                    self.engine, env.tenant, cmd.refresh_sha256, self.config, now
                )
            else:
                assert cmd.user_id
                await revocation.revoke_user(
                    self.engine, env.tenant, cmd.user_id, self.config, now, command_id(env)
                )
                revoked = True
        await self._publish_revocations()
        return IdentityRevoked(revoked=revoked)

    # Tenants, users and keys.

    async def create_tenant(
        self, cmd: IdentityCreateTenant, env: Envelope
    ) -> IdentityTenantCreated:
        await _actor_holds(self.engine, env, TENANT_ADMINS, "create a tenant")
        with refusals():
            tenant = await directory.create_tenant(
                self.engine, cmd.tenant_id, cmd.name, self.clock(), created_by=command_id(env)
            )
        return IdentityTenantCreated(tenant=_tenant(tenant))

    async def list_tenants(self, cmd: IdentityListTenants, env: Envelope) -> IdentityTenantsListed:
        return IdentityTenantsListed(
            tenants=[_tenant(t) for t in await directory.list_tenants(self.engine)]
        )

    async def create_user(self, cmd: IdentityCreateUser, env: Envelope) -> IdentityUserCreated:
        grantor = await _actor_holds(self.engine, env, KEY_ADMINS, "add users to a tenant")
        with refusals():
            user = await directory.create_user(
                self.engine,
                env.tenant,
                cmd.name,
                cmd.roles,
                self.clock(),
                created_by=command_id(env),
                grantor_roles=grantor,
            )
        return IdentityUserCreated(user=_user(user))

    async def list_users(self, cmd: IdentityListUsers, env: Envelope) -> IdentityUsersListed:
        users = await directory.list_users(self.engine, env.tenant)
        return IdentityUsersListed(users=[_user(u) for u in users])

    async def create_key(self, cmd: IdentityCreateKey, env: Envelope) -> IdentityKeyCreated:
        grantor = await _actor_holds(self.engine, env, KEY_ADMINS, "create API keys")
        with refusals():
            info = await api_keys.record_api_key(
                self.engine,
                env.tenant,
                cmd.user_id,
                cmd.key_id,
                cmd.secret_sha256,
                name=cmd.name,
                roles=cmd.roles,
                models=cmd.models,
                expires_at=cmd.expires_at,
                now=self.clock(),
                grantor_roles=grantor,
                limits=api_keys.KeyLimits(
                    max_budget=cmd.max_budget,
                    budget_duration=cmd.budget_duration,
                    rpm_limit=cmd.rpm_limit,
                    tpm_limit=cmd.tpm_limit,
                    metadata=cmd.metadata,
                ),
            )
        return IdentityKeyCreated(key=_key(info))

    async def list_keys(self, cmd: IdentityListKeys, env: Envelope) -> IdentityKeysListed:
        keys = await api_keys.list_api_keys(self.engine, env.tenant, cmd.user_id)
        return IdentityKeysListed(keys=[_key(k) for k in keys])

    async def revoke_key(self, cmd: IdentityRevokeKey, env: Envelope) -> IdentityKeyRevoked:
        await _actor_holds(self.engine, env, KEY_ADMINS, "revoke API keys")
        with refusals():
            info = await api_keys.revoke_api_key(
                self.engine, env.tenant, cmd.key_id, self.config, self.clock()
            )
        # The key's refresh families end with it.
        await self._publish_revocations()
        return IdentityKeyRevoked(key=_key(info))

    async def get_key(self, cmd: IdentityGetKey, env: Envelope) -> IdentityKeyFound:
        with refusals():
            info = await api_keys.get_api_key(self.engine, env.tenant, cmd.key_id)
        return IdentityKeyFound(key=_key(info))

    async def update_key(self, cmd: IdentityUpdateKey, env: Envelope) -> IdentityKeyUpdated:
        """Only an admin of the key's tenant changes what it may spend, whoever relayed it."""
        await _actor_holds(self.engine, env, KEY_ADMINS, "change a tenant's API keys")
        changes = {
            name: getattr(cmd, name)
            for name in api_keys.UPDATABLE
            if getattr(cmd, name) is not None
        }
        with refusals():
            info = await api_keys.update_api_key(
                self.engine, env.tenant, cmd.key_id, changes, cmd.clear, self.clock()
            )
        return IdentityKeyUpdated(key=_key(info))

    async def update_tenant(
        self, cmd: IdentityUpdateTenant, env: Envelope
    ) -> IdentityTenantUpdated:
        """A tenant's budget is a cap its own admins must not lift: operators only."""
        await _actor_holds(self.engine, env, TENANT_ADMINS, "set a tenant's budget")
        if cmd.clear and (cmd.max_budget is not None or cmd.budget_duration is not None):
            raise bus_errors.Invalid("give a budget or clear it, not both")
        if not cmd.clear and cmd.max_budget is None:
            raise bus_errors.Invalid("give max_budget (and budget_duration), or clear")
        with refusals():
            tenant = await directory.set_tenant_budget(
                self.engine,
                cmd.tenant_id,
                None if cmd.clear else cmd.max_budget,
                None if cmd.clear else cmd.budget_duration,
                self.clock(),
            )
        return IdentityTenantUpdated(tenant=_tenant(tenant))
