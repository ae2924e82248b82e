"""Who a verified credential speaks for — the same shape whether it was an API key or a token.

Kept free of SQL and bus imports: the gateway builds its authorisation on this type.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    user: str
    roles: tuple[str, ...]
    # None: every model; otherwise the only models this credential may call.
    models: tuple[str, ...] | None = None
    # The API key that authenticated, or from which the token's session was started.
    key_id: str | None = None
    # Filled in for access tokens only.
    client_id: str | None = None
    scope: tuple[str, ...] = ()
    jti: str | None = None
    session: str | None = None
    expires_at: float | None = None

    def may_use_model(self, model: str) -> bool:
        return self.models is None or model in self.models
