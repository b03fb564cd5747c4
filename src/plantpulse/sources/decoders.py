"""Turn a source's JSON answer into reading rows, with validity from each point's tags.

A response is one point or a list of points (optionally under a path, `points`). Each point has
a timestamp (epoch seconds, epoch milliseconds from 1e11 on, or ISO 8601; no offset means UTC),
a value and optional tags.

- `bytes-float32`: the value is a list of 4 bytes (0..255) holding an IEEE-754 float32. Byte
  order is configurable; little-endian is the default because the systems we replace send the
  bytes as an x86/ARM memory dump: `[157, 42, 76, 190]` is -0.1994 little-endian, -2.25e-21
  big-endian. The value is stored as the shortest decimal that is the same float32
  (-0.1993813, not -0.19938130676746368). A wrong length, a byte outside 0..255 or a
  NaN/infinity is *rejected* (listed in the run with its location and reason, not stored):
  there is no number to store.
- `json`: one or more values per point, each at its own path, each stored under its metric.

Validity: with `bad_tags` None any tag marks the point invalid; with a list, only those tags
do (`[]`: tags never do). An invalid point is stored with `valid=false` (the writer's
`forced_invalid`), visible only with `telemetry:read-invalid`, exactly as a reading outside its
metric's plausible range.
"""

from __future__ import annotations

import math
import re
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from plantpulse.telemetry.payloads import Clock, Parsed, parse_timestamp

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
# Steps of a path: object keys (str) and list indexes (int).
Path = tuple[str | int, ...]


class PathError(ValueError):
    pass


def compile_path(text: str) -> Path:
    """`a.b[0].c`, optionally starting with `$` or `$.`; "" or "$" is the whole value."""
    rest = text.strip()
    if rest.startswith("$"):
        rest = rest[1:].lstrip(".")
    steps: list[str | int] = []
    position = 0
    while position < len(rest):
        if rest[position] == "." and steps:
            position += 1
        match = _STEP.match(rest, position)
        if match is None:
            raise PathError(f"path {text[:80]!r} is not like 'a.b[0].c'")
        key, index = match.groups()
        steps.append(int(index) if index is not None else key)
        position = match.end()
    return tuple(steps)


_MISSING = object()


def lookup(value: Any, path: Path) -> Any:
    """The value at `path`, or `_MISSING`."""
    for step in path:
        if isinstance(step, int):
            if not isinstance(value, list) or step >= len(value):
                return _MISSING
        elif not isinstance(value, dict) or step not in value:
            return _MISSING
        value = value[step]
    return value


@dataclass(frozen=True, slots=True)
class DecoderSpec:
    """A validated decoder configuration (schemas.DecoderConfig, compiled)."""

    kind: Literal["bytes-float32", "json"]
    points: Path = ()
    time: Path = ("time",)
    tags: Path = ("tags",)
    # metric -> path of its value; None as metric name means "the source's metric".
    values: tuple[tuple[str | None, Path], ...] = ((None, ("value",)),)
    machine: Path | None = None
    byte_order: Literal["little", "big"] = "little"


@dataclass(slots=True)
class Decoded:
    parsed: Parsed = field(default_factory=Parsed)
    points: int = 0
    invalid: int = 0


def decode_float32(value: Any, byte_order: str) -> float:
    """4 bytes as a float32; ValueError saying what is wrong."""
    if not isinstance(value, list) or len(value) != 4:
        size = len(value) if isinstance(value, list) else type(value).__name__
        raise ValueError(f"value must be a list of 4 bytes (got {size})")
    for byte in value:
        if type(byte) is not int or not 0 <= byte <= 255:
            raise ValueError(f"byte {str(byte)[:20]} is not an integer in 0..255")
    packed = bytes(value)
    fmt = "<f" if byte_order == "little" else ">f"
    (number,) = struct.unpack(fmt, packed)
    if not math.isfinite(number):
        raise ValueError(f"the bytes decode to {number}, which cannot be stored")
    return shortest_float32(number, packed, fmt)


