"""Who is calling: ``Authorization: Bearer <access token | API key>`` → a ``Principal``.
``x-api-key: <API key or token>``, as Anthropic's clients send it, counts as the same bearer
credential when there is no ``Authorization`` header.

Access tokens are checked locally (``gateway.tokens``). API keys are checked by identity over
the bus and the verdict reused for a few seconds, so a revoked key stops working within that
time; concurrent requests with the same key share one bus round trip. A token started from an
API key is held to that key's budget and limits: from the key's own verdict when this gateway
has one, else from identity's answer (reused as long), and refused while identity cannot say.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.credentials import looks_like_api_key, parse_api_key, sha256_hex
from gateway.errors import forbidden, unauthenticated, unavailable
from gateway.recent import Recent
from gateway.tokens import AccessClaims, InvalidToken, TokenVerifier, VerificationUnavailable
from schemas.identity import Budget, IdentityKeyLimitsFound, IdentityKeyVerified

log = logging.getLogger("soma.gateway.auth")

# Roles, most privileged first; ``role`` (what policy judges by) is the first one held. The
# operator comes last: it manages tenants, and a key that also calls the API (the bootstrap
# admin's) is judged by its calling role.
ROLE_ORDER = ("admin", "service", "member", "user", "operator")
CALLERS = frozenset({"admin", "member", "user", "service"})

# What each group of routes needs: any one of these roles, and the area in a token's scope.
AREAS: dict[str, frozenset[str]] = {
    "chat": CALLERS,
    "embeddings": CALLERS,
    "models": CALLERS,
    "memory": CALLERS,
    "tools": CALLERS,
    "tasks": CALLERS,
    "auth": CALLERS | {"operator"},
    "usage": frozenset({"admin"}),
    # An operator manages every tenant's users and keys (naming the tenant), an admin its own.
    "admin": frozenset({"admin", "operator"}),
    "tenants": frozenset({"operator"}),
}


@dataclass(frozen=True)
class Principal:
    tenant: str
    user: str
    roles: tuple[str, ...]
    via: Literal["api_key", "token"]
    models: tuple[str, ...] | None = None
    key_id: str | None = None
    client_id: str | None = None
    scope: tuple[str, ...] = ()
    token: AccessClaims | None = None
    # The key's own limits and its tenant's budget (from identity's verdict on the key).
    budget: Budget | None = None
    tenant_budget: Budget | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None

    @property
    def role(self) -> str:
        return next((r for r in ROLE_ORDER if r in self.roles), self.roles[0] if self.roles else "")

    @property
    def limit_id(self) -> str:
        """What per-key limits count against: the API key, or the token's session or user."""
        if self.key_id:
            return f"key:{self.key_id}"
        if self.token is not None and self.token.session:
            return f"session:{self.token.session}"
        return f"user:{self.user}"

    def may_use_model(self, model: str) -> bool:
        return self.models is None or model in self.models


def credential_header(headers: Mapping[str, str]) -> str | None:
    """The request's credential as an ``Authorization`` value: that header, else ``x-api-key``
    as a bearer credential."""
    authorization = headers.get("authorization")
    if authorization:
        return authorization
    api_key = (headers.get("x-api-key") or "").strip()
    return f"Bearer {api_key}" if api_key else None


def authorize(principal: Principal, area: str) -> None:
    """403 unless the principal holds a role of ``area`` and its scope (if any) includes it."""
    if not AREAS[area] & set(principal.roles):
        raise forbidden(f"Your role does not allow access to {area}.")
    if principal.scope and area not in principal.scope and "*" not in principal.scope:
        raise forbidden(f"The token's scope does not include {area}.")


VerifyKey = Callable[[str, str], Awaitable[IdentityKeyVerified]]
# (tenant, key id) -> identity's answer on the limits of that key of the tenant.
FetchKeyLimits = Callable[[str, str], Awaitable[IdentityKeyLimitsFound]]


class ApiKeyCache:
    """Identity's verdicts on API keys, by the key's digest, reused for ``ttl`` seconds."""

    def __init__(self, verify: VerifyKey, ttl: float) -> None:
        self._verify = verify
        self._verdicts: Recent[IdentityKeyVerified] = Recent(ttl)

    def forget(self, key_id: str) -> None:
        """Drop cached verdicts of a key revoked or changed through this gateway."""
        self._verdicts.forget(lambda _, verdict: verdict.key_id == key_id)

    async def verdict(self, key: str) -> IdentityKeyVerified | None:
        presented = parse_api_key(key)
        if presented is None:
            return None
        return await self._verdicts.get(
            sha256_hex(key), lambda: self._verify(presented.key_id, presented.secret_sha256)
        )


