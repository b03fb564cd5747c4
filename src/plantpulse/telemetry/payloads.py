"""Turn ingest payloads (HTTP bodies and MQTT messages alike) into narrow reading rows.

Bad parts are rejected with a reason and a location; good parts go on, so one bad reading never
drops the good ones next to it. Rules:

- any numeric field of a reading other than `timestamp` is a metric; `null` is skipped;
  strings, booleans, objects and non-finite numbers are rejected with a reason;
- `timestamp` is ISO 8601 with a UTC offset, or epoch seconds / milliseconds (numbers from
  1e11 on are milliseconds); a reading without one takes the batch's, then the server's time;
- timestamps more than `future_skew` into the future are rejected, and so are those before
  1970 (epoch values cannot express them, and TimescaleDB cannot store the earliest years);
- `timestamp` and `valid` are never metric names: query responses use them as keys of the
  wide rows (`{"timestamp": ..., "temperature": ..., "valid": {...}}`).
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# (time, machine_id, metric, value)
Row = tuple[datetime, uuid.UUID, str, float]

METRIC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,63}$")
EPOCH_MS_THRESHOLD = 1e11
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RESERVED_KEYS = frozenset({"timestamp"})
RESERVED_METRIC_NAMES = frozenset({"timestamp", "valid"})


class PayloadError(ValueError):
    """The payload as a whole is unusable (not an object, wrong shape, too many readings)."""


@dataclass(slots=True)
class Rejection:
    where: str
    reason: str


@dataclass(slots=True)
class Parsed:
    rows: list[Row] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def reject(self, where: str, reason: str) -> None:
        self.rejected.append(Rejection(where, reason))


@dataclass(frozen=True, slots=True)
class Clock:
    """The server's idea of now and how far ahead a device clock may run."""

    now: datetime
    future_skew: timedelta

    @classmethod
    def current(cls, future_skew_seconds: float) -> Clock:
        return cls(datetime.now(UTC), timedelta(seconds=future_skew_seconds))


def parse_timestamp(value: Any, clock: Clock) -> datetime:
    """A timestamp from ISO 8601 (with offset) or epoch seconds/milliseconds; ValueError if not."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be ISO 8601 or epoch seconds/milliseconds")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("timestamp must be a finite, non-negative epoch value")
        seconds = value / 1000 if value >= EPOCH_MS_THRESHOLD else value
        try:
            result = datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError("timestamp is out of range") from exc
    elif isinstance(value, str):
        try:
            result = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"timestamp {value[:40]!r} is not ISO 8601") from exc
        if result.tzinfo is None:
            raise ValueError(f"timestamp {value[:40]!r} has no UTC offset (add 'Z' or '+01:00')")
        try:
            result = result.astimezone(UTC)
        except OverflowError as exc:
            raise ValueError(f"timestamp {value[:40]!r} is out of range once in UTC") from exc
        if result < EPOCH:
            raise ValueError(f"timestamp {value[:40]!r} is before 1970")
    else:
        raise ValueError("timestamp must be ISO 8601 or epoch seconds/milliseconds")
    if result > clock.now + clock.future_skew:
        raise ValueError(
            f"timestamp {result.isoformat()} is in the future "
            f"(more than {int(clock.future_skew.total_seconds())} s ahead of the server)"
        )
    return result


def _metric_value(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"value of {name!r} is not a number")
    try:
        number = float(value)
    except OverflowError:
        # An integer beyond the float range: as unusable as infinity.
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"value of {name!r} is not finite")
    return number


def add_reading(
    out: Parsed,
    reading: Any,
    *,
    machine_id: uuid.UUID,
    default_time: datetime,
    clock: Clock,
    where: str,
    metrics: dict[str, Any] | None = None,
) -> None:
    """Append one reading's metrics to `out`. `metrics` overrides where the values are."""
    if not isinstance(reading, dict):
        out.reject(where, "a reading must be a JSON object")
        return
    time = default_time
    if reading.get("timestamp") is not None:
        try:
            time = parse_timestamp(reading["timestamp"], clock)
        except ValueError as exc:
            out.reject(f"{where}.timestamp", str(exc))
            return
    values = reading if metrics is None else metrics
    rejected_before = len(out.rejected)
    found = False
    for name, value in values.items():
        if metrics is None and name in RESERVED_KEYS:
            continue
        if value is None:
            continue
        if not isinstance(name, str) or not METRIC_NAME.match(name):
            out.reject(
                f"{where}.{str(name)[:64]}", "metric names are 1-64 of A-Z a-z 0-9 _ . : / -"
            )
            continue
        if name in RESERVED_METRIC_NAMES:
            out.reject(f"{where}.{name}", f"{name!r} is reserved and cannot be a metric name")
            continue
        try:
            out.rows.append((time, machine_id, name, _metric_value(name, value)))
        except ValueError as exc:
            out.reject(f"{where}.{name}", str(exc))
            continue
        found = True
    if not found and len(out.rejected) == rejected_before:
        out.reject(where, "the reading has no numeric metric")


