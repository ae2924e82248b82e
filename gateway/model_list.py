"""The models the slm service routes, and the memory service's embedding model, cached briefly:
every chat and ``GET /v1/models`` needs it, and an unknown model is refused (404) before a saga
is started for it. Each model says its ``kind``, so a client finds the name ``/v1/embeddings``
takes, and a chat naming the embedding model is told so (400)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.auth import Principal
from gateway.dispatch import Dispatch, Refused
from gateway.errors import ApiError, model_not_found
from schemas.identity import SYSTEM_TENANT
from schemas.memory import MemoryEmbed, MemoryEmbedded
from schemas.models import ModelInfo

log = logging.getLogger("soma.gateway.models")

Fetch = Callable[[], Awaitable[list[ModelInfo]]]

# How long the list waits for the memory service: without it the chat models are still listed.
EMBEDDING_TIMEOUT = 2.0


async def embedding_model(dispatch: Dispatch) -> list[ModelInfo]:
    """The memory service's embedder (an embed of no texts names it), or none if it is down."""
    try:
        answer = await dispatch.ask(
            MemoryEmbed(texts=[]), MemoryEmbedded, tenant=SYSTEM_TENANT, timeout=EMBEDDING_TIMEOUT
        )
    except (ApiError, Refused) as exc:
        log.info("no embedding model listed: the memory service did not answer (%s)", exc)
        return []
    return [ModelInfo(id=answer.model, kind="embedding")]


class ModelList:
    def __init__(self, fetch: Fetch, ttl: float, miss_interval: float = 5.0) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._miss_interval = miss_interval
        self._models: dict[str, ModelInfo] = {}
        self._fetched_at = -float("inf")
        self._lock = asyncio.Lock()

    async def _refresh(self, older_than: float) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < older_than:
                return  # someone else refreshed while we waited
            models = await self._fetch()
            self._models = {m.id: m for m in models}
            self._fetched_at = time.monotonic()

    async def visible(self, principal: Principal) -> list[ModelInfo]:
        if time.monotonic() - self._fetched_at >= self._ttl:
            await self._refresh(self._ttl)
        return [m for m in self._models.values() if principal.may_use_model(m.id)]

    async def require(self, model: str, principal: Principal, kind: str = "chat") -> ModelInfo:
        """The model, or the 404 OpenAI gives for a model that is unknown or not allowed, or a
        400 for a model of another kind (an embedding model named in a chat)."""
        if time.monotonic() - self._fetched_at >= self._ttl:
            await self._refresh(self._ttl)
        found = self._models.get(model)
        if found is None and time.monotonic() - self._fetched_at >= self._miss_interval:
            await self._refresh(self._miss_interval)  # a model added since the last fetch
            found = self._models.get(model)
        if found is None or not principal.may_use_model(model):
            raise model_not_found(model)
        if found.kind != kind:
            raise ApiError(
                400,
                f"The model {model} is an {found.kind} model, not a {kind} model; "
                "GET /v1/models lists each model's kind.",
                param="model",
                code="wrong_model_kind",
            )
        return found
