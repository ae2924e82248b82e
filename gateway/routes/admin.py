"""Administration: tenants (operators), users and API keys (a tenant's admins, in their tenant).

A new key's secret is made here and returned once; identity stores only its digest.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth import Principal
from gateway.context import caller, gateway_of
from gateway.credentials import new_api_key
from gateway.openai_bodies import ERRORS
from schemas.identity import (
    ApiKeyInfo,
    IdentityCreateKey,
    IdentityCreateTenant,
    IdentityCreateUser,
    IdentityKeyCreated,
    IdentityKeyRevoked,
    IdentityKeysListed,
    IdentityListKeys,
    IdentityListTenants,
    IdentityListUsers,
    IdentityRevoke,
    IdentityRevoked,
    IdentityRevokeKey,
    IdentityTenantCreated,
    IdentityTenantsListed,
    IdentityUserCreated,
    IdentityUsersListed,
    TenantInfo,
    UserInfo,
)

router = APIRouter(tags=["admin"])

_ROLE = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    name: str | None = Field(default=None, max_length=200)


class Tenant(BaseModel):
    id: str
    object: Literal["tenant"] = "tenant"
    name: str
    created_at: float


class TenantList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Tenant]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    roles: list[Annotated[str, Field(pattern=_ROLE)]] = Field(default_factory=lambda: ["member"])


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
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=64)
    name: str = Field(default="", max_length=200)
    roles: list[Annotated[str, Field(pattern=_ROLE)]] | None = None
    models: list[Annotated[str, Field(min_length=1)]] | None = None
    expires_at: float | None = Field(default=None, gt=0)


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


class NewKey(Key):
    key: str = Field(description="The secret key. It is shown once and cannot be recovered.")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Key]


class Revoked(BaseModel):
    revoked: bool


def _tenant(t: TenantInfo) -> Tenant:
    return Tenant(id=t.id, name=t.name, created_at=t.created_at)


def _user(u: UserInfo) -> User:
    return User(id=u.id, tenant=u.tenant, name=u.name, roles=u.roles, created_at=u.created_at)


def _key(k: ApiKeyInfo) -> Key:
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
    )


Operator = Annotated[Principal, Depends(caller("tenants"))]
Admin = Annotated[Principal, Depends(caller("admin"))]


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
    return TenantList(data=[_tenant(t) for t in listed.tenants])


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
        tenant=principal.tenant,
        actor=principal.user,
    )
    return _user(created.user)


@router.get(
    "/v1/admin/users",
    response_model=UserList,
    responses=ERRORS,
    summary="List the users of your tenant",
)
async def list_users(request: Request, principal: Admin) -> UserList:
    listed = await gateway_of(request).dispatch.call(
        IdentityListUsers(), IdentityUsersListed, tenant=principal.tenant, actor=principal.user
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
        ),
        IdentityKeyCreated,
        tenant=principal.tenant,
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
) -> KeyList:
    listed = await gateway_of(request).dispatch.call(
        IdentityListKeys(user_id=user_id),
        IdentityKeysListed,
        tenant=principal.tenant,
        actor=principal.user,
    )
    return KeyList(data=[_key(k) for k in listed.keys])


@router.delete(
    "/v1/admin/keys/{key_id}", response_model=Key, responses=ERRORS, summary="Revoke an API key"
)
async def revoke_key(key_id: str, request: Request, principal: Admin) -> Key:
    gateway = gateway_of(request)
    revoked = await gateway.dispatch.call(
        IdentityRevokeKey(key_id=key_id),
        IdentityKeyRevoked,
        tenant=principal.tenant,
        actor=principal.user,
    )
    gateway.authenticator.api_keys.forget(key_id)
    return _key(revoked.key)
