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
    key: str
    limit: int


class Windows(Protocol):
    async def take(self, counters: list[Counter], need: int, add: int) -> int:
        """Seconds to wait when a counter has less than ``need`` left; else add ``add`` to all
        of them and return 0."""
        ...


class LocalWindows:
    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, int]] = {}

    async def take(self, counters: list[Counter], need: int, add: int) -> int:
        now = time.time()
        index = int(now // WINDOW)
        if len(self._counts) > 100_000:
            self._counts = {k: v for k, v in self._counts.items() if v[0] == index}
        wait = 0
        for c in counters:
            if c.limit > 0 and need > 0:
                window, used = self._counts.get(c.key, (index, 0))
                used = used if window == index else 0
                if used + need > c.limit:
                    wait = max(wait, math.ceil((index + 1) * WINDOW - now))
        if wait:
            return wait
        if add:
            for c in counters:
                window, used = self._counts.get(c.key, (index, 0))
                self._counts[c.key] = (index, (used if window == index else 0) + add)
        return 0


_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
local need = tonumber(ARGV[2])
local add = tonumber(ARGV[3])
local index = math.floor(now / window)
local wait = 0
if need > 0 then
  for i, key in ipairs(KEYS) do
    local limit = tonumber(ARGV[3 + i])
    if limit > 0 then
      local used = tonumber(redis.call('GET', key .. ':' .. index) or '0')
      if used + need > limit then
        local left = math.ceil((index + 1) * window - now)
        if left > wait then wait = left end
      end
    end
  end
end
if wait > 0 then return wait end
if add > 0 then
  for _, key in ipairs(KEYS) do
    local k = key .. ':' .. index
    redis.call('INCRBY', k, add)
    redis.call('EXPIRE', k, window * 2)
  end
end
return 0
"""


class RedisWindows:
    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_TAKE)

    async def take(self, counters: list[Counter], need: int, add: int) -> int:
        keys = [c.key for c in counters]
        args = [WINDOW, need, add, *(c.limit for c in counters)]
        return int(await self._script(keys=keys, args=args))


class RateLimiter:
    def __init__(self, windows: Windows, config: GatewayConfig) -> None:
        self._windows = windows
        self._config = config
        self._prefix = config.redis_prefix

    def _counters(
        self, principal: Principal, kind: str, per_key: int, per_tenant: int
    ) -> list[Counter]:
        return [
            Counter(f"{self._prefix}{kind}:key:{principal.tenant}:{principal.limit_id}", per_key),
            Counter(f"{self._prefix}{kind}:tenant:{principal.tenant}", per_tenant),
        ]

    async def admit_request(self, principal: Principal) -> None:
        c = self._config
        per_key = principal.rpm_limit if principal.rpm_limit is not None else c.rate_rpm
        counters = self._counters(principal, "rpm", per_key, c.rate_tenant_rpm)
        wait = await self._windows.take(counters, need=1, add=1)
        if wait:
            raise rate_limited(
                "Rate limit reached for requests per minute. Please try again later.",
                wait,
                "requests",
            )

    async def admit_tokens(self, principal: Principal) -> None:
        """Refuse while this minute's token budget is spent."""
        counters = self._token_counters(principal)
        wait = await self._windows.take(counters, need=1, add=0)
        if wait:
            raise rate_limited(
                "Rate limit reached for tokens per minute. Please try again later.",
                wait,
                "tokens",
            )

    async def record_tokens(self, principal: Principal, tokens: int) -> None:
        if tokens > 0:
            await self._windows.take(self._token_counters(principal), need=0, add=tokens)

    def _token_counters(self, principal: Principal) -> list[Counter]:
        """A key's own ``tpm_limit`` replaces the per-key default; the tenant's stays."""
        c = self._config
        per_key = principal.tpm_limit if principal.tpm_limit is not None else c.rate_tpm
        return self._counters(principal, "tpm", per_key, c.rate_tenant_tpm)
