"""Routing a completion: by model name to its deployments, with retries, fallback and timeouts.

Each deployment is tried up to ``attempts`` times on errors worth retrying (429, 5xx, timeouts,
dropped connections), waiting the provider's Retry-After (capped) or an exponential backoff;
then the next deployment takes over. An error that retrying cannot fix (a 400, a bad key) moves
to the next deployment at once. Once deltas have reached the caller nothing is retried: a second
attempt would repeat output they have already seen, so the stream ends with an error instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from opentelemetry.trace import SpanKind

from bus import tracing
from bus.errors import Invalid, Rejected, Unavailable
from bus.metrics import model_usage
from handlers.slm.deltas import DeltaSink, OnDelta
from handlers.slm.models import Deployment, ModelList, RoutingPolicy
from handlers.slm.providers import Provider, ProviderError
from schemas.slm import SlmComplete, SlmCompleted

log = logging.getLogger(__name__)
CLIENT = SpanKind.CLIENT


class ProvidersUnavailable(RuntimeError):
    """Every deployment failed with errors that may pass; the command is worth retrying later."""


@dataclass
class Router:
    models: ModelList
    providers: Mapping[str, Provider]
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    jitter: Callable[[], float] = field(default=random.random)

    async def complete(self, request: SlmComplete, on_delta: OnDelta | None = None) -> SlmCompleted:
        deployments = self.models.deployments_for(request.model)
        if request.model not in self.models.with_images and any(m.images for m in request.messages):
            raise Invalid(f"the model {request.model} does not accept images")
        policy = self.models.routing
        sink = DeltaSink(on_delta) if on_delta is not None else None
        started = time.perf_counter()
        failures: list[ProviderError] = []
        for deployment in deployments:
            provider = self.providers.get(deployment.provider)
            if provider is None:
                raise Unavailable(
                    f"no provider {deployment.provider!r} for model {request.model!r}"
                )
            for attempt in range(max(1, policy.attempts)):
                try:
                    with tracing.span(
                        f"chat {deployment.model}", _call(request, deployment), CLIENT
                    ) as span:
                        async with asyncio.timeout(deployment.timeout):
                            result = await provider.complete(request, deployment, sink)
                        if span is not None:
                            span.set_attributes(
                                {
                                    "gen_ai.usage.input_tokens": result.usage.prompt_tokens,
                                    "gen_ai.usage.output_tokens": result.usage.completion_tokens,
                                    "gen_ai.response.finish_reasons": [result.finish_reason],
                                }
                            )
                except (ProviderError, TimeoutError) as exc:
                    error = _as_provider_error(exc, deployment)
                    failures.append(error)
                    log.warning("%s attempt %d failed: %s", deployment.label, attempt + 1, error)
                    if sink is not None and sink.started:
                        await sink.fail(str(error))
                        raise Rejected(f"stream interrupted: {error}") from exc
                    if not error.retryable or attempt + 1 >= policy.attempts:
                        break
                    await self.sleep(self.delay(attempt, error.retry_after, policy))
                    continue
                if sink is not None:
                    await sink.finish(result.finish_reason)
                completed = SlmCompleted(
                    model=request.model,
                    provider=deployment.provider,
                    message=result.message,
                    finish_reason=result.finish_reason,
                    usage=result.usage,
                    cost_usd=deployment.cost(result.usage),
                    latency_ms=(time.perf_counter() - started) * 1000,
                    key_id=request.key_id,
                    stop_sequence=result.stop_sequence,
                    logprobs=result.logprobs,
                )
                model_usage(
                    completed.model,
                    completed.provider,
                    result.usage.prompt_tokens,
                    result.usage.completion_tokens,
                    completed.cost_usd,
                )
                return completed
        summary = "; ".join(str(error) for error in failures)
        if any(error.retryable for error in failures):
            raise ProvidersUnavailable(f"model {request.model!r} unavailable: {summary}")
        raise Rejected(f"model {request.model!r} refused the request: {summary}")

    def delay(self, attempt: int, retry_after: float | None, policy: RoutingPolicy) -> float:
        """The provider's Retry-After up to the cap, else exponential backoff with jitter."""
        if retry_after is not None:
            return min(retry_after, policy.retry_after_max)
        ceiling = min(policy.backoff_max, policy.backoff_initial * 2**attempt)
        return ceiling / 2 + ceiling / 2 * self.jitter()


def _call(request: SlmComplete, deployment: Deployment) -> dict[str, str | bool]:
    """The model call's span attributes, after OpenTelemetry's GenAI semantic conventions."""
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": deployment.provider,
        "gen_ai.provider.name": deployment.provider,
        "gen_ai.request.model": request.model,
        "gen_ai.response.model": deployment.model,
        "soma.stream": request.stream_subject is not None,
    }


def _as_provider_error(exc: Exception, deployment: Deployment) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    return ProviderError(
        f"{deployment.label} gave no answer within {deployment.timeout}s", retryable=True
    )
