"""What every route needs, built once per process in the app's lifespan, and the dependency that
turns a request into an authorised, rate-limited ``Principal``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from gateway.auth import Authenticator, Principal, authorize, credential_header
from gateway.budgets import BudgetGuard
from gateway.config import GatewayConfig
from gateway.dispatch import Dispatch
from gateway.idempotency import Store
from gateway.limits import RateLimiter
from gateway.model_list import ModelList
from kernel.settings import Settings

bearer = HTTPBearer(auto_error=False, description="An API key (sk-soma-…) or an access token")
api_key_header = APIKeyHeader(
    name="x-api-key",
    auto_error=False,
    description="The same credential as Anthropic's clients send it; read when there is no "
    "Authorization header",
)


@dataclass
class Gateway:
    settings: Settings
    config: GatewayConfig
    dispatch: Dispatch
    authenticator: Authenticator
    limiter: RateLimiter
    idempotency: Store
    models: ModelList
    budgets: BudgetGuard | None = None
    ready_checks: dict[str, Callable[[], Awaitable[bool]]] = field(default_factory=dict)


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


# Areas whose requests spend money (model calls): refused once a budget is spent.
SPENDING = frozenset({"chat", "embeddings", "tasks"})


def caller(area: str, *, tokens: bool = False) -> Callable[..., Awaitable[Principal]]:
    """Dependency: authenticate, check the role for ``area``, the budgets of the key and the
    tenant when the area spends, and count the request; with ``tokens`` (a route that spends
    them) also check the minute's token limits, in the same round trip."""

    async def resolve(
        request: Request,
        _: HTTPAuthorizationCredentials | None = Security(bearer),
        __: str | None = Security(api_key_header),
    ) -> Principal:
        gateway = gateway_of(request)
        principal = await gateway.authenticator.authenticate(credential_header(request.headers))
        authorize(principal, area)
        if area in SPENDING and gateway.budgets is not None:
            gateway.budgets.admit(
                principal.tenant, principal.key_id, principal.budget, principal.tenant_budget
            )
        await gateway.limiter.admit(principal, tokens=tokens)
        return principal

    return resolve
