"""What every provider offers routing: one completion for one deployment, streamed or not.

Providers translate their SDK's failures into ``ProviderError`` so routing decides retries and
fallbacks from two facts only: may this be retried, and how long did the provider ask us to wait.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from handlers.slm.deltas import DeltaSink
from handlers.slm.models import Deployment
from schemas.base import Usage
from schemas.slm import ChatMessage, SlmComplete

RETRYABLE_STATUS = frozenset({408, 409, 429})


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
    cause = exc.__cause__
    return f" ({cause})" if cause is not None and str(cause) else ""
