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
  wide rows (`{"timestamp": ..., "temperature": ..., "valid": {...}}`);
- one payload holds at most one value per machine, metric and time: the first is kept and every
  later one is rejected with a reason. Storage keeps one row per (time, machine, metric), so
  without this rule the later ones would vanish as "duplicates"; it bites mostly when several
  readings of a list carry no timestamp and so all take the same time (issue 8, item 5).

This runs once per MQTT message, in the message callback, so it is a hot path. Readings go
through `_append_plain` first: a few type checks per value, metric names and ISO timestamps
looked up in small caches. Anything it does not accept outright (a wrong type, a bad name, a
missing metric...) is parsed again from scratch by `add_reading`, which says what is wrong and
where; so the fast path can only change the speed, never the outcome.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
import uuid
from collections.abc import Callable
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
# Bounds of the parse caches: a fleet's metric names, the distinct timestamp strings of the
# messages in flight (many machines stamp the same second), machine ids of gateway entries.
NAME_CACHE_SIZE = 4096
ISO_CACHE_SIZE = 1024
UUID_CACHE_SIZE = 16384


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
    # (time, machine_id, metric) of rows the sender marked invalid (a pulled source's tags):
    # stored with valid=false whatever their value. Empty for devices.
    forced_invalid: set[tuple[datetime, uuid.UUID, str]] = field(default_factory=set)

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
    if isinstance(value, str):
        result = _parse_iso(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        # Chained comparisons: NaN fails them, and an int beyond float range compares exactly.
        if not 0 <= value < math.inf:
            raise ValueError("timestamp must be a finite, non-negative epoch value")
        try:
            result = datetime.fromtimestamp(
                value / 1000 if value >= EPOCH_MS_THRESHOLD else value, UTC
            )
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError("timestamp is out of range") from exc
    else:
        raise ValueError("timestamp must be ISO 8601 or epoch seconds/milliseconds")
    if result > clock.now + clock.future_skew:
        raise ValueError(
            f"timestamp {result.isoformat()} is in the future "
            f"(more than {int(clock.future_skew.total_seconds())} s ahead of the server)"
        )
    return result


@functools.lru_cache(maxsize=ISO_CACHE_SIZE)
def _parse_iso(value: str) -> datetime:
    # Cached: the result does not depend on the clock (the future check is the caller's), and
    # errors are raised, so never cached.
    try:
        result = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"timestamp {value[:40]!r} is not ISO 8601") from exc
    if result.tzinfo is None:
        raise ValueError(f"timestamp {value[:40]!r} has no UTC offset (add 'Z' or '+01:00')")
    if result.tzinfo is not UTC:  # a 'Z' suffix already gives UTC
        try:
            result = result.astimezone(UTC)
        except OverflowError as exc:
            raise ValueError(f"timestamp {value[:40]!r} is out of range once in UTC") from exc
    if result < EPOCH:
        raise ValueError(f"timestamp {value[:40]!r} is before 1970")
    return result


