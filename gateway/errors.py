"""Every failure leaves the gateway in OpenAI's shape: ``{"error": {message, type, param, code}}``.

Handlers raise ``ApiError``; validation, routing and unexpected errors are converted here, so no
other shape (and never a stack trace) reaches a caller. A request too large for the bus is a 413
wherever the publish failed: the bus's ``PayloadTooLarge`` is looked for in the error's causes,
because a caller must not retry what can never fit, as a 5xx would invite.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from bus.errors import PayloadTooLarge

log = logging.getLogger("soma.gateway")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def unauthenticated(message: str = "Incorrect API key or access token provided.") -> ApiError:
    return ApiError(
        401,
        message,
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="soma"'},
    )


def forbidden(message: str) -> ApiError:
    return ApiError(403, message, type="permission_error", code="insufficient_permissions")


def not_found(message: str, code: str = "not_found", param: str | None = None) -> ApiError:
    return ApiError(404, message, code=code, param=param)


def model_not_found(model: str) -> ApiError:
    return not_found(
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def rate_limited(message: str, retry_after: int, kind: str) -> ApiError:
    return ApiError(
        429,
        message,
        type=kind,
        code="rate_limit_exceeded",
        headers={"Retry-After": str(max(retry_after, 1))},
    )


def unavailable(message: str = "A backend service did not answer in time.") -> ApiError:
    return ApiError(503, message, type="server_error", code="service_unavailable")


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than the limit of {limit} bytes.",
        code="request_too_large",
    )


def too_large_for_the_bus(exc: PayloadTooLarge) -> ApiError:
    return ApiError(
        413,
        f"The request is too large to carry: as a message it takes {exc.size} bytes, over the "
        f"limit of {exc.limit} bytes. Send fewer or shorter messages.",
        code="request_too_large",
    )


def payload_too_large(exc: BaseException) -> PayloadTooLarge | None:
    """The ``PayloadTooLarge`` behind an error, however many times it was wrapped."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, PayloadTooLarge):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _param(loc: Sequence[Any]) -> str | None:
    """``("body", "messages", 0, "role")`` → ``messages[0].role``."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part:
            out += f".{part}" if out else str(part)
    return out or None


def validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return ApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        )
    param = _param(first.get("loc", ()))
    if first.get("type") == "missing" and param is not None:
        message = f"Missing required parameter: '{param}'."
    elif param is not None:
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid value')}."
    else:
        message = f"Invalid request: {first.get('msg', 'invalid body')}."
    return ApiError(400, message, param=param, code="invalid_value")


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    cause = payload_too_large(exc) if exc.status >= 500 else None
    if cause is not None:
        log.warning("refused a request too large for the bus: %s", cause)
        return too_large_for_the_bus(cause).response()
    return exc.response()


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error(exc).response()


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "Request failed."
    if exc.status_code == 404:
        message = "Unknown request URL. Please check the URL and method."
    error = ApiError(
        exc.status_code,
        message,
        type="invalid_request_error" if exc.status_code < 500 else "server_error",
        code=_HTTP_CODES.get(exc.status_code),
        headers=dict(exc.headers or {}),
    )
    return error.response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    cause = payload_too_large(exc)
    if cause is not None:
        log.warning("refused a request too large for the bus: %s", cause)
        return too_large_for_the_bus(cause).response()
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = error_body("The server had an error while processing your request.", "server_error")
    return JSONResponse(body, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
