"""Administration: tenants (operators), users and API keys (a tenant's admins, in their tenant).

A new key's secret is made here and returned once; identity stores only its digest.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.auth import Principal
from gateway.context import Gateway, caller, gateway_of
from gateway.credentials import new_api_key
from gateway.errors import forbidden
from gateway.openai_bodies import ERRORS
from schemas.durations import FORMS, BadDuration, duration_seconds
from schemas.identity import (
    KNOWN_ROLES,
    ApiKeyInfo,
    Budget,
    IdentityCreateKey,
    IdentityCreateTenant,
    IdentityCreateUser,
    IdentityGetKey,
    IdentityKeyCreated,
    IdentityKeyFound,
    IdentityKeyRevoked,
    IdentityKeysListed,
    IdentityKeyUpdated,
    IdentityListKeys,
    IdentityListTenants,
    IdentityListUsers,
    IdentityRevoke,
    IdentityRevoked,
    IdentityRevokeKey,
    IdentityTenantCreated,
    IdentityTenantsListed,
    IdentityTenantUpdated,
    IdentityUpdateKey,
    IdentityUpdateTenant,
    IdentityUserCreated,
    IdentityUsersListed,
    TenantInfo,
    UserInfo,
)

router = APIRouter(tags=["admin"])

_ROLE = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_TENANT = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class TenantCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"id": "acme", "name": "Acme Corp"}]}
    )
    id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Lower-case letters, digits, - and _."
    )
    name: str | None = Field(
        default=None, max_length=200, description="For people (default: the id)."
    )


def _duration(value: str | None) -> str | None:
    if value is not None:
        try:
            duration_seconds(value)
        except BadDuration as exc:
            raise ValueError(str(exc)) from None
    return value


_BUDGET_DURATION = f"How often the budget resets: {FORMS}. Without it the budget never resets."


class TenantBudget(BaseModel):
    """``PATCH /v1/admin/tenants/{id}``: ``max_budget`` null removes the tenant's budget."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"max_budget": 500.0, "budget_duration": "30d"}]},
    )
    max_budget: float | None = Field(ge=0, description="US dollars per window; null: none.")
    budget_duration: str | None = Field(default=None, description=_BUDGET_DURATION)

    _check_duration = field_validator("budget_duration")(_duration)


class Tenant(BaseModel):
    id: str
    object: Literal["tenant"] = "tenant"
    name: str
    created_at: float
    max_budget: float | None = None
    budget_duration: str | None = None
    budget_reset_at: float | None = None
    spend: float | None = Field(
        default=None, description="USD spent in the budget's current window."
    )


class TenantList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Tenant]


class UserCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "alice", "roles": ["admin"], "tenant": "acme"}]},
    )
    name: str = Field(min_length=1, max_length=200, description="Unique in the tenant.")
    tenant: str | None = Field(
        default=None,
        pattern=_TENANT,
        description="The user's tenant (operators; default: the caller's own).",
    )
    roles: list[Annotated[str, Field(pattern=_ROLE)]] = Field(
        default_factory=lambda: ["member"],
        description=f"Of {', '.join(KNOWN_ROLES)}; granting admin or operator takes a holder.",
    )


class User(BaseModel):
    id: str
    object: Literal["user"] = "user"
    tenant: str
    name: str
    roles: list[str]
    created_at: float


