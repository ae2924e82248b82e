"""Errors on the Anthropic routes in Anthropic's shape:
``{"type": "error", "error": {"type": "not_found_error", "message": …}}``.

Everything else in the gateway answers in OpenAI's shape (``gateway.errors``). The routes of
``gateway.routes.messages`` use ``AnthropicRoute``, which renders what their handlers, their
body's validation and their dependencies (authentication, rate limits) raise, so an Anthropic
SDK gets the exception class it expects (``AuthenticationError``, ``NotFoundError``, …). The
status codes are the gateway's own, the ones Anthropic uses for the same conditions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import ApiError, payload_too_large, too_large_for_the_bus, validation_error

log = logging.getLogger("soma.gateway.anthropic")

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(error: ApiError) -> dict[str, Any]:
    message = error.message
    if error.param and error.status == 400 and error.param not in message:
        message = f"{error.param}: {message}"
    return {"type": "error", "error": {"type": error_type(error.status), "message": message}}


def response(error: ApiError) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=error.status, headers=error.headers)


def _as_api_error(exc: Exception, request: Request) -> ApiError:
    cause = payload_too_large(exc)
    if cause is not None:
        return too_large_for_the_bus(cause)
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestValidationError):
        error = validation_error(exc)
        if error.message.startswith("We could not parse the JSON body"):
            error.message = "The request body is not valid JSON."
        return error
    if isinstance(exc, HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        return ApiError(exc.status_code, message, headers=dict(exc.headers or {}))
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return ApiError(500, "The server had an error while processing your request.")


class AnthropicRoute(APIRoute):
    """A route whose every error leaves in Anthropic's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await handle(request)
            except Exception as exc:
                return response(_as_api_error(exc, request))

        return handler
