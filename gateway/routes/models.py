"""``GET /v1/models``: the models this caller may use."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from gateway.auth import Principal
from gateway.context import caller, gateway_of
from gateway.errors import model_not_found
from gateway.openai_bodies import ERRORS, ModelListOut, ModelOut
from schemas.models import ModelInfo

router = APIRouter(tags=["openai"])


def _out(m: ModelInfo) -> ModelOut:
    if m.kind == "embedding":
        return ModelOut(id=m.id, created=m.created, owned_by=m.owned_by, kind="embedding")
    return ModelOut(id=m.id, created=m.created, owned_by=m.owned_by)


@router.get("/v1/models", response_model=ModelListOut, responses=ERRORS, summary="List models")
async def list_models(
    request: Request, principal: Annotated[Principal, Depends(caller("models"))]
) -> ModelListOut:
    models = await gateway_of(request).models.visible(principal)
    return ModelListOut(data=[_out(m) for m in sorted(models, key=lambda m: m.id)])


@router.get(
    "/v1/models/{model}", response_model=ModelOut, responses=ERRORS, summary="Retrieve a model"
)
async def retrieve_model(
    model: str, request: Request, principal: Annotated[Principal, Depends(caller("models"))]
) -> ModelOut:
    for m in await gateway_of(request).models.visible(principal):
        if m.id == model:
            return _out(m)
    raise model_not_found(model)
