"""Rate limits: requests and tokens per minute, per key and per tenant, in fixed one-minute windows.

A key's own ``rpm_limit`` / ``tpm_limit`` (set on the key, carried in identity's verdict) takes
the place of the per-key defaults ``SOMA_RATE_RPM`` / ``SOMA_RATE_TPM``.

With ``REDIS_URL`` the counters live in Redis and every gateway replica shares them: one Lua
script checks every counter and increments them all only if none would pass its limit, using the
Redis server's clock so replicas agree on the window. Without Redis they live in this process.
Tokens are counted after a completion (its real usage) and checked before the next request.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis

from gateway.auth import Principal
from gateway.config import GatewayConfig
from gateway.errors import rate_limited

WINDOW = 60


@dataclass(frozen=True)
class Counter:
    """One window counter: a pass needs ``need`` left under ``limit`` and adds ``add``."""

    key: str
    limit: int
    need: int
    add: int
    kind: str  # what it counts, as the refusal names it: "requests" or "tokens"


class Windows(Protocol):
    async def take(self, counters: list[Counter]) -> tuple[int, Counter | None]:
        """When a counter has less than its ``need`` left: the seconds to wait and that
        counter. Otherwise add each counter's ``add`` to it and return ``(0, None)``."""
        ...


class LocalWindows:
    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, int]] = {}

    async def take(self, counters: list[Counter]) -> tuple[int, Counter | None]:
        now = time.time()
        index = int(now // WINDOW)
        if len(self._counts) > 100_000:
            self._counts = {k: v for k, v in self._counts.items() if v[0] == index}
        for c in counters:
            if c.need > 0:
                window, used = self._counts.get(c.key, (index, 0))
                used = used if window == index else 0
                if used + c.need > c.limit:
                    return math.ceil((index + 1) * WINDOW - now), c
        for c in counters:
            if c.add:
                window, used = self._counts.get(c.key, (index, 0))
                self._counts[c.key] = (index, (used if window == index else 0) + c.add)
        return 0, None


# KEYS: the counters; ARGV: the window, then each counter's limit, need and add.
# Returns {seconds to wait, the 1-based index of the counter that refused} or {0, 0}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
local index = math.floor(now / window)
for i, key in ipairs(KEYS) do
  local limit, need = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  if need > 0 then
    local used = tonumber(redis.call('GET', key .. ':' .. index) or '0')
    if used + need > limit then
      return {math.ceil((index + 1) * window - now), i}
    end
  end
end
for i, key in ipairs(KEYS) do
  local add = tonumber(ARGV[3 * i + 1])
  if add > 0 then
    local k = key .. ':' .. index
    redis.call('INCRBY', k, add)
    redis.call('EXPIRE', k, window * 2)
  end
end
return {0, 0}
"""


class RedisWindows:
    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_TAKE)

    async def take(self, counters: list[Counter]) -> tuple[int, Counter | None]:
        keys = [c.key for c in counters]
        args: list[int] = [WINDOW]
        for c in counters:
            args += [c.limit, c.need, c.add]
        wait, refused = await self._script(keys=keys, args=args)
        return int(wait), counters[int(refused) - 1] if int(wait) else None


_REFUSALS = {
    "requests": "Rate limit reached for requests per minute. Please try again later.",
    "tokens": "Rate limit reached for tokens per minute. Please try again later.",
}


class RateLimiter:
    """The limits of a caller's key and tenant. Only counters with a limit are kept: an
    unlimited caller costs no round trip to Redis, and a request is admitted in one."""

    def __init__(self, windows: Windows, config: GatewayConfig) -> None:
        self._windows = windows
        self._config = config
        self._prefix = config.redis_prefix

    def _counters(
        self, principal: Principal, kind: str, limits: tuple[int, int], need: int, add: int
    ) -> list[Counter]:
        per_key, per_tenant = limits
        name = "rpm" if kind == "requests" else "tpm"
        key = f"{self._prefix}{name}:key:{principal.tenant}:{principal.limit_id}"
        tenant = f"{self._prefix}{name}:tenant:{principal.tenant}"
        return [
            Counter(k, limit, need, add, kind)
            for k, limit in ((key, per_key), (tenant, per_tenant))
            if limit > 0
        ]

    def _request_limits(self, principal: Principal) -> tuple[int, int]:
        c = self._config
        per_key = principal.rpm_limit if principal.rpm_limit is not None else c.rate_rpm
        return per_key, c.rate_tenant_rpm

    def _token_limits(self, principal: Principal) -> tuple[int, int]:
        """A key's own ``tpm_limit`` replaces the per-key default; the tenant's stays."""
        c = self._config
        per_key = principal.tpm_limit if principal.tpm_limit is not None else c.rate_tpm
        return per_key, c.rate_tenant_tpm

    async def admit(self, principal: Principal, *, tokens: bool = False) -> None:
        """Count the request, refused while this minute's requests are spent; with ``tokens``
        also refused while this minute's tokens are (a request that spends them)."""
        counters = self._counters(principal, "requests", self._request_limits(principal), 1, 1)
        if tokens:
            counters += self._counters(principal, "tokens", self._token_limits(principal), 1, 0)
        if not counters:
            return
        wait, refused = await self._windows.take(counters)
        if wait and refused is not None:
            raise rate_limited(_REFUSALS[refused.kind], wait, refused.kind)

    async def record_tokens(self, principal: Principal, tokens: int) -> None:
        """Tokens are counted after a completion (its real usage) and checked before the next."""
        if tokens > 0:
            counters = self._counters(principal, "tokens", self._token_limits(principal), 0, tokens)
            if counters:
                await self._windows.take(counters)
