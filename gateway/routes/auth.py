"""Tokens: an API key exchanged for an access token and a refresh token, refresh with rotation,
revocation (RFC 7009 style), and the public key set at ``/.well-known/jwks.json``.

The refresh token is made here and only its digest goes to identity (see CONTRACTS.md).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth import AREAS, Principal
from gateway.context import caller, gateway_of
from gateway.credentials import new_refresh_token, parse_api_key, refresh_digest
from gateway.errors import ApiError, unavailable
from gateway.openai_bodies import ERRORS
from gateway.tokens import InvalidToken, VerificationUnavailable, verify
from schemas.identity import (
    SYSTEM_TENANT,
    IdentityIssueToken,
    IdentityRefresh,
    IdentityRefreshed,
    IdentityRevoke,
    IdentityRevoked,
    IdentityTokenIssued,
)

router = APIRouter(tags=["auth"])


class TokenRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"scope": "chat models", "client_id": "console"}]},
    )
    grant_type: Literal["api_key"] = Field(
        default="api_key", description="The API key in the Authorization header is exchanged."
    )
    scope: str | list[str] | None = Field(
        default=None, description="API areas the token may reach; all the roles allow if empty."
    )
    client_id: str | None = Field(
        default=None, max_length=200, description="Names the client in the token, for audits."
    )


class RefreshRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"refresh_token": "rt-soma-5Jd0…"}]},
    )
    refresh_token: str = Field(
        max_length=200, description="The last refresh token; a used one ends its family."
    )


class RevokeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"token": "rt-soma-5Jd0…", "token_type_hint": "refresh_token"}]
        },
    )
    token: str = Field(max_length=8192, description="An access token or a refresh token.")
    token_type_hint: Literal["access_token", "refresh_token"] | None = Field(
        default=None, description="Which kind it is (optional; it is recognised anyway)."
    )


class TokenPair(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    scope: str


class RevokeResult(BaseModel):
    revoked: bool


class Jwks(BaseModel):
    keys: list[dict[str, Any]]


class Caller(BaseModel):
    object: Literal["caller"] = "caller"
    tenant: str
    user: str
    roles: list[str]
    role: str
    via: Literal["api_key", "token"]
    scope: list[str]


def _scope(raw: str | list[str] | None) -> list[str]:
    scope = raw.split() if isinstance(raw, str) else list(raw or [])
    unknown = sorted(set(scope) - set(AREAS) - {"*"})
    if unknown:
        raise ApiError(
            400, f"Unknown scope: {', '.join(unknown)}.", param="scope", code="invalid_scope"
        )
    return sorted(set(scope))


def _refused_credentials() -> ApiError:
    return ApiError(401, "The credentials were not accepted.", code="invalid_grant")


@router.post(
    "/v1/auth/token",
    response_model=TokenPair,
    responses=ERRORS,
    summary="Exchange an API key for an access token and a refresh token",
)
async def issue_token(
    request: Request,
    principal: Annotated[Principal, Depends(caller("auth"))],
    body: TokenRequest | None = None,
) -> TokenPair:
    body = body or TokenRequest()
    _, _, credential = (request.headers.get("authorization") or "").partition(" ")
    presented = parse_api_key(credential.strip())
    if principal.via != "api_key" or presented is None:
        raise ApiError(
            400, "Only an API key can be exchanged for tokens.", code="unsupported_grant_type"
        )
    refresh, refresh_sha256 = new_refresh_token()
    issued = await gateway_of(request).dispatch.call(
        IdentityIssueToken(
            key_id=presented.key_id,
            secret_sha256=presented.secret_sha256,
            refresh_sha256=refresh_sha256,
            scope=_scope(body.scope),
            client_id=body.client_id or "",
        ),
        IdentityTokenIssued,
        tenant=principal.tenant,
        actor=principal.user,
    )
    return TokenPair(
        access_token=issued.access_token,
        expires_in=issued.expires_in,
        refresh_token=refresh,
        refresh_expires_in=issued.refresh_expires_in,
        scope=" ".join(issued.scope),
    )


@router.post(
    "/v1/auth/refresh",
    response_model=TokenPair,
    responses=ERRORS,
    summary="Rotate a refresh token for a new token pair",
)
async def refresh_token(body: RefreshRequest, request: Request) -> TokenPair:
    digest = refresh_digest(body.refresh_token)
    if digest is None:
        raise _refused_credentials()
    refresh, new_digest = new_refresh_token()
    gateway = gateway_of(request)
    refreshed = await gateway.dispatch.call(
        IdentityRefresh(refresh_sha256=digest, new_refresh_sha256=new_digest),
        IdentityRefreshed,
        tenant=SYSTEM_TENANT,
    )
    return TokenPair(
        access_token=refreshed.access_token,
        expires_in=refreshed.expires_in,
        refresh_token=refresh,
        refresh_expires_in=refreshed.refresh_expires_in,
        scope=" ".join(refreshed.scope),
    )


@router.post(
    "/v1/auth/revoke",
    response_model=RevokeResult,
    responses=ERRORS,
    summary="Revoke an access token or a refresh token (and its family)",
)
async def revoke_token(
    body: RevokeRequest,
    request: Request,
    principal: Annotated[Principal, Depends(caller("auth"))],
) -> RevokeResult:
    gateway = gateway_of(request)
    digest = refresh_digest(body.token)
    if digest is not None:
        answer = await gateway.dispatch.call(
            IdentityRevoke(refresh_sha256=digest),
            IdentityRevoked,
            tenant=principal.tenant,
            actor=principal.user,
        )
        return RevokeResult(revoked=answer.revoked)
    if body.token.startswith("sk-soma-"):
        raise ApiError(
            400,
            "API keys are revoked at /v1/admin/keys/{key_id}.",
            param="token",
            code="unsupported_token_type",
        )
    verifier = gateway.authenticator.verifier
    try:
        claims = verify(body.token, verifier.keys, verifier.revoked, verifier.rules, time.time())
    except InvalidToken:
        return RevokeResult(revoked=False)  # nothing valid to revoke (RFC 7009: not an error)
    except VerificationUnavailable as exc:
        raise unavailable() from exc
    own = claims.tenant == principal.tenant and (
        claims.subject == principal.user or "admin" in principal.roles
    )
    if not own:
        return RevokeResult(revoked=False)
    answer = await gateway.dispatch.call(
        IdentityRevoke(jti=claims.jti, expires_at=claims.expires_at),
        IdentityRevoked,
        tenant=principal.tenant,
        actor=principal.user,
    )
    verifier.revoke_locally(claims)
    return RevokeResult(revoked=answer.revoked)


@router.get(
    "/v1/auth/whoami",
    response_model=Caller,
    responses=ERRORS,
    summary="Who the credential belongs to: tenant, user and roles",
)
async def whoami(principal: Annotated[Principal, Depends(caller("auth"))]) -> Caller:
    """What a client (the operator console among them) needs to decide what to show; it
    decides nothing itself, since every route checks the credential again."""
    return Caller(
        tenant=principal.tenant,
        user=principal.user,
        roles=list(principal.roles),
        role=principal.role,
        via=principal.via,
        scope=list(principal.scope),
    )


@router.get(
    "/.well-known/jwks.json",
    response_model=Jwks,
    tags=["auth"],
    summary="Public keys that sign access tokens",
)
async def jwks(request: Request) -> Jwks:
    verifier = gateway_of(request).authenticator.verifier
    if not verifier.keys.loaded:
        try:
            await verifier.refresh_keys()
        except Exception as exc:
            raise unavailable("The key set is not available yet.") from exc
    return Jwks(keys=verifier.keys.public_jwks()["keys"])
