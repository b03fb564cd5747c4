"""The PlantPulse error tree and the handlers that give every error one JSON envelope.

    {"error": "MachineNotFound", "detail": "machine 3f... does not exist", "status": 404}

Validation errors add `errors` (one entry per field); unexpected exceptions add `request_id`.

Database failures, wherever they are raised (a route, a dependency such as authentication, the
request transaction's commit, the raw asyncpg pool), are answered by what they mean
(`database_error`): an outage is 503 with `Retry-After`; a value or a conflict the database
refuses is 422 or 409 with its reason; a configured resource limit is 507; anything else is a
bug, 500 with a request id and the traceback in the log.
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

from plantpulse import db_errors

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
    """A dependency is down: the same request may succeed later (`Retry-After` says when to
    try again)."""

    status_code = 503
    retry_after_seconds = 5

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(
            detail, headers={"Retry-After": str(self.retry_after_seconds), **(headers or {})}
        )


class DatabaseUnavailable(ServiceUnavailable):
    """The database is down, unreachable, restarting, or our connection to it broke."""


class ValueRefused(InvalidInput):
    """The database refused a value of the request (out of range, bad encoding, too large):
    sending it again fails again."""


class DatabaseConflict(Conflict):
    """The database refused the change because of other data (unique key, reference)."""


class DatabaseLimitExceeded(PlantPulseError):
    """The request needs more than a configured database limit allows (temp_file_limit, memory,
    locks): not an outage, so no `Retry-After`; narrow the request or raise the limit.

    507 ("the server is unable to store the representation needed to complete the request")
    rather than 503, which clients retry forever, or 500, which says "bug"."""

    status_code = 507


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
    507: "InsufficientStorage",
}

_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing, invalid, expired or revoked token",
    403: "The caller lacks the permission",
    404: "Not found",
    409: "Conflicts with existing data",
    413: "Payload too large",
    422: "Validation failed (per-field detail in `errors`)",
    503: "A dependency (the database, Redis) is unavailable; retry after `Retry-After` seconds",
    507: "The request exceeds a configured database limit; narrow it (or raise the limit)",
}


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer"},
    }
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for routes, all with the one error envelope."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        responses[code] = {"model": ErrorResponse, "description": _DESCRIPTIONS.get(code, "Error")}
        if code == 503:
            responses[code]["headers"] = _RETRY_AFTER
    return responses


def document_error_envelope(schema: dict[str, Any]) -> None:
    """Make the OpenAPI document say what the handlers below do: FastAPI's default 422 schema
    (HTTPValidationError, never sent) becomes the envelope, every route that reads a body
    documents the 400 for a body that cannot be decoded (FastAPI answers it before validation),
    and every API route documents the 503 of a database outage (each one authenticates or
    reads the database)."""
    components = schema.get("components", {}).get("schemas", {})
    if "ErrorResponse" not in components:
        return
    default_422 = {"$ref": "#/components/schemas/HTTPValidationError"}
    envelope_schema = {
        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
    }
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            if path.startswith("/api/") and "503" not in responses:
                responses["503"] = {
                    "description": _DESCRIPTIONS[503],
                    "headers": _RETRY_AFTER,
                    "content": envelope_schema,
                }
            for code, response in responses.items():
                body = response.get("content", {}).get("application/json", {})
                if body.get("schema") == default_422:
                    body["schema"] = {"$ref": "#/components/schemas/ErrorResponse"}
                    response["description"] = _DESCRIPTIONS.get(int(code), "Error")
            if "requestBody" in operation and "400" not in responses:
                responses["400"] = {"description": _DESCRIPTIONS[400], "content": envelope_schema}
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
    log.error(
        "unhandled error request_id=%s %s %s",
        request_id,
        request.method,
        request.url,
        exc_info=exc,  # explicit: this handler is also called outside an `except` block
    )
    return envelope(500, "internal error; quote the request id", request_id=request_id)


# SQLSTATE classes (or codes) of permanent database errors that a request can cause, and the
# error that says so. Anything else permanent is a bug: 500.
_REFUSED_VALUE = ("22", "23502", "23514", "54")  # data exception, NOT NULL, CHECK, program limit
_CONFLICT = ("23",)  # unique, foreign key, exclusion (after the two above)
_RESOURCE_LIMIT = ("53",)  # insufficient resources (53300 too_many_connections is transient)


def _reason(exc: BaseException) -> str:
    inner = db_errors.unwrap(exc)
    lines = str(getattr(inner, "message", None) or inner).strip().splitlines()
    text = lines[0] if lines else type(inner).__name__
    detail = getattr(inner, "detail", None)
    return (f"{text} ({detail})" if detail else text)[:500]


def database_error(exc: BaseException, *, where: str) -> PlantPulseError | None:
    """The API error for a failure of the database or the connection to it, logged with the
    real reason; None for a permanent error we cannot explain (a bug: the caller answers 500
    and logs the traceback). `where` says what failed, for the log line."""
    reason = _reason(exc)
    if db_errors.is_transient(exc):
        log.warning("database unavailable (%s): %s: %s", where, type(exc).__name__, reason)
        return DatabaseUnavailable("the database is unavailable; retry later")
    sqlstate = db_errors.sqlstate(exc) or ""
    error: PlantPulseError
    if sqlstate.startswith(_REFUSED_VALUE):
        error = ValueRefused(f"the database refused a value: {reason}")
    elif sqlstate.startswith(_CONFLICT):
        error = DatabaseConflict(f"the database refused the change: {reason}")
    elif sqlstate.startswith(_RESOURCE_LIMIT):
        error = DatabaseLimitExceeded(
            f"the request exceeds a database limit: {reason}; narrow the request (a shorter "
            "time range, a smaller batch) or ask the operator to raise the limit"
        )
    else:
        return None
    level = logging.ERROR if error.status_code >= 500 else logging.WARNING
    log.log(level, "database refused (%s): SQLSTATE %s %s", where, sqlstate, reason)
    return error


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    error = database_error(exc, where=f"{request.method} {request.url.path}")
    if error is None:
        return await _unexpected_error(request, exc)
    return envelope(error.status_code, error.detail, error=error.name, headers=error.headers)


# What the database, its driver or the connection to it can raise (see db_errors): handled here,
# in the app's exception middleware, rather than by the catch-all, which re-raises to the server.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    sqlalchemy.exc.SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PlantPulseError, _plantpulse_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for exc_type in DATABASE_ERRORS:
        app.add_exception_handler(exc_type, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
