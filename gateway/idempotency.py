"""``Idempotency-Key`` on a POST: the first outcome is stored and every retry is answered with it.

The record is keyed by tenant, key and path (a key never replays another tenant's answer) and
remembers a digest of the body: the same key with another body is refused (422). Records are
durable wherever the gateway runs: in Redis when ``REDIS_URL`` is set, otherwise in the JetStream
key-value bucket ``soma_idempotency`` — the bus is always there, survives a gateway crash and is
shared by replicas. Nothing is kept only in this process.

A request reserves its key with an atomic create, then holds a lease on it that it renews while
it runs. A retry that finds

- a completed record replays it (``Idempotent-Replayed: true``);
- a pending record with a live lease waits for it, up to ``SOMA_IDEMPOTENCY_WAIT_SECONDS`` (then
  409, the first request still running);
- a pending record whose lease lapsed (its gateway died) takes the reservation over with a
  compare-and-set and runs the request again.

Running it again is safe because the work's ids do not depend on the attempt: ``Attempt`` (in
``scope["state"]["idempotency"]``) gives routes a request id derived from the record key and the
body, which chat turns and tasks use as their saga id (a second start attaches to the first), and
``gateway.dispatch`` derives each command's message id from it, so the bus drops a re-sent command.

Streamed responses, 5xx, and refusals that did no work (401, 403, 409, 429) are not stored, so
such a request can be retried as is; a streamed retry still finds the same saga and never starts a
second turn.

The outcome is settled (stored, or the key freed) before the last part of the answer is sent: a
caller that has its answer finds the record complete, never the reservation still pending.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Protocol

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue
from redis.asyncio import Redis
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import credential_header
from gateway.dispatch import request_ids
from gateway.errors import ApiError

log = logging.getLogger("soma.gateway.idempotency")

HEADER = "idempotency-key"
BUCKET = "soma_idempotency"
_NOT_STORED = frozenset({401, 403, 409, 429})
# How often a waiting retry looks at the record again.
_POLL = 0.2


@dataclass(frozen=True)
class Attempt:
    """What a route needs to make a retried request do the same work, not new work."""

    # The same for every retry of one key with one body: a saga id, a command id prefix.
    request_id: str
    # True when this attempt took the key over from a request whose gateway died.
    takeover: bool = False


def attempt_of(scope: Scope) -> Attempt | None:
    found = scope.get("state", {}).get("idempotency")
    return found if isinstance(found, Attempt) else None


@dataclass(frozen=True)
class Record:
    fingerprint: str
    status: int | None = None
    body: bytes = b""
    content_type: str = "application/json"
    # The request holding a pending record, and until when (epoch seconds) it counts as alive.
    owner: str = ""
    lease_until: float = 0.0

    @property
    def pending(self) -> bool:
        return self.status is None

    def dumps(self) -> bytes:
        return json.dumps(
            {
                "fingerprint": self.fingerprint,
                "status": self.status,
                "body": base64.b64encode(self.body).decode(),
                "content_type": self.content_type,
                "owner": self.owner,
                "lease_until": self.lease_until,
            }
        ).encode()

    @classmethod
    def loads(cls, text: str | bytes) -> Record:
        data = json.loads(text)
        return cls(
            fingerprint=data["fingerprint"],
            status=data["status"],
            body=base64.b64decode(data["body"]),
            content_type=data["content_type"],
            owner=data.get("owner", ""),
            lease_until=float(data.get("lease_until", 0.0)),
        )


class Store(Protocol):
    """Records with compare-and-set: a token names the version a caller read."""

    async def create(self, key: str, record: Record) -> Any | None:
        """The new record's token, or None when the key exists."""
        ...

    async def read(self, key: str) -> tuple[Record, Any] | None: ...

    async def replace(self, key: str, token: Any, record: Record) -> Any | None:
        """The new token, or None when the record is no longer the version ``token`` names."""
        ...

    async def remove(self, key: str, token: Any) -> None:
        """Delete the record if it is still the version ``token`` names."""
        ...


