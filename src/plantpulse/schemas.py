"""Schemas shared by every capability: pagination, UTC timestamps and storable input values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import AfterValidator, BaseModel, Field, PlainSerializer

T = TypeVar("T")

# PostgreSQL takes OFFSET as a bigint; without a bound, a larger number overflows the driver
# (a 500). Nobody pages two billion rows deep.
MAX_OFFSET = 2**31 - 1


def utc_iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# Responses always carry UTC with an explicit offset ("...Z").
UtcDatetime = Annotated[datetime, PlainSerializer(utc_iso, return_type=str, when_used="json")]


def storable(value: str) -> str:
    """PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded as UTF-8:
    reject both here so they are a 422, not a database error."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode text") from exc
    return value


def _in_utc_range(value: datetime) -> datetime:
    # 9999-12-31T23:59-01:00 is a valid datetime whose UTC instant is not: refuse it here
    # rather than let the database driver fail on it.
    if value.tzinfo is None:
        return value
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("is out of range once converted to UTC") from exc


# Strings from requests that are stored in, or compared against, PostgreSQL text.
Text = Annotated[str, AfterValidator(storable)]
# Timestamps from requests (query parameters, bodies): in UTC when they carry an offset.
InputDatetime = Annotated[datetime, AfterValidator(_in_utc_range)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="Number of matching items, ignoring limit/offset")
    limit: int
    offset: int
