"""Refuse request bodies over the limit with 413, before anyone reads them whole.

The limit follows the bus: a request travels as one NATS message, so a body the server's
``max_payload`` cannot carry must be refused here, as a 413 the caller can act on, rather than
fail later as a retryable 5xx. The limit is the server's ``max_payload`` (read from the live
connection, so it follows the server the gateway is connected to) less room for the envelope;
``SOMA_MAX_BODY_BYTES`` can only lower it.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import too_large

log = logging.getLogger("soma.gateway")

# Room a body needs beside it in the message: the command's own fields and the envelope headers,
# with enough left for the context later hops add (recalled memories, tool results).
ENVELOPE_HEADROOM = 64 * 1024
# The limit before a bus connection exists: nats-server's default max_payload.
DEFAULT_MAX_PAYLOAD = 1024 * 1024


def limit_for(max_payload: int, configured: int | None = None) -> int:
    """The largest body that fits in one message on a server with this ``max_payload``."""
    fits = max(max_payload - ENVELOPE_HEADROOM, 1)
    return fits if configured is None else min(configured, fits)


class _TooLarge(HTTPException):
    """An HTTPException, so FastAPI's body reading lets it through to the error handlers."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit).message)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int | None = None) -> None:
        self.app = app
        self.configured = max_bytes
        self._announced: int | None = None

    def limit(self, scope: Scope) -> int:
        """The limit now: from the connection of the app's gateway once its lifespan built it."""
        state = getattr(scope.get("app"), "state", None)
        gateway = getattr(state, "gateway", None)
        nc = getattr(getattr(gateway, "dispatch", None), "nc", None)
        max_payload = getattr(nc, "max_payload", 0) or DEFAULT_MAX_PAYLOAD
        limit = limit_for(max_payload, self.configured)
        if limit != self._announced:
            self._announced = limit
            self._announce(limit, max_payload)
        return limit

    def _announce(self, limit: int, max_payload: int) -> None:
        if self.configured is not None and self.configured > limit:
            log.warning(
                "SOMA_MAX_BODY_BYTES=%d does not fit the NATS server's max_payload of %d bytes; "
                "request bodies are limited to %d bytes (raise max_payload in the server's "
                "configuration to allow more)",
                self.configured,
                max_payload,
                limit,
            )
        else:
            log.info(
                "request bodies up to %d bytes (NATS max_payload %d bytes)", limit, max_payload
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.limit(scope)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await too_large(max_bytes).response()(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise _TooLarge(max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await too_large(max_bytes).response()(scope, receive, send)
