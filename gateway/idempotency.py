"""``Idempotency-Key`` on a POST: the first response is stored and replayed for every retry.

The record is keyed by tenant, key and path (a key never replays another tenant's answer) and
remembers a digest of the body: the same key with another body is refused (422), and a retry
while the first request still runs gets 409. Responses are kept in Redis when configured
(shared by replicas), in this process otherwise. Streamed responses, 5xx, and refusals that
did no work (401, 403, 409, 429) are not stored, so such a request can be retried as is.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ApiError

log = logging.getLogger("soma.gateway.idempotency")

HEADER = "idempotency-key"
_NOT_STORED = frozenset({401, 403, 409, 429})
# A request still running after this long is presumed dead and its key usable again.
_PENDING_TTL = 600


@dataclass(frozen=True)
class Record:
    fingerprint: str
    status: int | None = None
    body: bytes = b""
    content_type: str = "application/json"

    def dumps(self) -> str:
        return json.dumps(
            {
                "fingerprint": self.fingerprint,
                "status": self.status,
                "body": base64.b64encode(self.body).decode(),
                "content_type": self.content_type,
            }
        )

    @classmethod
    def loads(cls, text: str | bytes) -> Record:
        data = json.loads(text)
        return cls(
            fingerprint=data["fingerprint"],
            status=data["status"],
            body=base64.b64decode(data["body"]),
            content_type=data["content_type"],
        )


class Store(Protocol):
    async def reserve(self, key: str, fingerprint: str) -> Record | None:
        """None: reserved for this request; otherwise the record already there."""
        ...

    async def complete(self, key: str, record: Record, ttl: float) -> None: ...

    async def release(self, key: str) -> None: ...


class LocalStore:
    def __init__(self) -> None:
        self._records: dict[str, tuple[float, Record]] = {}

    async def reserve(self, key: str, fingerprint: str) -> Record | None:
        now = time.monotonic()
        if len(self._records) > 100_000:
            self._records = {k: v for k, v in self._records.items() if v[0] > now}
        found = self._records.get(key)
        if found is not None and found[0] > now:
            return found[1]
        self._records[key] = (now + _PENDING_TTL, Record(fingerprint))
        return None

    async def complete(self, key: str, record: Record, ttl: float) -> None:
        self._records[key] = (time.monotonic() + ttl, record)

    async def release(self, key: str) -> None:
        self._records.pop(key, None)


class RedisStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix + "idem:"

    async def reserve(self, key: str, fingerprint: str) -> Record | None:
        name = self._prefix + key
        if await self._redis.set(name, Record(fingerprint).dumps(), nx=True, ex=_PENDING_TTL):
            return None
        found = await self._redis.get(name)
        if found is None:  # expired between the two calls: try once more
            ok = await self._redis.set(name, Record(fingerprint).dumps(), nx=True, ex=_PENDING_TTL)
            return None if ok else Record(fingerprint)
        return Record.loads(found)

    async def complete(self, key: str, record: Record, ttl: float) -> None:
        await self._redis.set(self._prefix + key, record.dumps(), ex=max(int(ttl), 1))

    async def release(self, key: str) -> None:
        await self._redis.delete(self._prefix + key)


class IdempotencyMiddleware:
    """Pure ASGI, so streamed responses pass through untouched."""

    def __init__(self, app: ASGIApp, gateway_state: object) -> None:
        self.app = app
        self._state = gateway_state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        idem_key = headers.get(HEADER)
        gateway = getattr(self._state, "gateway", None)
        if not idem_key or gateway is None:
            await self.app(scope, receive, send)
            return
        if len(idem_key) > 255:
            error = ApiError(
                400, "Idempotency-Key is longer than 255 characters.", param="Idempotency-Key"
            )
            await error.response()(scope, receive, send)
            return
        try:
            principal = await gateway.authenticator.authenticate(headers.get("authorization"))
        except ApiError:
            await self.app(scope, receive, send)  # the route answers 401/503 itself
            return

        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        replayed = False

        async def replay_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        key = hashlib.sha256(
            "\0".join((principal.tenant, idem_key, scope["path"])).encode()
        ).hexdigest()
        fingerprint = hashlib.sha256(body).hexdigest()
        store: Store = gateway.idempotency
        found = await store.reserve(key, fingerprint)
        if found is not None:
            await _answer_existing(found, fingerprint, scope, receive, send)
            return

        status: int | None = None
        content_type = ""
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
            elif message["type"] == "http.response.body" and not content_type.startswith(
                "text/event-stream"
            ):
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            await store.release(key)
            raise
        storable = (
            status is not None
            and status < 500
            and status not in _NOT_STORED
            and not content_type.startswith("text/event-stream")
        )
        if storable:
            record = Record(
                fingerprint, status, b"".join(chunks), content_type or "application/json"
            )
            await store.complete(key, record, gateway.config.idempotency_ttl)
        else:
            await store.release(key)


async def _answer_existing(
    found: Record, fingerprint: str, scope: Scope, receive: Receive, send: Send
) -> None:
    if found.fingerprint != fingerprint:
        error = ApiError(
            422,
            "This Idempotency-Key was already used with a different request body.",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    elif found.status is None:
        error = ApiError(
            409,
            "A request with this Idempotency-Key is still being processed.",
            code="idempotency_key_in_use",
            param="Idempotency-Key",
        )
    else:
        await send(
            {
                "type": "http.response.start",
                "status": found.status,
                "headers": [
                    (b"content-type", found.content_type.encode()),
                    (b"content-length", str(len(found.body)).encode()),
                    (b"idempotent-replayed", b"true"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": found.body, "more_body": False})
        return
    await error.response()(scope, receive, send)