@dataclass(frozen=True)
class KeyLimits:
    budget: Budget | None
    tenant_budget: Budget | None
    rpm_limit: int | None
    tpm_limit: int | None


class _KeyGone(Exception):
    """Identity knows the token's key no more (unknown in the tenant, revoked, expired)."""


class Authenticator:
    def __init__(
        self,
        verifier: TokenVerifier,
        api_keys: ApiKeyCache,
        fetch_limits: FetchKeyLimits,
        limits_ttl: float,
    ) -> None:
        self.verifier = verifier
        self.api_keys = api_keys
        self._fetch_limits = fetch_limits
        # The limits of each key by (tenant, key id): an access token started from a key names
        # it (``key_id`` claim) and is held to them from its first request on any gateway —
        # from a verdict on the key itself, else asked of identity — reused like the verdicts.
        self._limits: Recent[KeyLimits] = Recent(limits_ttl)
        # Each tenant's budget as last seen: it binds tokens that name no key too.
        self._tenant_budgets: dict[str, Budget | None] = {}

    def forget(self, key_id: str) -> None:
        """Drop what is cached of a key revoked or changed through this gateway."""
        self.api_keys.forget(key_id)
        self._limits.forget(lambda held, _: isinstance(held, tuple) and held[1] == key_id)

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise unauthenticated(
                "You didn't provide an API key. Send it in the Authorization header "
                "(Authorization: Bearer YOUR_KEY) or in x-api-key."
            )
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise unauthenticated("The Authorization header must be 'Bearer <credential>'.")
        if looks_like_api_key(credential):
            return await self._api_key(credential)
        return await self._token(credential)

    async def _api_key(self, key: str) -> Principal:
        verdict = await self.api_keys.verdict(key)
        if verdict is None or not verdict.valid or not verdict.tenant:
            raise unauthenticated()
        if verdict.expires_at is not None and verdict.expires_at <= time.time():
            raise unauthenticated()
        limits = KeyLimits(
            verdict.budget, verdict.tenant_budget, verdict.rpm_limit, verdict.tpm_limit
        )
        self._limits.put((verdict.tenant, verdict.key_id), limits)
        self._tenant_budgets[verdict.tenant] = verdict.tenant_budget
        return Principal(
            tenant=verdict.tenant,
            user=verdict.user,
            roles=tuple(verdict.roles),
            via="api_key",
            models=None if verdict.models is None else tuple(verdict.models),
            key_id=verdict.key_id,
            budget=limits.budget,
            tenant_budget=limits.tenant_budget,
            rpm_limit=limits.rpm_limit,
            tpm_limit=limits.tpm_limit,
        )

    async def _token(self, token: str) -> Principal:
        try:
            claims = await self.verifier.verify(token)
        except InvalidToken as exc:
            raise unauthenticated() from exc
        except VerificationUnavailable as exc:
            raise unavailable("Access tokens cannot be verified right now.") from exc
        limits = None
        if claims.key_id:
            limits = await self._key_limits(claims.tenant, claims.key_id)
        return Principal(
            tenant=claims.tenant,
            user=claims.subject,
            roles=claims.roles,
            via="token",
            models=claims.models,
            key_id=claims.key_id,
            client_id=claims.client_id,
            scope=claims.scope,
            token=claims,
            budget=None if limits is None else limits.budget,
            tenant_budget=(
                self._tenant_budgets.get(claims.tenant) if limits is None else limits.tenant_budget
            ),
            rpm_limit=None if limits is None else limits.rpm_limit,
            tpm_limit=None if limits is None else limits.tpm_limit,
        )

    async def _key_limits(self, tenant: str, key_id: str) -> KeyLimits:
        """The limits of a token's key: cached, else asked of identity. Without an answer the
        token is refused (503): letting it through would lift its key's budget and limits."""

        async def fetch() -> KeyLimits:
            found = await self._fetch_limits(tenant, key_id)
            if not found.valid:
                raise _KeyGone(found.reason)
            self._tenant_budgets[tenant] = found.tenant_budget
            return KeyLimits(found.budget, found.tenant_budget, found.rpm_limit, found.tpm_limit)

        try:
            return await self._limits.get((tenant, key_id), fetch)
        except _KeyGone as exc:
            raise unauthenticated() from exc
        except Exception as exc:
            log.warning("the limits of API key %s could not be fetched: %r", key_id, exc)
            raise unavailable(
                "The limits of the API key this access token was issued for cannot be checked "
                "right now (identity does not answer); try again shortly."
            ) from exc
