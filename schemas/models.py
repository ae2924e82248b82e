"""The model list: which model names the slm service routes, for ``GET /v1/models`` and for
refusing an unknown model before any work starts."""

from schemas.base import Message


class ModelInfo(Message):
    id: str
    owned_by: str = "soma"
    created: int = 0
    providers: list[str] = []
    # "chat" (``/v1/chat/completions``, ``/v1/messages``) or "embedding" (``/v1/embeddings``).
    kind: str = "chat"
    # Whether messages to it may carry images (every deployment of it accepts them).
    images: bool = False


class SlmListModels(Message):
    """Ask for every model name the router knows."""


class SlmModelsListed(Message):
    models: list[ModelInfo] = []
