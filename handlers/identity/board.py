"""Identity's side of the revocations bucket: write what changed, nothing while idle.

Gateways verify access tokens locally, so a revocation or a new signing key must reach each of
them; they watch the ``soma_revocations`` bucket (see ``schemas.identity``). The database stays
the record; the bucket is its published copy. So a write that is lost (identity stopped between
its commit and the put, or the bus was briefly away) is made good by the next ``sync``: after
each command that may revoke, after each maintenance round, and at start, when this process
checks the bucket for what it holds already instead of writing everything again.

Each revocation is put with a per-message TTL of the time its tokens have left, so the server
drops it when it can no longer matter; the key set has no TTL and is rewritten only when it
differs from what was last written.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.identity import revocation
from schemas.identity import (
    JWKS_KEY,
    REVOCATIONS_BUCKET,
    IdentityJwksPublished,
    Revocation,
    revocation_key,
)

_SUBJECT = f"$KV.{REVOCATIONS_BUCKET}."
_STREAM = f"KV_{REVOCATIONS_BUCKET}"


class RevocationBoard:
    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        engine: AsyncEngine,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self._kv = kv
        self._engine = engine
        self._clock = clock
        # Keys this process has seen written, until their entries expire.
        self._written: dict[str, float] = {}
        self._cursor: float | None = None
        self._jwks: list[dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, js: JetStreamContext, engine: AsyncEngine, clock: Callable[[], float] = time.time
    ) -> RevocationBoard:
        return cls(js, await js.key_value(REVOCATIONS_BUCKET), engine, clock)

    async def _held(self, key: str) -> bytes | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        return entry.value

    async def sync(self) -> int:
        """Write each live revocation this process has not seen written; returns how many."""
        async with self._lock:
            now = self._clock()
            first = self._cursor is None
            since = None if self._cursor is None else self._cursor - revocation.OVERLAP
            entries = await revocation.list_revocations(self._engine, since, now)
            written = 0
            for e in entries:
                entry = Revocation(
                    kind=e.kind, subject=e.subject, revoked_at=e.revoked_at, expires_at=e.expires_at
                )
                key = revocation_key(entry)
                if key in self._written:
                    continue
                if not (first and await self._held(key) is not None):
                    ttl = max(1, math.ceil(e.expires_at - now))
                    await self._js.publish(
                        _SUBJECT + key, msgspec.json.encode(entry), stream=_STREAM, msg_ttl=ttl
                    )
                    written += 1
                self._written[key] = e.expires_at
            self._cursor = now
            self._written = {k: until for k, until in self._written.items() if until >= now}
            return written

    async def publish_jwks(self, keys: list[dict[str, Any]]) -> bool:
        """Write the public key set when it differs from the bucket's; True when written."""
        async with self._lock:
            if self._jwks is None:
                held = await self._held(JWKS_KEY)
                if held is not None:
                    self._jwks = msgspec.json.decode(held, type=IdentityJwksPublished).keys
            if keys == self._jwks:
                return False
            await self._kv.put(JWKS_KEY, msgspec.json.encode(IdentityJwksPublished(keys=keys)))
            self._jwks = keys
            return True