def _metric_value(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"value of {name!r} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        raise ValueError(f"value of {name!r} is out of range") from None
    if not math.isfinite(number):
        raise ValueError(f"value of {name!r} is not finite")
    return number


@functools.lru_cache(maxsize=NAME_CACHE_SIZE)
def _is_metric_name(name: str) -> bool:
    return METRIC_NAME.match(name) is not None and name not in RESERVED_METRIC_NAMES


def _append_plain(
    rows: list[Row], values: dict[Any, Any], time: datetime, machine_id: uuid.UUID, *, flat: bool
) -> bool:
    """Append the readings of `values` if every entry is fine (a finite number under a valid
    name, or null; with `flat`, `timestamp` is skipped) and there is at least one; otherwise
    append nothing and return False, for `add_reading` to say what is wrong."""
    start = len(rows)
    isfinite = math.isfinite
    for name, value in values.items():
        kind = type(value)
        if kind is float:
            if not isfinite(value):
                break
        elif kind is int:
            if not -1e300 < value < 1e300:
                break
            value = float(value)
        elif value is None or (flat and name == "timestamp"):
            continue
        else:
            break
        if type(name) is not str or not _is_metric_name(name):
            if flat and name == "timestamp":  # an epoch number
                continue
            break
        rows.append((time, machine_id, name, value))
    else:
        if len(rows) > start:
            return True
    del rows[start:]
    return False


def _append_reading(
    out: Parsed, reading: Any, *, machine_id: uuid.UUID, default_time: datetime, clock: Clock
) -> bool:
    """`_append_plain` for a reading object with its optional own timestamp."""
    if type(reading) is not dict:
        return False
    stamp = reading.get("timestamp")
    time = default_time
    if stamp is not None:
        try:
            time = parse_timestamp(stamp, clock)
        except ValueError:
            return False
    return _append_plain(out.rows, reading, time, machine_id, flat=True)


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
        data = payload["data"]
        if not isinstance(data, dict):
            raise PayloadError("'data' must be an object of metric values")
        if _append_plain(out.rows, data, base, machine_id, flat=False):
            return out
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
        starts: list[int] = []
        for i, reading in enumerate(readings):
            starts.append(len(out.rows))
            if _append_reading(out, reading, machine_id=machine_id, default_time=base, clock=clock):
                continue
            add_reading(
                out,
                reading,
                machine_id=machine_id,
                default_time=base,
                clock=clock,
                where=f"readings[{i}]",
            )
        _reject_repeats(out, starts, lambda k: f"readings[{k}]")
    # The flat shape: `base` is already this object's own timestamp.
    elif not _append_plain(out.rows, payload, base, machine_id, flat=True):
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
    # Where each reading's rows start (`starts`), and which reading each entry starts with
    # (`entries`): enough to name a repeated reading without formatting every location.
    starts: list[int] = []
    entries: list[int] = []
    for i, entry in enumerate(batch):
        entries.append(len(starts))
        # Locations are formatted only for rejections: most entries have none.
        if not isinstance(entry, dict):
            out.reject(f"batch[{i}]", "a batch entry must be a JSON object")
            continue
        try:
            machine_id = _machine_uuid(entry.get("machine_id"))
        except ValueError:
            out.reject(f"batch[{i}].machine_id", "machine_id must be a UUID")
            continue
        if only_machine is not None and machine_id != only_machine:
            out.reject(
                f"batch[{i}].machine_id",
                f"this API key belongs to machine {only_machine}; "
                f"it may not send readings for {machine_id}",
            )
            continue
        readings = entry.get("readings")
        if not isinstance(readings, list):
            out.reject(f"batch[{i}].readings", "'readings' must be a list")
            continue
        for j, reading in enumerate(readings):
            starts.append(len(out.rows))
            if _append_reading(out, reading, machine_id=machine_id, default_time=base, clock=clock):
                continue
            add_reading(
                out,
                reading,
                machine_id=machine_id,
                default_time=base,
                clock=clock,
                where=f"batch[{i}].readings[{j}]",
            )

    def where(k: int) -> str:
        i = bisect.bisect_right(entries, k) - 1
        return f"batch[{i}].readings[{k - entries[i]}]"

    _reject_repeats(out, starts, where)
    return out


def _reject_repeats(out: Parsed, starts: list[int], where: Callable[[int], str]) -> None:
    """Keep the first row of each (time, machine, metric) in `out.rows`, reject the others.

    `starts[k]` is the index of the first row of reading `k` (readings with no good value
    have none), `where(k)` its location. Only a payload with a repeat pays for more than one
    set of keys.
    """
    rows = out.rows
    # Keyed by the UUID's integer: `UUID.__hash__` is Python code, twice as slow per row.
    if len(rows) < 2 or len({(t, m.int, k) for t, m, k, _ in rows}) == len(rows):
        return
    first: dict[tuple[datetime, int, str], int] = {}
    kept: list[Row] = []
    reading = 0
    for n, row in enumerate(rows):
        # The reading this row belongs to: the last one that starts at or before it.
        while reading + 1 < len(starts) and starts[reading + 1] <= n:
            reading += 1
        time, machine_id, metric, _ = row
        owner = first.setdefault((time, machine_id.int, metric), reading)
        if owner == reading:  # a reading never holds one metric twice (JSON object keys)
            kept.append(row)
            continue
        out.reject(
            f"{where(reading)}.{metric}",
            f"{where(owner)} already has {metric!r} at {time.isoformat()}: a payload holds "
            "one value per machine, metric and time (readings without a timestamp all take "
            "the payload's time: give each its own)",
        )
    out.rows = kept


def _machine_uuid(value: Any) -> uuid.UUID:
    if type(value) is str:
        return _uuid(value)
    return uuid.UUID(str(value))


@functools.lru_cache(maxsize=UUID_CACHE_SIZE)
def _uuid(text: str) -> uuid.UUID:
    # A gateway names the same machines in every message.
    return uuid.UUID(text)
