"""``POST /v1/embeddings``: vectors from the memory service's embedders, float or base64."""

from __future__ import annotations

import base64
import struct
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from gateway.auth import Principal
from gateway.context import caller, gateway_of
from gateway.dispatch import Refused, refusal_error
from gateway.errors import ApiError, model_not_found
from gateway.openai_bodies import (
    ERRORS,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
)
from schemas.common import FailureCode
from schemas.memory import MemoryEmbed, MemoryEmbedded

router = APIRouter(tags=["openai"])

MAX_INPUTS = 2048


def _texts(body: EmbeddingRequest) -> list[str]:
    raw = body.input
    texts = [raw] if isinstance(raw, str) else raw
    if not texts:
        raise ApiError(400, "'input' must not be empty.", param="input")
    if len(texts) > MAX_INPUTS:
        raise ApiError(400, f"'input' takes at most {MAX_INPUTS} items.", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise ApiError(
            400,
            "Token arrays are not supported; send strings.",
            param="input",
            code="unsupported_input",
        )
    if any(not t for t in texts):
        raise ApiError(400, "'input' must not contain empty strings.", param="input")
    return [t for t in texts if isinstance(t, str)]


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


@router.post(
    "/v1/embeddings", response_model=EmbeddingList, responses=ERRORS, summary="Create embeddings"
)
async def create_embeddings(
    body: EmbeddingRequest,
    request: Request,
    principal: Annotated[Principal, Depends(caller("embeddings", tokens=True))],
) -> EmbeddingList:
    gateway = gateway_of(request)
    texts = _texts(body)
    if not principal.may_use_model(body.model):
        raise model_not_found(body.model)
    try:
        embedded = await gateway.dispatch.ask(
            MemoryEmbed(texts=texts, model=body.model),
            MemoryEmbedded,
            tenant=principal.tenant,
            actor=principal.user,
        )
    except Refused as refused:
        if refused.code == FailureCode.NOT_FOUND:
            raise model_not_found(body.model) from refused
        raise refusal_error(refused) from refused
    if body.dimensions is not None and any(len(v) != body.dimensions for v in embedded.vectors):
        raise ApiError(
            400,
            f"The model {body.model} does not support {body.dimensions} dimensions.",
            param="dimensions",
        )
    await gateway.limiter.record_tokens(principal, embedded.prompt_tokens)
    return EmbeddingList(
        data=[
            Embedding(index=i, embedding=_encode(v, body.encoding_format))
            for i, v in enumerate(embedded.vectors)
        ],
        model=embedded.model,
        usage=EmbeddingUsage(
            prompt_tokens=embedded.prompt_tokens, total_tokens=embedded.prompt_tokens
        ),
    )
