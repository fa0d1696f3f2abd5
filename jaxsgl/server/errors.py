"""Errors as OpenAI's error JSON, and strict request-body parsing (every failure is a clear 4xx).

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

SGLang's native endpoints answer the same shape (SGLang's own is {"error": {"message": ...}}).
"""
from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 503: "service_unavailable_error"}


class APIError(Exception):
    """An error answered to the client with `status` (4xx for bad input, 503 while loading/stopping)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "internal_error" if status >= 500 else
                                                              "invalid_request_error"),
                      "param": param, "code": code if code is not None else status}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """Decode a JSON body: invalid UTF-8, bad JSON, NaN/Infinity and a non-object top level are 400s."""
    if not raw.strip():
        raise APIError(400, "the request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8: {e}") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise APIError(400, f"the request body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(obj).__name__}")
    return obj


def validation_message(e: ValidationError) -> tuple[str, str | None]:
    """A one-line message and the offending parameter of pydantic's first error."""
    errs = e.errors(include_url=False)
    first = errs[0] if errs else {}
    loc = ".".join(str(p) for p in first.get("loc", ()))
    msg = first.get("msg", str(e)).removeprefix("Value error, ")
    more = f" (and {len(errs) - 1} more errors)" if len(errs) > 1 else ""
    return (f"{loc}: {msg}{more}" if loc else f"{msg}{more}"), (loc or None)


def validate(model: type[M], obj: dict[str, Any]) -> M:
    """model.model_validate(obj), with failures as APIError(400)."""
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        msg, param = validation_message(e)
        raise APIError(400, msg, param=param) from None
    except (ValueError, TypeError, RecursionError) as e:
        raise APIError(400, str(e)) from None


async def parse_body(request: Request, model: type[M]) -> M:
    """Read, decode and validate the request body as `model` (raises APIError 400/413; 499, which
    nobody reads, when the client hung up before its body arrived: not an error of the server)."""
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise APIError(499, "the client disconnected before sending its request body") from None
    return validate(model, parse_json(raw))


def install_handlers(app: FastAPI) -> None:
    """Register exception handlers on app (mutates it): APIError, 404/405, validation -> 400, and 500."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(400, f"invalid request: {str(e.errors()[:1])[:300]}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        phrase = HTTPStatus(e.status_code).phrase if e.status_code in HTTPStatus._value2member_map_ else ""
        detail = e.detail if isinstance(e.detail, str) and e.detail != phrase else \
            f"{phrase}: {request.method} {request.url.path}"
        return error_response(e.status_code, detail)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal server error: {type(e).__name__}: {e}")
