"""One error shape everywhere: `{"error": {"code": ..., "message": ...}}`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable, e.g. `not_found`, `invalid_config`")
    message: str = Field(description="for people: what is wrong and what to do")
    details: Any = Field(None, description="a validation error's problems, field by field")


class ErrorResponse(BaseModel):
    """Every error the API answers, whatever its status."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": {"code": "not_found", "message": "job 'job_1' not found"}}]
        }
    )

    error: ErrorBody


class APIError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: Any = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.details = details


def not_found(what: str, ident: str) -> APIError:
    return APIError(404, "not_found", f"{what} {ident!r} not found")


def format_validation_errors(errors: Iterable[Mapping[str, Any]], *, prefix: str = "") -> str:
    """pydantic's errors as one readable line: `loc: msg; loc: msg`."""
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if prefix:
            loc = [prefix, *loc]
        where = ".".join(loc)
        msg = err.get("msg", "invalid")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def error_body(code: str, message: str, details: Any = None) -> dict:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
}


_DESCRIPTIONS = {
    401: "missing or invalid API key",
    403: "the API key may not do this (a read-only key)",
    404: "no such resource (or another tenant's)",
    409: "conflicts with the resource's current state",
    413: "the request is larger than the limit",
    415: "unsupported content type",
    422: "invalid parameters, body or data",
    429: "over a quota of the tenant",
    503: "a backing service is unavailable; nothing was changed, retry",
}


def error_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` declaring the error envelope for `statuses`; a description
    may be given per status as `s409="..."`."""
    return {
        status: {
            "model": ErrorResponse,
            "description": descriptions.get(f"s{status}", _DESCRIPTIONS[status]),
        }
        for status in statuses
    }


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
            for e in errors
        ]
        return JSONResponse(
            error_body("validation_error", format_validation_errors(errors), details),
            status_code=422,
        )

    @app.exception_handler(ValidationError)
    async def _pydantic(_request: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse(
            error_body("validation_error", format_validation_errors(exc.errors())), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        return JSONResponse(
            error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )
