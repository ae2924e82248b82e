"""The gateway's only way to the handlers: publish a command, await its reply event.

A ``<service>.failed`` reply is a refusal. Handlers start its ``error`` with a code
(``not_found:``, ``conflict:``, ``invalid:``, ``unauthenticated:``, ``forbidden:``) that decides
the HTTP status; see CONTRACTS.md.

A request with an ``Idempotency-Key`` runs inside ``request_ids``: ``derived_id`` then gives ids
that are the same on every retry of that request, so a retry that runs again (its first gateway
died) names the same saga, memory or tool call and the handlers' own idempotency answers it.
Only ids of effects are derived: a read keeps a fresh message id, since the server drops a
re-published id and its reply would never come.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from bus.errors import RequestTimeout
from bus.publish import envelope_for, publish
from bus.request import Requester
from bus.service import Connected
from gateway.errors import ApiError, unavailable
from schemas.catalogue import of_type
from schemas.common import CommandFailed, FailureCode

log = logging.getLogger("soma.gateway.dispatch")

T = TypeVar("T", bound=msgspec.Struct)

_request_id: ContextVar[str | None] = ContextVar("soma_gateway_request_id", default=None)


@contextlib.contextmanager
def request_ids(request_id: str) -> Iterator[None]:
    """Ids derived inside the block are fixed by ``request_id`` (stable across retries)."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def current_request_id() -> str | None:
    return _request_id.get()


def derived_id(purpose: str) -> str | None:
    """An id for ``purpose`` that every retry of the current request gets again; None outside an
    idempotent request (the caller then makes a fresh one)."""
    base = _request_id.get()
    if base is None:
        return None
    return hashlib.sha256(f"{base}\0{purpose}".encode()).hexdigest()[:32]


# Each refusal's HTTP status and OpenAI error code, decided here once.
_STATUS: dict[FailureCode, tuple[int, str]] = {
    FailureCode.NOT_FOUND: (404, "not_found"),
    FailureCode.CONFLICT: (409, "conflict"),
    FailureCode.INVALID: (400, "invalid_value"),
    FailureCode.UNAUTHENTICATED: (401, "invalid_api_key"),
    FailureCode.FORBIDDEN: (403, "insufficient_permissions"),
    FailureCode.UNAVAILABLE: (503, "unavailable"),
}


class Refused(Exception):
    """A handler answered ``<service>.failed``."""

    def __init__(self, failure: CommandFailed) -> None:
        super().__init__(failure.error)
        self.failure = failure

    @property
    def code(self) -> FailureCode:
        return self.failure.code


def refusal_error(refused: Refused) -> ApiError:
    """What a caller sees of a refusal: its coded status and the handler's sentence."""
    status, code = _STATUS.get(refused.code, (400, "invalid_value"))
    if status == 401:
        return ApiError(401, "The credentials were not accepted.", code=code)
    return ApiError(
        status,
        refused.failure.error or "The request was refused.",
        type="permission_error" if status == 403 else "invalid_request_error",
        code=code,
    )


@dataclass
class Dispatch:
    nc: Client
    js: JetStreamContext
    requester: Requester
    timeout: float

    @property
    def bus(self) -> Connected:
        """What commands are published on."""
        return Connected(self.nc, self.js)

    async def ask(
        self,
        command: msgspec.Struct,
        reply: type[T],
        *,
        tenant: str,
        actor: str = "gateway",
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> T:
        """The reply event, ``Refused`` for a failed event, ``ApiError(503)`` for no answer."""
        expect = of_type(reply).name
        try:
            _, answer = await self.requester.request(
                command,
                tenant=tenant,
                expect={expect},
                timeout=timeout or self.timeout,
                actor=actor,
                correlation_id=correlation_id,
            )
        except RequestTimeout as exc:
            log.warning("%s", exc)
            raise unavailable() from exc
        except (NatsError, TimeoutError, ConnectionError) as exc:
            log.warning("publishing %s failed: %s", type(command).__name__, exc)
            raise unavailable("The message bus is not reachable.") from exc
        if isinstance(answer.payload, CommandFailed):
            raise Refused(answer.payload)
        if not isinstance(answer.payload, reply):
            raise unavailable(f"Unexpected reply {answer.schema}.")
        return answer.payload

    async def call(
        self,
        command: msgspec.Struct,
        reply: type[T],
        *,
        tenant: str,
        actor: str = "gateway",
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> T:
        """``ask`` with a refusal turned into the caller's HTTP error."""
        try:
            return await self.ask(
                command,
                reply,
                tenant=tenant,
                actor=actor,
                timeout=timeout,
                correlation_id=correlation_id,
            )
        except Refused as refused:
            raise refusal_error(refused) from refused

    async def send(
        self,
        command: msgspec.Struct,
        *,
        tenant: str,
        actor: str = "gateway",
        correlation_id: str | None = None,
        message_id: str | None = None,
    ) -> None:
        """Publish without waiting for an outcome (signals and cancellations)."""
        env = envelope_for(
            command,
            tenant=tenant,
            actor=actor,
            correlation_id=correlation_id,
            message_id=message_id,
        )
        try:
            await publish(self.bus, command, env)
        except Exception as exc:
            log.warning("publishing %s failed: %s", type(command).__name__, exc)
            raise unavailable("The message bus is not reachable.") from exc
