"""Who is signed in: the gateway's own API answers, the console only keeps the answer briefly.

The browser sends the API key or access token it was given on every call, as it would to the
API; the console asks ``GET /v1/auth/whoami`` what it belongs to and admits only the operator
and admin roles. An operator sees every tenant; an admin only its own, wherever the data is
read (the stream subjects, the saga queries, the dead letters are all narrowed here).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import httpx

CONSOLE_ROLES = ("operator", "admin")


class AccessError(Exception):
    """A refusal, with the HTTP status and a message that says what to do."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Operator:
    tenant: str
    user: str
    roles: tuple[str, ...]
    credential: str

    @property
    def sees_all_tenants(self) -> bool:
        return "operator" in self.roles

    def tenant_scope(self, requested: str | None) -> str | None:
        """The tenant a read is narrowed to: the one asked for, or all (None) for an operator;
        always the own tenant for anyone else, who is refused another."""
        requested = (requested or "").strip() or None
        if self.sees_all_tenants:
            return requested
        if requested and requested != self.tenant:
            raise AccessError(
                403,
                f"Your role sees only tenant {self.tenant!r}; sign in with an operator key "
                "to look at another tenant.",
                "forbidden",
            )
        return self.tenant

    def public(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "user": self.user,
            "roles": list(self.roles),
            "all_tenants": self.sees_all_tenants,
        }


def bearer(authorization: str | None) -> str:
    scheme, _, credential = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise AccessError(
            401,
            "Sign in with an API key or an access token (Authorization: Bearer <credential>).",
            "unauthenticated",
        )
    return credential.strip()


class Sessions:
    """Credentials checked by the gateway, each answer reused for ``ttl`` seconds."""

    def __init__(self, client: httpx.AsyncClient, ttl: float) -> None:
        self._client = client
        self._ttl = ttl
        self._seen: dict[str, tuple[float, Operator]] = {}

    async def operator(self, authorization: str | None) -> Operator:
        credential = bearer(authorization)
        digest = hashlib.sha256(credential.encode()).hexdigest()
        now = time.monotonic()
        cached = self._seen.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            answer = await self._client.get(
                "/v1/auth/whoami", headers={"Authorization": f"Bearer {credential}"}
            )
        except httpx.HTTPError as exc:
            raise AccessError(
                503,
                f"The gateway cannot be reached ({type(exc).__name__}); is it running? "
                "The console signs in through it (SOMA_GATEWAY_URL).",
                "unavailable",
            ) from exc
        if answer.status_code in (401, 403):
            raise AccessError(401, "The gateway did not accept this credential.", "unauthenticated")
        if answer.status_code != 200:
            raise AccessError(
                503, f"The gateway answered {answer.status_code}; try again.", "unavailable"
            )
        who = answer.json()
        roles = tuple(str(r) for r in who.get("roles", []))
        if not set(roles) & set(CONSOLE_ROLES):
            raise AccessError(
                403,
                f"The console is for operators and admins; this credential's roles are "
                f"{', '.join(roles) or 'none'}. Ask an admin for an admin or operator key.",
                "forbidden",
            )
        operator = Operator(str(who["tenant"]), str(who["user"]), roles, credential)
        if len(self._seen) > 1000:
            self._seen = {k: v for k, v in self._seen.items() if v[0] > now}
        self._seen[digest] = (now + self._ttl, operator)
        return operator

    def require_operator(self, operator: Operator, what: str) -> None:
        if not operator.sees_all_tenants:
            raise AccessError(
                403, f"{what} covers every tenant; it needs the operator role.", "forbidden"
            )
