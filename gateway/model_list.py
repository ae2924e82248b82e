"""The models the slm service routes, cached briefly: every chat and ``GET /v1/models`` needs it,
and an unknown model is refused (404) before a saga is started for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from gateway.auth import Principal
from gateway.errors import model_not_found
from schemas.models import ModelInfo

Fetch = Callable[[], Awaitable[list[ModelInfo]]]


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

    async def require(self, model: str, principal: Principal) -> ModelInfo:
        """The model, or the 404 OpenAI gives for a model that is unknown or not allowed."""
        if time.monotonic() - self._fetched_at >= self._ttl:
            await self._refresh(self._ttl)
        found = self._models.get(model)
        if found is None and time.monotonic() - self._fetched_at >= self._miss_interval:
            await self._refresh(self._miss_interval)  # a model added since the last fetch
            found = self._models.get(model)
        if found is None or not principal.may_use_model(model):
            raise model_not_found(model)
        return found
