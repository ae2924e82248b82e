"""What every provider offers routing: one completion for one deployment, streamed or not.

Providers translate their SDK's failures into ``ProviderError`` so routing decides retries and
fallbacks from two facts only: may this be retried, and how long did the provider ask us to wait.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import anyio
import httpx
import httpx2

from handlers.slm.deltas import DeltaSink
from handlers.slm.models import Deployment
from schemas.base import Usage
from schemas.slm import ChatMessage, SlmComplete

RETRYABLE_STATUS = frozenset({408, 409, 429})

# What the HTTP transport under an SDK raises when a connection fails or an answer breaks off
# midway (reset, closed before the body's end, a read timing out). The SDKs wrap these into
# their own connection error only in places: the Anthropic SDK lets them through while a
# stream is read, and an SDK's wrapping may change with its version.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    # The SDKs' HTTP client, over its own transport or aiohttp's (which maps aiohttp's
    # errors to these: a cut body reads as ReadError).
    httpx2.TransportError,
    # An SDK version, or a client given to it, still on httpx.
    httpx.TransportError,
    # What the aiohttp transport does not map and lets through as raised.
    aiohttp.ClientError,
    # TLS failures httpx2 does not map yet; the OpenAI SDK's own wrapping names them too.
    ssl.SSLError,
    anyio.EndOfStream,
)


@dataclass(frozen=True)
class Completion:
    message: ChatMessage
    finish_reason: str
    usage: Usage
    # The ``stop`` sequence that ended the text, when the provider reports it.
    stop_sequence: str | None = None
    # OpenAI's ``logprobs`` object of the answer, from providers that report it.
    logprobs: dict[str, Any] | None = None


class ProviderError(Exception):
    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


class Provider(Protocol):
    async def complete(
        self, request: SlmComplete, deployment: Deployment, sink: DeltaSink | None
    ) -> Completion:
        """Stream through ``sink`` when given; otherwise make one non-streaming call."""
        ...

    async def aclose(self) -> None: ...


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def transport_detail(exc: BaseException) -> str:
    """What the HTTP transport said under an SDK's connection error, for people: the SDK's own
    words can mislead (with the aiohttp transport a refused connection reads "Request timed
    out.")."""
    said = _first_words(exc.__cause__)
    return f" ({said})" if said else ""


def transport_failure(exc: BaseException, deployment: Deployment) -> ProviderError:
    """A transport error that reached a provider unwrapped by its SDK, for routing: another
    attempt may well succeed."""
    said = _first_words(exc) or type(exc).__name__
    return ProviderError(f"{deployment.label}: the connection broke off ({said})", retryable=True)


def stream_ended_early(label: str, missing: str) -> ProviderError:
    """A stream whose body ended without the event its protocol ends a stream with: a server
    whose body ends only when it closes the connection, or a proxy closing cleanly between
    events, makes a cut answer look like a whole one. Another attempt may well succeed."""
    return ProviderError(
        f"{label}: the stream ended before the answer did (no {missing} arrived)", retryable=True
    )


def _first_words(exc: BaseException | None) -> str:
    """The first thing said down an exception's chain of causes: a transport may raise an
    empty ReadError over the ConnectionResetError that tells what happened."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if str(exc):
            return str(exc)
        exc = exc.__cause__ or exc.__context__
    return ""
