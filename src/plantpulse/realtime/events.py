"""Server events as sent to clients. Each event is serialised at most twice (with and without
invalid readings), however many connections receive it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from plantpulse.schemas import utc_iso
from plantpulse.telemetry.writer import StoredRow

# One encoder for all events: json.dumps(separators=...) would build a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def _dumps(body: dict[str, Any]) -> str:
    return _ENCODER.encode(body)


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
            self._full = _dumps(self.body)
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
            self._valid_only = _dumps(
                {**self.body, "metrics": metrics, "valid": dict.fromkeys(metrics, True)}
            )
        return self._valid_only


def reading_events(rows: Iterable[StoredRow]) -> list[Event]:
    """One `reading` event per machine and timestamp, carrying all its metrics."""
    grouped: dict[tuple[uuid.UUID, datetime], tuple[dict[str, float], dict[str, bool]]] = {}
    for t, machine_id, metric, value, valid in rows:
        # A plain dict lookup: this loop runs for every committed row.
        entry = grouped.get((machine_id, t))
        if entry is None:
            entry = grouped[(machine_id, t)] = ({}, {})
        entry[0][metric] = value
        entry[1][metric] = valid
    return [
        Event(
            {
                "type": "reading",
                "machine_id": str(machine_id),
                "timestamp": utc_iso(t),
                "metrics": metrics,
                "valid": flags,
            },
            machine_id=machine_id,
        )
        for (machine_id, t), (metrics, flags) in grouped.items()
    ]


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