def _base_time(payload: dict[str, Any], clock: Clock, out: Parsed, where: str) -> datetime | None:
    if payload.get("timestamp") is None:
        return clock.now
    try:
        return parse_timestamp(payload["timestamp"], clock)
    except ValueError as exc:
        out.reject(f"{where}timestamp", str(exc))
        return None


def single_device(payload: Any, *, machine_id: uuid.UUID, clock: Clock) -> Parsed:
    """One machine's readings, in any of the shapes devices send:

    `{"timestamp"?, "data": {...}, "metadata"?}`, `{"timestamp"?, "temperature": 72.5, ...}`
    or `{"timestamp"?, "readings": [{...}, ...]}`.
    """
    if not isinstance(payload, dict):
        raise PayloadError("the payload must be a JSON object")
    out = Parsed()
    base = _base_time(payload, clock, out, "")
    if base is None:
        return out
    if "data" in payload:
        if not isinstance(payload["data"], dict):
            raise PayloadError("'data' must be an object of metric values")
        add_reading(
            out,
            payload,
            machine_id=machine_id,
            default_time=base,
            clock=clock,
            where="data",
            metrics=payload["data"],
        )
    elif "readings" in payload:
        readings = payload["readings"]
        if not isinstance(readings, list):
            raise PayloadError("'readings' must be a list")
        for i, reading in enumerate(readings):
            add_reading(
                out,
                reading,
                machine_id=machine_id,
                default_time=base,
                clock=clock,
                where=f"readings[{i}]",
            )
    else:
        add_reading(out, payload, machine_id=machine_id, default_time=base, clock=clock, where="$")
    return out


def gateway_batch(payload: Any, *, clock: Clock, only_machine: uuid.UUID | None = None) -> Parsed:
    """The gateway format: `{"gateway_id", "timestamp"?, "batch": [{"machine_id", "readings"}]}`.

    With `only_machine` (a device authenticated as that machine), entries for any other
    machine are rejected one by one; the device's own readings still go in.
    """
    if not isinstance(payload, dict):
        raise PayloadError("the payload must be a JSON object")
    batch = payload.get("batch")
    if not isinstance(batch, list):
        raise PayloadError("'batch' must be a list of machine entries")
    out = Parsed()
    base = _base_time(payload, clock, out, "")
    if base is None:
        return out
    for i, entry in enumerate(batch):
        where = f"batch[{i}]"
        if not isinstance(entry, dict):
            out.reject(where, "a batch entry must be a JSON object")
            continue
        try:
            machine_id = uuid.UUID(str(entry.get("machine_id")))
        except ValueError:
            out.reject(f"{where}.machine_id", "machine_id must be a UUID")
            continue
        if only_machine is not None and machine_id != only_machine:
            out.reject(
                f"{where}.machine_id",
                f"this API key belongs to machine {only_machine}; "
                f"it may not send readings for {machine_id}",
            )
            continue
        readings = entry.get("readings")
        if not isinstance(readings, list):
            out.reject(f"{where}.readings", "'readings' must be a list")
            continue
        for j, reading in enumerate(readings):
            add_reading(
                out,
                reading,
                machine_id=machine_id,
                default_time=base,
                clock=clock,
                where=f"{where}.readings[{j}]",
            )
    return out
