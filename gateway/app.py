"""The gateway's composition root: ``create_app(settings)`` builds the FastAPI app whose lifespan
opens the bus connection and Redis; ``serve(settings)`` runs it (``soma run gateway``). The gateway
holds no SQL: it publishes and awaits, so its readiness is the bus's (and Redis's when used).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from redis.asyncio import Redis

from bus import tracing
from bus.connection import connect
from bus.request import Requester
from bus.streams import provision
from gateway import errors
from gateway.auth import ApiKeyCache, Authenticator
from gateway.body_limit import BodyLimitMiddleware
from gateway.budgets import BudgetGuard
from gateway.config import GatewayConfig
from gateway.context import Gateway
from gateway.dispatch import Dispatch
from gateway.idempotency import IdempotencyMiddleware, RedisStore, Store, open_bucket
from gateway.limits import LocalWindows, RateLimiter, RedisWindows
from gateway.metrics import MetricsMiddleware
from gateway.model_list import ModelList, embedding_model
from gateway.routes import (
    admin,
    auth,
    chat,
    embeddings,
    health,
    memory,
    messages,
    models,
    runs,
    tasks,
    tools,
    usage,
)
from gateway.spend import SpendFollower, SpendLedger
from gateway.tokens import TokenRules, TokenVerifier
from kernel.settings import Settings
from kernel.telemetry import HttpSpans
from schemas.identity import (
    REVOCATIONS_BUCKET,
    SYSTEM_TENANT,
    IdentityGetKeyLimits,
    IdentityKeyLimitsFound,
    IdentityKeyVerified,
    IdentityVerifyKey,
)
from schemas.models import ModelInfo, SlmListModels, SlmModelsListed

log = logging.getLogger("soma.gateway")

# Shutdown must end: a stuck close (a broker gone away) is logged and skipped.
_CLOSE_TIMEOUT = 5.0

DESCRIPTION = (
    "OpenAI-compatible chat completions, embeddings and models, Anthropic's Messages API, plus "
    "agent tasks, memory, tools, usage, tokens and administration. Every request is a command "
    "on the Soma bus. Authenticate with `Authorization: Bearer <API key or access token>` (or "
    '`x-api-key`). Errors have the shape `{"error": {"message", "type", "param", "code"}}`, '
    'except on `/v1/messages*`, where they have Anthropic\'s: `{"type": "error", "error": '
    '{"type", "message"}}`.'
)


async def _verifier(nc: NATS, js: JetStreamContext, config: GatewayConfig) -> TokenVerifier:
    """Tokens checked against identity's bucket, watched (see ``gateway.tokens``)."""
    return TokenVerifier(
        TokenRules(config.jwt_issuer, config.jwt_audience, config.jwt_leeway),
        await js.key_value(REVOCATIONS_BUCKET),
        lambda: bool(nc.is_connected),
        lambda: int(nc.stats["reconnects"]),
        miss_interval=config.jwks_miss_interval,
        revocations_max_age=config.revocations_max_age,
    )


async def _build(
    settings: Settings, config: GatewayConfig, clock: Callable[[], float] = time.time
) -> tuple[Gateway, list[Any]]:
    """Everything the routes use; the second value lists what to close, in order. ``clock``
    is what budgets' windows are judged by (tests move it on)."""
    nc = await connect(settings.nats_url, "soma-gateway")
    js = nc.jetstream()
    await provision(js, settings)
    # Only the events its requests await: following every event would cost this gateway the
    # whole bus's traffic, whoever it is for (bus/request.py).
    requester = Requester(nc, js, subject=None)
    await requester.start()
    dispatch = Dispatch(nc, js, requester, config.bus_timeout)

    redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
    windows = RedisWindows(redis) if redis is not None else LocalWindows()
    # Idempotency records outlive this process: in Redis when there is one, else in the bus.
    store: Store = (
        RedisStore(redis, config.redis_prefix, config.idempotency_ttl)
        if redis is not None
        else await open_bucket(js, config.idempotency_ttl, settings.stream_replicas)
    )

    async def verify_key(key_id: str, secret_sha256: str) -> IdentityKeyVerified:
        return await dispatch.ask(
            IdentityVerifyKey(key_id=key_id, secret_sha256=secret_sha256),
            IdentityKeyVerified,
            tenant=SYSTEM_TENANT,
        )

    async def key_limits(tenant: str, key_id: str) -> IdentityKeyLimitsFound:
        return await dispatch.ask(
            IdentityGetKeyLimits(key_id=key_id), IdentityKeyLimitsFound, tenant=tenant
        )

    async def fetch_models() -> list[ModelInfo]:
        chat_models, embedding = await asyncio.gather(
            dispatch.ask(SlmListModels(), SlmModelsListed, tenant=SYSTEM_TENANT),
            embedding_model(dispatch),
        )
        return [*chat_models.models, *embedding]

    verifier = await _verifier(nc, js, config)
    spend = SpendFollower(js, SpendLedger(config.budget_lookback), clock)

    async def nats_ok() -> bool:
        return bool(nc.is_connected)

    checks: dict[str, Callable[[], Awaitable[bool]]] = {"nats": nats_ok}
    if redis is not None:
        redis_client = redis

        async def redis_ok() -> bool:
            return bool(await redis_client.ping())

        checks["redis"] = redis_ok

    gateway = Gateway(
        settings=settings,
        config=config,
        dispatch=dispatch,
        authenticator=Authenticator(
            verifier,
            ApiKeyCache(verify_key, config.api_key_cache),
            key_limits,
            config.api_key_cache,
        ),
        limiter=RateLimiter(windows, config),
        idempotency=store,
        models=ModelList(fetch_models, config.models_cache, config.jwks_miss_interval),
        budgets=BudgetGuard(spend.ledger, clock),
        ready_checks=checks,
    )
    await verifier.prime()
    verifier.start()
    await spend.start()
    return gateway, [
        spend.stop,
        verifier.stop,
        requester.close,
        nc.drain,
        *([redis.aclose] if redis is not None else []),
    ]


def create_app(
    settings: Settings,
    config: GatewayConfig | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    config = config or GatewayConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway, closers = await _build(settings, config, clock)
        app.state.gateway = gateway
        try:
            yield
        finally:
            for close in closers:
                try:
                    await asyncio.wait_for(close(), _CLOSE_TIMEOUT)
                except Exception as exc:
                    name = getattr(close, "__qualname__", repr(close))
                    log.warning("closing the gateway: %s: %r", name, exc)

    app = FastAPI(
        title="Soma Agent Hub",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    errors.install(app)
    routes = (chat, messages, models, embeddings, tasks, runs, memory, tools, usage, auth, admin)
    for module in (*routes, health):
        app.include_router(module.router)
    # Added inside out: metrics see everything, the body limit guards what idempotency reads.
    app.add_middleware(IdempotencyMiddleware, gateway_state=app.state)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    if tracing.enabled():
        app.add_middleware(HttpSpans)
    return app


async def serve(settings: Settings) -> None:
    """Run the gateway on ``SOMA_HTTP_HOST:SOMA_HTTP_PORT`` until SIGINT/SIGTERM or until
    cancelled; either way open requests finish and the lifespan closes its connections."""
    config = GatewayConfig()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, config),
            host=settings.http_host,
            port=settings.http_port,
            log_level="info",
            log_config=None,  # the process's own log format (kernel.logs), JSON lines included
            server_header=False,
            timeout_graceful_shutdown=config.drain_timeout,
        )
    )
    running = asyncio.create_task(server.serve())
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        server.should_exit = True
        await running
        raise