class UserList(BaseModel):
    object: Literal["list"] = "list"
    data: list[User]


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "user_id": "3c1f9a0e5b7d4c2a8e6f1b0d9c7a5e3f",
                    "name": "ci",
                    "models": ["gpt-4o-mini"],
                    "max_budget": 10.0,
                    "budget_duration": "30d",
                    "rpm_limit": 60,
                    "tpm_limit": 100000,
                    "metadata": {"team": "search"},
                }
            ]
        },
    )
    user_id: str = Field(min_length=1, max_length=64, description="Whose key (a user's id).")
    tenant: str | None = Field(
        default=None,
        pattern=_TENANT,
        description="The key's tenant (operators; default: the caller's own).",
    )
    name: str = Field(default="", max_length=200, description="For people: what it is for.")
    roles: list[Annotated[str, Field(pattern=_ROLE)]] | None = Field(
        default=None, description="Some of the user's roles (default: all of them)."
    )
    models: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, description="The models it may use (default: every model)."
    )
    expires_at: float | None = Field(
        default=None, gt=0, description="When it stops working (epoch seconds)."
    )
    max_budget: float | None = Field(default=None, ge=0, description="US dollars per window.")
    budget_duration: str | None = Field(default=None, description=_BUDGET_DURATION)
    rpm_limit: int | None = Field(default=None, ge=1, description="Requests per minute.")
    tpm_limit: int | None = Field(default=None, ge=1, description="Tokens per minute.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Labels, kept as given.")

    _check_duration = field_validator("budget_duration")(_duration)


