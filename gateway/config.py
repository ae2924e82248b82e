"""Gateway limits and timings, from ``SOMA_*`` environment variables.

Kept apart from ``kernel.settings`` because only the gateway reads them; connection URLs
(``NATS_URL``, ``REDIS_URL``, ``DATABASE_URL``) and the listen address stay there.
A rate of 0 means "no limit".
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewayConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    # Requests and tokens per minute, per API key (or token session) and per tenant.
    rate_rpm: int = Field(default=600, ge=0, alias="SOMA_RATE_RPM")
    rate_tenant_rpm: int = Field(default=6000, ge=0, alias="SOMA_RATE_TENANT_RPM")
    rate_tpm: int = Field(default=200_000, ge=0, alias="SOMA_RATE_TPM")
    rate_tenant_tpm: int = Field(default=2_000_000, ge=0, alias="SOMA_RATE_TENANT_TPM")
    # Namespaces the gateway's Redis keys, so several deployments can share one Redis.
    redis_prefix: str = Field(default="soma:gateway:", alias="SOMA_REDIS_PREFIX")

    # Access tokens: what the identity service signs, and the clock skew tolerated.
    jwt_issuer: str = Field(default="soma", alias="SOMA_JWT_ISSUER")
    jwt_audience: str = Field(default="soma-gateway", alias="SOMA_JWT_AUDIENCE")
    jwt_leeway: float = Field(default=5, ge=0, alias="SOMA_JWT_LEEWAY_SECONDS")
    # An unknown ``kid`` triggers a key-set fetch, at most this often.
    jwks_miss_interval: float = Field(default=5, ge=0, alias="SOMA_JWKS_MISS_SECONDS")
    # Past this age of the last revocation snapshot, access tokens are refused (fail closed);
    # 0 accepts tokens whatever the snapshot's age.
    revocations_max_age: float = Field(default=300, ge=0, alias="SOMA_REVOCATIONS_MAX_AGE")
    # How far back the gateway reads usage events to sum budgets' windows: the longest
    # budget_duration it can enforce (longer windows count only this much of their spend).
    budget_lookback: float = Field(default=31 * 86400, gt=0, alias="SOMA_BUDGET_LOOKBACK")
    # How long an API key verdict is reused; a revoked key stops working within this time.
    api_key_cache: float = Field(default=5, ge=0, le=5, alias="SOMA_API_KEY_CACHE_SECONDS")

    # Request bodies: unset, as large as fits in one bus message (the NATS server's max_payload,
    # read from the connection, less room for the envelope); set, that size at most.
    max_body_bytes: int | None = Field(default=None, gt=0, alias="SOMA_MAX_BODY_BYTES")
    # On SIGTERM the gateway stops accepting requests and lets those in flight finish for this
    # long before cutting them off; `soma up` waits for it before stopping anything else.
    drain_timeout: int = Field(default=30, ge=0, alias="SOMA_DRAIN_TIMEOUT")
    # A bus round trip to a handler, and a whole chat turn or task start.
    bus_timeout: float = Field(default=10, gt=0, alias="SOMA_BUS_TIMEOUT")
    chat_timeout: float = Field(default=300, gt=0, alias="SOMA_CHAT_TIMEOUT")
    # How long a tool invocation is awaited: longer than any tool's own limit
    # (SOMA_TOOLS_PYTHON_TIMEOUT, SOMA_TOOLS_HTTP_TIMEOUT, …), so a tool that runs out of time
    # answers with its own timeout error rather than the gateway with a generic 503.
    tool_timeout: float = Field(default=150, gt=0, alias="SOMA_TOOL_TIMEOUT")
    # SSE comment lines keep idle proxies from closing a quiet stream.
    stream_keepalive: float = Field(default=15, gt=0, alias="SOMA_STREAM_KEEPALIVE_SECONDS")
    models_cache: float = Field(default=30, ge=0, alias="SOMA_MODELS_CACHE_SECONDS")
    # Idempotency-Key records are kept this long after their last change.
    idempotency_ttl: float = Field(default=86400, gt=0, alias="SOMA_IDEMPOTENCY_TTL")
    # A running request renews its reservation; one not renewed for this long (its gateway
    # died) is taken over by the next retry.
    idempotency_lease: float = Field(default=15, gt=0, alias="SOMA_IDEMPOTENCY_LEASE_SECONDS")
    # How long a retry waits for the first request still running before answering 409.
    idempotency_wait: float = Field(default=300, ge=0, alias="SOMA_IDEMPOTENCY_WAIT_SECONDS")
    # "direct" (the default): every chat turn is checked by policy and uses memory, its
    # commands sent by the gateway itself (gateway/direct.py): no saga runner on the turn's
    # path; a request with an Idempotency-Key runs as the saga. "full": the same turn as a
    # chat_turn saga, listed by `soma sagas`. "passthrough": the turn goes straight to the
    # model, one command to the slm process with no saga (still in the event trail, still
    # metered) — for deployments that front a model with their own controls.
    chat_pipeline: Literal["full", "direct", "passthrough"] = Field(
        default="direct", alias="SOMA_CHAT_PIPELINE"
    )