def shortest_float32(number: float, packed: bytes, fmt: str) -> float:
    """The shortest decimal that is the same float32: the sensor's 43.707, not its double
    expansion 43.707000732421875 (both are the same 4 bytes; 9 digits always round-trip)."""
    for digits in range(6, 9):
        candidate = float(f"{number:.{digits}g}")
        if struct.pack(fmt, candidate) == packed:
            return candidate
    return float(f"{number:.9g}")


def _timestamp(value: Any, clock: Clock) -> datetime:
    if isinstance(value, str):
        try:
            naive = datetime.fromisoformat(value).tzinfo is None
        except ValueError:
            naive = False
        if naive:  # a historian's local-less timestamp: UTC, as documented
            value = datetime.fromisoformat(value).replace(tzinfo=UTC).isoformat()
    return parse_timestamp(value, clock)


def _is_invalid(tags: Sequence[Any], bad_tags: Sequence[str] | None) -> bool:
    if bad_tags is None:
        return len(tags) > 0
    bad = set(bad_tags)
    return any(str(tag) in bad for tag in tags)


def _machine(point: Any, spec: DecoderSpec, default: uuid.UUID) -> uuid.UUID:
    if spec.machine is None:
        return default
    raw = lookup(point, spec.machine)
    if raw is _MISSING or not isinstance(raw, str):
        raise ValueError("the point has no machine id at the configured path")
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ValueError(f"machine id {raw[:40]!r} is not a UUID") from None


def decode(
    body: Any,
    spec: DecoderSpec,
    *,
    machine_id: uuid.UUID,
    metric: str,
    bad_tags: Sequence[str] | None,
    clock: Clock,
) -> Decoded:
    """Rows for every good point; a bad point is a rejection with its location and reason."""
    out = Decoded()
    found = lookup(body, spec.points)
    if found is _MISSING:
        out.parsed.reject("$", "the response has nothing at the configured points path")
        return out
    points = found if isinstance(found, list) else [found]
    for i, point in enumerate(points):
        where = f"points[{i}]"
        out.points += 1
        if not isinstance(point, dict):
            out.parsed.reject(where, "a point must be a JSON object")
            continue
        raw_time = lookup(point, spec.time)
        if raw_time is _MISSING or raw_time is None:
            out.parsed.reject(f"{where}.time", "the point has no timestamp")
            continue
        try:
            time = _timestamp(raw_time, clock)
            target = _machine(point, spec, machine_id)
        except ValueError as exc:
            out.parsed.reject(where, str(exc))
            continue
        tags = lookup(point, spec.tags)
        if tags is _MISSING or tags is None:
            tags = []
        if not isinstance(tags, list):
            out.parsed.reject(f"{where}.tags", "tags must be a list")
            continue
        invalid = _is_invalid(tags, bad_tags)
        rows = []
        for name, path in spec.values:
            metric_name = name or metric
            raw = lookup(point, path)
            if raw is _MISSING or raw is None:
                out.parsed.reject(f"{where}.{metric_name}", "the point has no value here")
                continue
            try:
                value = _value(raw, spec)
            except ValueError as exc:
                out.parsed.reject(f"{where}.{metric_name}", str(exc))
                continue
            rows.append((time, target, metric_name, value))
        out.parsed.rows.extend(rows)
        if invalid and rows:
            out.invalid += 1
            out.parsed.forced_invalid.update((t, m, n) for t, m, n, _ in rows)
    return out


def _value(raw: Any, spec: DecoderSpec) -> float:
    if spec.kind == "bytes-float32":
        return decode_float32(raw, spec.byte_order)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError("value is not a number")
    try:
        number = float(raw)
    except OverflowError:
        raise ValueError("value is out of range") from None
    if not math.isfinite(number):
        raise ValueError("value is not finite")
    return number