class KeyUpdate(BaseModel):
    """``PATCH /v1/admin/keys/{id}``: each field given is set, a field given as null is
    removed (no limit, every model, no expiry), the rest stay. The secret stays the same."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"max_budget": 25.0, "budget_duration": "7d", "rpm_limit": None}]
        },
    )
    name: str | None = Field(default=None, max_length=200, description="For people.")
    models: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, description="The models it may use; null: every model."
    )
    expires_at: float | None = Field(
        default=None, gt=0, description="When it stops working (epoch seconds); null: never."
    )
    max_budget: float | None = Field(
        default=None, ge=0, description="US dollars per window; null: no budget."
    )
    budget_duration: str | None = Field(default=None, description=_BUDGET_DURATION)
    rpm_limit: int | None = Field(
        default=None, ge=1, description="Requests per minute; null: the gateway's default."
    )
    tpm_limit: int | None = Field(
        default=None, ge=1, description="Tokens per minute; null: the gateway's default."
    )
    metadata: dict[str, Any] | None = Field(
        default=None, description="Labels, replacing the old ones."
    )

    _check_duration = field_validator("budget_duration")(_duration)


class Key(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    tenant: str
    user: str
    name: str
    roles: list[str]
    models: list[str] | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    max_budget: float | None = None
    budget_duration: str | None = None
    budget_reset_at: float | None = Field(
        default=None, description="When the current budget window ends (epoch seconds)."
    )
    spend: float = Field(
        default=0.0,
        description="USD spent in the budget's current window (without a budget: over the "
        "gateway's SOMA_BUDGET_LOOKBACK).",
    )
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class NewKey(Key):
    key: str = Field(description="The secret key. It is shown once and cannot be recovered.")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Key]


class Revoked(BaseModel):
    revoked: bool


def _tenant(t: TenantInfo, gateway: Gateway | None = None) -> Tenant:
    out = Tenant(id=t.id, name=t.name, created_at=t.created_at)
    if t.budget is not None:
        out.max_budget = t.budget.max_budget
        out.budget_duration = t.budget.budget_duration
        if gateway is not None and gateway.budgets is not None:
            state = gateway.budgets.tenant_state(t.id, t.budget)
            out.spend = state.spent
            out.budget_reset_at = state.window.resets_at
    return out


def _user(u: UserInfo) -> User:
    return User(id=u.id, tenant=u.tenant, name=u.name, roles=u.roles, created_at=u.created_at)


def _spend(
    gateway: Gateway | None, key_id: str, budget: Budget | None
) -> tuple[float, float | None]:
    """USD spent in the budget's current window and when it ends, from the gateway's ledger."""
    if gateway is None or gateway.budgets is None:
        return 0.0, None
    guard = gateway.budgets
    if budget is None:
        now = guard.clock()
        return guard.ledger.key_spend(key_id, now - guard.ledger.lookback), None
    state = guard.key_state(key_id, budget)
    return state.spent, state.window.resets_at


def _key(k: ApiKeyInfo, gateway: Gateway | None = None) -> Key:
    spent, resets_at = _spend(gateway, k.id, k.budget)
    return Key(
        id=k.id,
        tenant=k.tenant,
        user=k.user,
        name=k.name,
        roles=k.roles,
        models=k.models,
        created_at=k.created_at,
        expires_at=k.expires_at,
        revoked_at=k.revoked_at,
        max_budget=None if k.budget is None else k.budget.max_budget,
        budget_duration=None if k.budget is None else k.budget.budget_duration,
        budget_reset_at=resets_at,
        spend=spent,
        rpm_limit=k.rpm_limit,
        tpm_limit=k.tpm_limit,
        metadata=k.metadata,
    )


Operator = Annotated[Principal, Depends(caller("tenants"))]
Admin = Annotated[Principal, Depends(caller("admin"))]
TenantQuery = Annotated[
    str | None,
    Query(
        pattern=_TENANT,
        description="Act in this tenant (operators; default: the caller's own tenant).",
    ),
]


def acting_in(principal: Principal, tenant: str | None) -> str:
    """The tenant a request acts in: the caller's own, or — for an operator, who manages every
    tenant — the one it names. Identity checks the same again where the records are."""
    if tenant is None or tenant == principal.tenant:
        return principal.tenant
    if "operator" not in principal.roles:
        raise forbidden(
            f"Only an operator acts in another tenant than its own ({principal.tenant}); "
            "leave out tenant, or use an operator's key."
        )
    return tenant


@router.post(
    "/v1/admin/tenants",
    response_model=Tenant,
    status_code=201,
    responses=ERRORS,
    summary="Create a tenant",
)
async def create_tenant(body: TenantCreate, request: Request, principal: Operator) -> Tenant:
    created = await gateway_of(request).dispatch.call(
        IdentityCreateTenant(tenant_id=body.id, name=body.name),
        IdentityTenantCreated,
        tenant=principal.tenant,
        actor=principal.user,
    )
    return _tenant(created.tenant)


@router.get(
    "/v1/admin/tenants", response_model=TenantList, responses=ERRORS, summary="List tenants"
)
async def list_tenants(request: Request, principal: Operator) -> TenantList:
    listed = await gateway_of(request).dispatch.call(
        IdentityListTenants(),
        IdentityTenantsListed,
        tenant=principal.tenant,
        actor=principal.user,
    )
    gateway = gateway_of(request)
    return TenantList(data=[_tenant(t, gateway) for t in listed.tenants])


@router.post(
    "/v1/admin/users",
    response_model=User,
    status_code=201,
    responses=ERRORS,
    summary="Create a user in your tenant",
)
async def create_user(body: UserCreate, request: Request, principal: Admin) -> User:
    created = await gateway_of(request).dispatch.call(
        IdentityCreateUser(name=body.name, roles=body.roles),
        IdentityUserCreated,
        tenant=acting_in(principal, body.tenant),
        actor=principal.user,
    )
    return _user(created.user)


@router.get(
    "/v1/admin/users",
    response_model=UserList,
    responses=ERRORS,
    summary="List the users of your tenant",
)
async def list_users(request: Request, principal: Admin, tenant: TenantQuery = None) -> UserList:
    listed = await gateway_of(request).dispatch.call(
        IdentityListUsers(),
        IdentityUsersListed,
        tenant=acting_in(principal, tenant),
        actor=principal.user,
    )
    return UserList(data=[_user(u) for u in listed.users])


@router.post(
    "/v1/admin/users/{user_id}/revoke-tokens",
    response_model=Revoked,
    responses=ERRORS,
    summary="Revoke every current token of a user",
)
async def revoke_user_tokens(user_id: str, request: Request, principal: Admin) -> Revoked:
    answer = await gateway_of(request).dispatch.call(
        IdentityRevoke(user_id=user_id),
        IdentityRevoked,
        tenant=principal.tenant,
        actor=principal.user,
    )
    return Revoked(revoked=answer.revoked)


@router.post(
    "/v1/admin/keys",
    response_model=NewKey,
    status_code=201,
    responses=ERRORS,
    summary="Create an API key (its secret is shown once)",
)
async def create_key(body: KeyCreate, request: Request, principal: Admin) -> NewKey:
    made = new_api_key()
    created = await gateway_of(request).dispatch.call(
        IdentityCreateKey(
            user_id=body.user_id,
            key_id=made.key_id,
            secret_sha256=made.secret_sha256,
            name=body.name,
            roles=body.roles,
            models=body.models,
            expires_at=body.expires_at,
            max_budget=body.max_budget,
            budget_duration=body.budget_duration,
            rpm_limit=body.rpm_limit,
            tpm_limit=body.tpm_limit,
            metadata=body.metadata,
        ),
        IdentityKeyCreated,
        tenant=acting_in(principal, body.tenant),
        actor=principal.user,
    )
    return NewKey(key=made.key, **_key(created.key).model_dump(exclude={"object"}))


@router.get(
    "/v1/admin/keys",
    response_model=KeyList,
    responses=ERRORS,
    summary="List the API keys of your tenant",
)
async def list_keys(
    request: Request,
    principal: Admin,
    user_id: Annotated[str | None, Query(max_length=64)] = None,
    tenant: TenantQuery = None,
) -> KeyList:
    listed = await gateway_of(request).dispatch.call(
        IdentityListKeys(user_id=user_id),
        IdentityKeysListed,
        tenant=acting_in(principal, tenant),
        actor=principal.user,
    )
    gateway = gateway_of(request)
    return KeyList(data=[_key(k, gateway) for k in listed.keys])


@router.get(
    "/v1/admin/keys/{key_id}",
    response_model=Key,
    responses=ERRORS,
    summary="An API key's limits and its spend so far",
)
async def get_key(
    key_id: str, request: Request, principal: Admin, tenant: TenantQuery = None
) -> Key:
    gateway = gateway_of(request)
    found = await gateway.dispatch.call(
        IdentityGetKey(key_id=key_id),
        IdentityKeyFound,
        tenant=acting_in(principal, tenant),
        actor=principal.user,
    )
    return _key(found.key, gateway)


@router.patch(
    "/v1/admin/keys/{key_id}",
    response_model=Key,
    responses=ERRORS,
    summary="Change an API key's budget, limits, models, expiry or metadata in place",
)
async def update_key(
    key_id: str, body: KeyUpdate, request: Request, principal: Admin, tenant: TenantQuery = None
) -> Key:
    gateway = gateway_of(request)
    given = body.model_dump(exclude_unset=True)
    clear = sorted(name for name, value in given.items() if value is None)
    values = {name: value for name, value in given.items() if value is not None}
    updated = await gateway.dispatch.call(
        IdentityUpdateKey(key_id=key_id, clear=clear, **values),  # type: ignore[arg-type]
        IdentityKeyUpdated,
        tenant=acting_in(principal, tenant),
        actor=principal.user,
    )
    # The new limits apply on this gateway at once, on the others within the key cache time.
    gateway.authenticator.forget(key_id)
    return _key(updated.key, gateway)


@router.patch(
    "/v1/admin/tenants/{tenant_id}",
    response_model=Tenant,
    responses=ERRORS,
    summary="Set or remove a tenant's budget (operators)",
)
async def update_tenant(
    tenant_id: str, body: TenantBudget, request: Request, principal: Operator
) -> Tenant:
    gateway = gateway_of(request)
    updated = await gateway.dispatch.call(
        IdentityUpdateTenant(
            tenant_id=tenant_id,
            max_budget=body.max_budget,
            budget_duration=body.budget_duration,
            clear=body.max_budget is None,
        ),
        IdentityTenantUpdated,
        tenant=principal.tenant,
        actor=principal.user,
    )
    return _tenant(updated.tenant, gateway)


@router.delete(
    "/v1/admin/keys/{key_id}", response_model=Key, responses=ERRORS, summary="Revoke an API key"
)
async def revoke_key(
    key_id: str, request: Request, principal: Admin, tenant: TenantQuery = None
) -> Key:
    gateway = gateway_of(request)
    revoked = await gateway.dispatch.call(
        IdentityRevokeKey(key_id=key_id),
        IdentityKeyRevoked,
        tenant=acting_in(principal, tenant),
        actor=principal.user,
    )
    gateway.authenticator.forget(key_id)
    return _key(revoked.key)