class BucketStore:
    """A JetStream key-value bucket; a token is the key's revision."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def create(self, key: str, record: Record) -> int | None:
        try:
            return await self._kv.create(key, record.dumps())
        except KeyWrongLastSequenceError:
            return None

    async def read(self, key: str) -> tuple[Record, int] | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return Record.loads(entry.value), entry.revision

    async def replace(self, key: str, token: Any, record: Record) -> int | None:
        try:
            return await self._kv.update(key, record.dumps(), last=int(token))
        except KeyWrongLastSequenceError:
            return None

    async def remove(self, key: str, token: Any) -> None:
        with contextlib.suppress(APIError):  # already replaced by someone else: leave it
            await self._kv.delete(key, last=int(token))


async def open_bucket(
    js: JetStreamContext, ttl: float, replicas: int = 1, name: str = BUCKET
) -> BucketStore:
    """The bucket as provisioned, or created here (an embedded server has no provisioning)."""
    try:
        return BucketStore(await js.key_value(name))
    except BucketNotFoundError:
        pass
    config = KeyValueConfig(
        bucket=name,
        description="Idempotency-Key records of the HTTP gateway",
        history=1,
        ttl=ttl,
        storage=StorageType.FILE,
        replicas=replicas,
    )
    try:
        return BucketStore(await js.create_key_value(config))
    except BadRequestError:  # another gateway created it first
        return BucketStore(await js.key_value(name))


# Compare-and-set in one round trip: the record is replaced only if it is what the caller read.
_REPLACE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""
_REMOVE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisStore:
    """Records in Redis; a token is the stored value itself."""

    def __init__(self, redis: Redis, prefix: str, ttl: float) -> None:
        self._redis = redis
        self._prefix = prefix + "idem:"
        self._ttl = max(int(ttl), 1)
        self._replace = redis.register_script(_REPLACE)
        self._remove = redis.register_script(_REMOVE)

    async def create(self, key: str, record: Record) -> bytes | None:
        value = record.dumps()
        if await self._redis.set(self._prefix + key, value, nx=True, ex=self._ttl):
            return value
        return None

    async def read(self, key: str) -> tuple[Record, bytes | str] | None:
        found = await self._redis.get(self._prefix + key)
        return None if found is None else (Record.loads(found), found)

    async def replace(self, key: str, token: Any, record: Record) -> bytes | None:
        value = record.dumps()
        done = await self._replace(keys=[self._prefix + key], args=[token, value, self._ttl])
        return value if done else None

    async def remove(self, key: str, token: Any) -> None:
        await self._remove(keys=[self._prefix + key], args=[token])


class _Lease:
    """Holds a pending record for one running request, renewing it until the request ends."""

    def __init__(
        self, store: Store, key: str, record: Record, token: Any, length: float, takeover: bool
    ) -> None:
        self.store = store
        self.key = key
        self.record = record
        self.token = token
        self.length = length
        self.takeover = takeover
        self.lost = False
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.length / 3):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            renewed = replace(self.record, lease_until=time.time() + self.length)
            try:
                token = await self.store.replace(self.key, self.token, renewed)
            except Exception as exc:  # the store is away for a moment: try again next time
                log.warning("renewing the idempotency lease failed: %s", exc)
                continue
            if token is None:
                self.lost = True
                log.warning("idempotency record %s was taken over by another request", self.key)
                return
            self.record, self.token = renewed, token

    async def stop(self) -> None:
        """No more renewals. One already sent is waited for, not cancelled: the store may have
        applied it, and the token must name the version it wrote."""
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def complete(self, record: Record) -> None:
        if self.lost:
            return  # the request that took over stores the same outcome
        if await self.store.replace(self.key, self.token, record) is None:
            log.warning("idempotency record %s changed under its owner; not stored", self.key)

    async def release(self) -> None:
        if not self.lost:
            await self.store.remove(self.key, self.token)


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
            principal = await gateway.authenticator.authenticate(credential_header(headers))
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

        key = hashlib.sha256(
            "\0".join((principal.tenant, idem_key, scope["path"])).encode()
        ).hexdigest()
        fingerprint = hashlib.sha256(body).hexdigest()
        config = gateway.config
        watcher = _DisconnectWatch(receive)
        try:
            outcome = await _reserve(
                gateway.idempotency,
                key,
                fingerprint,
                lease=config.idempotency_lease,
                wait=config.idempotency_wait,
                gone=watcher.gone,
            )
        except BaseException:
            watcher.cancel()
            raise
        if isinstance(outcome, Record):
            watcher.cancel()
            await _answer_existing(outcome, fingerprint, scope, receive, send)
            return
        if outcome is None:  # the caller went away while waiting
            watcher.cancel()
            return
        lease = outcome
        attempt = Attempt(
            request_id=hashlib.sha256(f"{key}\0{fingerprint}".encode()).hexdigest()[:32],
            takeover=lease.takeover,
        )
        scope = {**scope, "state": {**scope.get("state", {}), "idempotency": attempt}}
        replayed = False

        async def replay_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await watcher.next()

        status: int | None = None
        content_type = ""
        chunks: list[bytes] = []
        settled = False

        async def settle() -> None:
            """Store the outcome, or free the key, once: before the caller has the answer."""
            nonlocal settled
            settled = True
            await lease.stop()
            streamed = content_type.startswith("text/event-stream")
            storable = status is not None and status < 500 and status not in _NOT_STORED
            try:
                if storable and not streamed:
                    answer = b"".join(chunks)
                    await lease.complete(
                        Record(fingerprint, status, answer, content_type or "application/json")
                    )
                else:
                    await lease.release()
            except Exception as exc:  # a retry finds the lease lapsed and runs the request again
                log.warning("storing idempotency record %s failed: %s", key, exc)

        async def capture(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
            elif message["type"] == "http.response.body":
                if not content_type.startswith("text/event-stream"):
                    chunks.append(message.get("body", b""))
                if not message.get("more_body", False) and not settled:
                    await settle()  # the last part of the answer: the record first
            await send(message)

        lease.start()
        try:
            with request_ids(attempt.request_id):
                await self.app(scope, replay_receive, capture)
        except BaseException:
            if not settled:
                settled = True
                await lease.stop()
                with contextlib.suppress(Exception):
                    await lease.release()
            raise
        finally:
            watcher.cancel()
        if not settled:  # the app ended without finishing an answer
            await settle()


async def _reserve(
    store: Store, key: str, fingerprint: str, *, lease: float, wait: float, gone: asyncio.Event
) -> _Lease | Record | None:
    """A lease on the key for this request, the record that answers it, or None (caller gone).

    Waits while another live request holds the key; takes over one whose lease lapsed.
    """
    owner = uuid.uuid4().hex
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        mine = Record(fingerprint, owner=owner, lease_until=time.time() + lease)
        token = await store.create(key, mine)
        if token is not None:
            return _Lease(store, key, mine, token, lease, takeover=False)
        found = await store.read(key)
        if found is None:
            continue  # expired or released between the two calls
        record, token = found
        if record.fingerprint != fingerprint or not record.pending:
            return record
        if record.lease_until <= time.time():
            token = await store.replace(key, token, mine)
            if token is not None:
                log.info("idempotency key %s taken over from %s", key, record.owner)
                return _Lease(store, key, mine, token, lease, takeover=True)
            continue
        left = deadline - loop.time()
        if left <= 0:
            return record  # still pending at the caller's timeout: 409
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(_POLL, left)):
                await gone.wait()
        if gone.is_set():
            return None


class _DisconnectWatch:
    """Notices the caller hanging up while its retry waits; hands later messages on."""

    def __init__(self, receive: Receive) -> None:
        self.gone = asyncio.Event()
        self._task: asyncio.Task[Message] = asyncio.ensure_future(receive())
        self._task.add_done_callback(self._seen)

    def _seen(self, task: asyncio.Task[Message]) -> None:
        if not task.cancelled() and task.exception() is None:
            if task.result()["type"] == "http.disconnect":
                self.gone.set()

    async def next(self) -> Message:
        return await self._task

    def cancel(self) -> None:
        self._task.cancel()


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
