"""The PlantPulse error tree and the handlers that give every error one JSON envelope.

    {"error": "MachineNotFound", "detail": "machine 3f... does not exist", "status": 404}

Validation errors add `errors` (one entry per field); unexpected exceptions add `request_id`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any, cast

import asyncpg
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class PlantPulseError(Exception):
    status_code = 400

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers

    @property
    def name(self) -> str:
        return type(self).__name__


class BadRequest(PlantPulseError):
    status_code = 400


class NotAuthenticated(PlantPulseError):
    status_code = 401

    def __init__(self, detail: str = "not authenticated") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class PermissionDenied(PlantPulseError):
    status_code = 403


class NotFound(PlantPulseError):
    status_code = 404


class Conflict(PlantPulseError):
    status_code = 409


class PayloadTooLarge(PlantPulseError):
    status_code = 413


class InvalidInput(PlantPulseError):
    status_code = 422


class ServiceUnavailable(PlantPulseError):
    status_code = 503


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    error: str
    detail: str
    status: int
    errors: list[FieldError] | None = None
    request_id: str | None = None


_STATUS_NAMES = {
    400: "BadRequest",
    401: "NotAuthenticated",
    403: "PermissionDenied",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationError",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}

_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing, invalid, expired or revoked token",
    403: "The caller lacks the permission",
    404: "Not found",
    409: "Conflicts with existing data",
    413: "Payload too large",
    422: "Validation failed (per-field detail in `errors`)",
    503: "A dependency is unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for routes, all with the one error envelope."""
    return {
        code: {"model": ErrorResponse, "description": _DESCRIPTIONS.get(code, "Error")}
        for code in codes
    }


def document_error_envelope(schema: dict[str, Any]) -> None:
    """Make the OpenAPI document say what the handlers below do: FastAPI's default 422 schema
    (HTTPValidationError, never sent) becomes the envelope, and every route that reads a body
    documents the 400 for a body that cannot be decoded (FastAPI answers it before validation)."""
    components = schema.get("components", {}).get("schemas", {})
    if "ErrorResponse" not in components:
        return
    default_422 = {"$ref": "#/components/schemas/HTTPValidationError"}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            for code, response in responses.items():
                body = response.get("content", {}).get("application/json", {})
                if body.get("schema") == default_422:
                    body["schema"] = {"$ref": "#/components/schemas/ErrorResponse"}
                    response["description"] = _DESCRIPTIONS.get(int(code), "Error")
            if "requestBody" in operation and "400" not in responses:
                responses["400"] = {
                    "description": _DESCRIPTIONS[400],
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorResponse"}
                        }
                    },
                }
            operation["responses"] = dict(sorted(responses.items()))
    # In this order: FastAPI's ValidationError is referenced only by HTTPValidationError.
    for name in ("HTTPValidationError", "ValidationError"):
        if f'"#/components/schemas/{name}"' not in json.dumps(schema):
            components.pop(name, None)


def envelope(
    status: int,
    detail: str,
    *,
    error: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "error": error or _STATUS_NAMES.get(status, "Error"),
        "detail": detail,
        "status": status,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


def _field_errors(errors: Any) -> list[dict[str, Any]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in errors
    ]


def _summary(fields: list[dict[str, Any]]) -> str:
    parts = []
    for field in fields[:5]:
        where = ".".join(str(p) for p in field["loc"] if p not in ("body", "query", "path"))
        parts.append(f"{where}: {field['msg']}" if where else field["msg"])
    more = f" (+{len(fields) - 5} more)" if len(fields) > 5 else ""
    return "; ".join(parts) + more


async def _plantpulse_error(_: Request, exc: Exception) -> JSONResponse:
    exc = cast(PlantPulseError, exc)
    return envelope(exc.status_code, exc.detail, error=exc.name, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    fields = _field_errors(cast(RequestValidationError, exc).errors())
    return envelope(422, _summary(fields) or "invalid request", errors=fields)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    exc = cast(StarletteHTTPException, exc)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return envelope(exc.status_code, detail, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    log.exception("unhandled error request_id=%s %s %s", request_id, request.method, request.url)
    return envelope(500, "internal error; quote the request id", request_id=request_id)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable for %s %s: %s", request.method, request.url.path, exc)
    return envelope(503, "the database is unavailable; retry later", headers={"Retry-After": "5"})


# Connection-level failures of the database (down, restarting, unreachable) are an outage,
# not a bug: 503 with the envelope. Anything else from the database stays a 500.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    ConnectionError,
)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PlantPulseError, _plantpulse_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for exc_type in DATABASE_UNAVAILABLE:
        app.add_exception_handler(exc_type, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected_error)
