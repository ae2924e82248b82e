"""The model list: which model names the slm service routes, for ``GET /v1/models`` and for
refusing an unknown model before any work starts."""

from schemas.base import Message


class ModelInfo(Message):
    id: str
    owned_by: str = "soma"
    created: int = 0
    providers: list[str] = []


class SlmListModels(Message):
    """Ask for every model name the router knows."""


class SlmModelsListed(Message):
    models: list[ModelInfo] = []
