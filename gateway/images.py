"""Images in a turn's messages: where they may come from, and which models may get them.

An image is an ``https`` URL or a ``data:`` URL with base64 bytes, as OpenAI's ``image_url`` and
Anthropic's image sources carry them. Only a model whose deployments all accept images (its
``images`` in the slm model list) is sent one; any other is refused here with a 400 naming the
model, before the turn starts. The message's text still goes to policy and memory as before.
"""

from __future__ import annotations

import re

from gateway.errors import ApiError
from schemas.models import ModelInfo
from schemas.slm import ChatMessage, ImagePart

_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,.")


def image_part(url: str, param: str, detail: str | None = None) -> ImagePart:
    """The image at ``url``, or a 400 naming ``param`` when it is neither https nor data."""
    if url.startswith("https://") or _DATA_URL.match(url):
        return ImagePart(url=url, detail=detail)
    raise ApiError(
        400,
        "An image must be an https URL or a data URL (data:image/png;base64,...).",
        param=param,
        code="invalid_image_url",
    )


def check_images(model: ModelInfo, messages: list[ChatMessage]) -> None:
    if model.images or not any(message.images for message in messages):
        return
    raise ApiError(
        400,
        f"The model {model.id} does not accept images; send text only, or choose a model "
        "that accepts images (see GET /v1/models).",
        param="messages",
        code="images_not_supported",
    )
