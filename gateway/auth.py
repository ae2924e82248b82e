"""Who is calling: ``Authorization: Bearer <access token | API key>`` → a ``Principal``.
``x-api-key: <API key or token>``, as Anthropic's clients send it, counts as the same bearer
credential when there is no ``Authorization`` header.

Access tokens are checked locally (``gateway.tokens``). API keys are checked by identity over
the bus and the verdict reused for a few seconds, so a revoked key stops working within that
time; concurrent requests with the same key share one bus round trip.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.credentials import looks_like_api_key, parse_api_key, sha256_hex
from gateway.errors import forbidden, unauthenticated, unavailable
from gateway.tokens import AccessClaims, InvalidToken, TokenVerifier, VerificationUnavailable
from schemas.identity import Budget, IdentityKeyVerified

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


class ApiKeyCache:
    def __init__(self, verify: VerifyKey, ttl: float) -> None:
        self._verify = verify
        self._ttl = ttl
        self._verdicts: dict[str, tuple[float, IdentityKeyVerified]] = {}
        self._pending: dict[str, asyncio.Future[IdentityKeyVerified]] = {}

    def forget(self, key_id: str) -> None:
        """Drop cached verdicts of a key revoked through this gateway."""
        self._verdicts = {k: v for k, v in self._verdicts.items() if v[1].key_id != key_id}

    async def verdict(self, key: str) -> IdentityKeyVerified | None:
        presented = parse_api_key(key)
        if presented is None:
            return None
        digest = sha256_hex(key)
        now = time.monotonic()
        cached = self._verdicts.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._pending.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[IdentityKeyVerified] = asyncio.get_running_loop().create_future()
        self._pending[digest] = future
        try:
            verdict = await self._verify(presented.key_id, presented.secret_sha256)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # marked as retrieved: the waiters get it, nobody warns
            raise
        finally:
            self._pending.pop(digest, None)
        future.set_result(verdict)
        if self._ttl > 0:
            if len(self._verdicts) > 10_000:
                self._verdicts = {k: v for k, v in self._verdicts.items() if v[0] > now}
            self._verdicts[digest] = (now + self._ttl, verdict)
        return verdict


@dataclass(frozen=True)
class KeyLimits:
    budget: Budget | None
    tenant_budget: Budget | None
    rpm_limit: int | None
    tpm_limit: int | None


class Authenticator:
    def __init__(self, verifier: TokenVerifier, api_keys: ApiKeyCache) -> None:
        self.verifier = verifier
        self.api_keys = api_keys
        # The limits of each key seen, by key id: an access token started from a key names it
        # (``kid`` claim) and is held to them too, as soon as this gateway has seen the key.
        self._limits: dict[str, KeyLimits] = {}
        # Each tenant's budget as last seen in a key's verdict: it binds tokens of any session.
        self._tenant_budgets: dict[str, Budget | None] = {}

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
        if len(self._limits) > 100_000:
            self._limits.clear()
        self._limits[verdict.key_id] = limits
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
        limits = self._limits.get(claims.key_id or "")
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
            tenant_budget=self._tenant_budgets.get(claims.tenant),
            rpm_limit=None if limits is None else limits.rpm_limit,
            tpm_limit=None if limits is None else limits.tpm_limit,
        )
