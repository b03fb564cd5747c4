"""Server events as sent to clients. Each event is serialised at most twice (with and without
invalid readings), however many connections receive it.

Encoding is orjson's: it writes UUIDs and UTC datetimes itself (`...Z`, as `utc_iso` does), so
reading events carry those objects and never build their strings in Python."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from plantpulse.schemas import utc_iso
from plantpulse.telemetry.writer import StoredRow

_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def dumps(value: Any) -> str:
    """Compact JSON text; anything orjson does not know is written as str(), as before."""
    return orjson.dumps(value, default=str, option=_OPTIONS).decode()


class Event:
    __slots__ = ("_full", "_valid_only", "body", "has_invalid", "machine_id", "type")

    def __init__(self, body: dict[str, Any], *, machine_id: uuid.UUID | None = None) -> None:
        self.body = body
        self.type: str = body["type"]
        machine = body.get("machine_id")
        self.machine_id = machine_id or (uuid.UUID(machine) if machine else None)
        valid: dict[str, bool] = body.get("valid") or {}
        self.has_invalid = not all(valid.values())
        self._full: str | None = None
        self._valid_only: str | None = None

    def full_text(self) -> str:
        if self._full is None:
            self._full = dumps(self.body)
        return self._full

    def text(self, *, include_invalid: bool) -> str | None:
        """The JSON for a client; None when nothing is left for it to see."""
        if include_invalid or not self.has_invalid:
            return self.full_text()
        if self._valid_only is None:
            valid = self.body["valid"]
            metrics = {k: v for k, v in self.body["metrics"].items() if valid.get(k)}
            if not metrics:
                return None
            self._valid_only = dumps(
                {**self.body, "metrics": metrics, "valid": dict.fromkeys(metrics, True)}
            )
        return self._valid_only


def reading_bodies(rows: Iterable[StoredRow]) -> list[dict[str, Any]]:
    """One `reading` event body per machine and timestamp, carrying all its metrics.

    `machine_id` is a UUID and `timestamp` a datetime (a `utc_iso` string if not in UTC):
    encode them with `dumps`."""
    grouped: dict[tuple[int, datetime], dict[str, Any]] = {}
    get = grouped.get
    # This loop runs for every committed row: keyed on the UUID's int (hashed in C, where
    # UUID.__hash__ is a Python call), one dict per event built once.
    for t, machine_id, metric, value, valid in rows:
        key = (machine_id.int, t)
        body = get(key)
        if body is None:
            grouped[key] = {
                "type": "reading",
                "machine_id": machine_id,
                "timestamp": t if t.tzinfo is UTC else utc_iso(t),
                "metrics": {metric: value},
                "valid": {metric: valid},
            }
        else:
            body["metrics"][metric] = value
            body["valid"][metric] = valid
    return list(grouped.values())


def alert_event(action: str, alert: dict[str, Any]) -> Event:
    """`action`: raised, cleared or acknowledged; `alert` as in the REST API (JSON mode)."""
    return Event(
        {"type": "alert", "action": action, "machine_id": alert["machine_id"], "alert": alert}
    )


def machine_status_event(
    machine_id: uuid.UUID, *, status: str, connectivity: str, last_seen_at: datetime | None
) -> Event:
    return Event(
        {
            "type": "machine_status",
            "machine_id": str(machine_id),
            "status": status,
            "connectivity": connectivity,
            "last_seen_at": utc_iso(last_seen_at) if last_seen_at else None,
        }
    )
