"""The settings `/api/v1/config` may change: each is a LiveConfig field with a type, bounds and
a description. Adding a key = adding a LiveConfig field and an entry here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from plantpulse.errors import InvalidInput, NotFound

DAY = 86_400.0


class UnknownConfigKey(NotFound):
    pass


class InvalidConfigValue(InvalidInput):
    pass


@dataclass(frozen=True, slots=True)
class ConfigKey:
    name: str
    type: str
    description: str
    adapter: TypeAdapter[Any]

    def validate(self, value: Any) -> Any:
        try:
            return self.adapter.validate_python(value)
        except ValidationError as exc:
            reasons = "; ".join(e["msg"] for e in exc.errors(include_url=False))
            raise InvalidConfigValue(f"{self.name} must be {self.type}: {reasons}") from exc


def _key(name: str, type_: str, description: str, annotation: Any) -> ConfigKey:
    return ConfigKey(name, type_, description, TypeAdapter(annotation))


KEYS: dict[str, ConfigKey] = {
    key.name: key
    for key in (
        _key(
            "future_skew_seconds",
            "a number of seconds from 0 to 86400",
            "Readings stamped further than this into the future are rejected at ingest.",
            Annotated[float, Field(strict=True, ge=0, le=DAY)],
        ),
        _key(
            "auto_register_machines",
            "true or false",
            "Register unknown machine ids on their first reading instead of rejecting them.",
            Annotated[bool, Field(strict=True)],
        ),
        _key(
            "backfill_window_seconds",
            "a number of seconds from 0 to 2592000 (30 days)",
            "Readings older than this when they arrive are stored but fire no live alerts.",
            Annotated[float, Field(strict=True, ge=0, le=30 * DAY)],
        ),
        _key(
            "retention_days",
            "an integer from 1 to 36500, or null to keep readings forever",
            "Readings older than this many days are deleted (TimescaleDB retention policy on "
            "the Community edition, a periodic job otherwise).",
            Annotated[int, Field(strict=True, ge=1, le=36_500)] | None,
        ),
        _key(
            "rollup_1m_retention_days",
            "an integer from 1 to 36500, or null to keep them forever",
            "1-minute rollups older than this many days are deleted (checked hourly); "
            "bucketed queries over older ranges can still use the 1-hour rollups.",
            Annotated[int, Field(strict=True, ge=1, le=36_500)] | None,
        ),
        _key(
            "rollup_1h_retention_days",
            "an integer from 1 to 36500, or null to keep them forever",
            "1-hour rollups older than this many days are deleted (checked hourly).",
            Annotated[int, Field(strict=True, ge=1, le=36_500)] | None,
        ),
    )
}


def get_key(name: str) -> ConfigKey:
    try:
        return KEYS[name]
    except KeyError:
        raise UnknownConfigKey(
            f"unknown setting {name!r}; known: {', '.join(sorted(KEYS))}"
        ) from None
