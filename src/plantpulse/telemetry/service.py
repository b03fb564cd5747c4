"""Telemetry use cases: the ingest batch shared by HTTP and MQTT (`store_batch`: one
transaction for everything a batch changes) and the parsing of query parameters (time
ranges, bucket intervals, metric lists) into checked values."""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from plantpulse.db_errors import is_database_error, is_transient
from plantpulse.errors import DatabaseUnavailable as DatabaseUnavailable  # re-exported
from plantpulse.errors import (
    InvalidInput,
    PayloadTooLarge,
    PlantPulseError,
    database_error,
)
from plantpulse.ingest import dead_letters
from plantpulse.machines import connectivity
from plantpulse.machines.catalog import MachineCatalog
from plantpulse.machines.models import Connectivity
from plantpulse.telemetry import queries, rollups
from plantpulse.telemetry.payloads import (
    EPOCH_MS_THRESHOLD,
    METRIC_NAME,
    RESERVED_METRIC_NAMES,
    Parsed,
    Rejection,
)
from plantpulse.telemetry.writer import NOTHING_WRITTEN, BatchWriter, Written

log = logging.getLogger(__name__)

AGGREGATES = ("avg", "min", "max", "sum", "count", "first", "last")
MAX_FIELDS = 64
# A bucketed answer never has more buckets than this: ask for a larger interval instead.
MAX_BUCKETS = 10_000
DEFAULT_RANGE = timedelta(hours=24)
# Buckets are aligned on TimescaleDB's origin (2000-01-03): a much wider bucket holding a 1970
# reading would start before the year 1, which no datetime can represent.
MAX_INTERVAL = timedelta(days=3650)

_RELATIVE = re.compile(r"^-(\d{1,9})([smhdw])$")
_INTERVAL = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class InvalidQuery(InvalidInput):
    pass


class TooManyReadings(PayloadTooLarge):
    pass


# ---------------------------------------------------------------------------------------------
# Ingest


# Runs last in a batch's transaction, before the commit (MQTT records packet ids with it).
BeforeCommit = Callable[[PoolConnectionProxy], Awaitable[None]]
# The dead letters of a batch, given the machines whose rows were dropped as unregistered and
# the status changes that were applied; recorded in the batch's transaction.
DeadLettersOf = Callable[
    [frozenset[uuid.UUID], Sequence[connectivity.ConnectivityChange]],
    Sequence[dead_letters.DeadLetter],
]


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """What a committed batch did."""

    # Readings of known (or just registered) machines, and the rejections of unknown ones.
    kept: Parsed
    # Machines whose readings were dropped: not registered, auto-registration off.
    unknown: frozenset[uuid.UUID]
    written: Written
    applied: list[connectivity.ConnectivityChange]
    dead_letters: int


async def store_batch(
    parsed: Parsed,
    *,
    catalog: MachineCatalog,
    writer: BatchWriter,
    auto_register: bool,
    source: str,
    statuses: Sequence[tuple[uuid.UUID, Connectivity]] = (),
    feed: connectivity.ConnectivityFeed | None = None,
    dead_letters_of: DeadLettersOf | None = None,
    extra: BeforeCommit | None = None,
) -> StoredBatch:
    """Store an ingest batch in one transaction on one connection: keep the readings of known
    machines (or register the unknown ones), write them, apply status changes, record dead
    letters, run `extra`; then, once committed and only then, tell the listeners (readings,
    then connectivity on `feed`). Raises on database errors with nothing committed: the
    caller may retry the whole batch, which is never announced twice for one commit."""
    if not (parsed.rows or statuses or dead_letters_of or extra):
        return StoredBatch(parsed, frozenset(), NOTHING_WRITTEN, [], 0)
    async with writer.connection() as conn, conn.transaction():
        kept, unknown = await _keep_known(catalog, conn, parsed, auto_register=auto_register)
        registering = unknown if auto_register else set()
        dropped = frozenset(unknown - registering)
        if registering:
            await catalog.register(conn, registering)
        written = await writer.write_in(conn, kept.rows, forced_invalid=kept.forced_invalid)
        applied = await connectivity.record(conn, statuses) if statuses else []
        letters = dead_letters_of(dropped, applied) if dead_letters_of else ()
        await dead_letters.record(conn, letters)
        if extra is not None:
            await extra(conn)
    catalog.registered(registering)
    writer.committed(written, source=source)
    if feed is not None:
        feed.publish(applied)
    return StoredBatch(kept, dropped, written, applied, len(letters))


async def _keep_known(
    catalog: MachineCatalog, conn: PoolConnectionProxy, parsed: Parsed, *, auto_register: bool
) -> tuple[Parsed, set[uuid.UUID]]:
    """(rows to write, machines not registered): rows of unregistered machines become
    rejections, unless they are about to be registered."""
    wanted = {row[1] for row in parsed.rows}
    if not wanted:
        return parsed, set()
    unknown = wanted - await catalog.known(wanted, conn)
    if not unknown or auto_register:
        return parsed, unknown
    result = Parsed(rejected=list(parsed.rejected), forced_invalid=parsed.forced_invalid)
    result.rows = [row for row in parsed.rows if row[1] not in unknown]
    for machine_id in sorted(unknown, key=str):
        result.reject(str(machine_id), f"machine {machine_id} is not registered")
    return result, unknown


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    # Readings that passed validation: newly stored plus already stored (duplicates).
    accepted: int
    duplicates: int
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return self.accepted - self.duplicates


@asynccontextmanager
async def database_errors() -> AsyncIterator[None]:
    """Turn a database failure into what it means for the client (`errors.database_error`):
    an outage is DatabaseUnavailable (503, `Retry-After`; a re-sent reading is stored once),
    a value or change the database refuses is 422/409 with the reason, a resource limit 507.
    Anything else escapes unchanged: a bug, answered 500 with a request id."""
    try:
        yield
    except PlantPulseError:
        raise
    except Exception as exc:
        if not is_database_error(exc):
            raise
        error = database_error(exc, where="telemetry")
        if error is None:
            raise
        raise error from exc


async def ingest(
    parsed: Parsed,
    *,
    catalog: MachineCatalog,
    writer: BatchWriter,
    auto_register: bool,
    max_readings: int,
    source: str,
) -> IngestOutcome:
    """Store the good readings of a parsed payload; the bad ones come back as rejections.

    Raises TooManyReadings above `max_readings` (nothing is stored then)."""
    if len(parsed.rows) > max_readings:
        raise TooManyReadings(
            f"{len(parsed.rows)} readings in one request; the limit is {max_readings} "
            "(split the batch)"
        )
    async with database_errors():
        try:
            stored = await store_batch(
                parsed, catalog=catalog, writer=writer, auto_register=auto_register, source=source
            )
        except Exception as exc:
            if not is_transient(exc):
                raise
            # Once more, on a fresh connection: the one that failed may have been closed by
            # the server while idle in the pool (a restart, a terminated backend). Safe: the
            # batch is one transaction and stored readings are skipped by their unique key.
            stored = await store_batch(
                parsed, catalog=catalog, writer=writer, auto_register=auto_register, source=source
            )
    result = stored.written.result
    return IngestOutcome(
        accepted=result.received, duplicates=result.duplicates, rejected=stored.kept.rejected
    )


# ---------------------------------------------------------------------------------------------
# Query parameters


def parse_time(value: str, *, now: datetime, name: str) -> datetime:
    """ISO 8601 (a missing offset means UTC), epoch seconds/milliseconds, `now`, or relative
    to now: `-30s`, `-15m`, `-1h`, `-7d`, `-2w`."""
    text = value.strip()
    if text == "now":
        return now
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = relative.groups()
        try:
            return now - timedelta(seconds=int(amount) * _UNITS[unit])
        except OverflowError as exc:
            raise InvalidQuery(f"{name}: {value[:40]!r} reaches before the year 1") from exc
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number) or number < 0:
            raise InvalidQuery(f"{name}: epoch value must be finite and non-negative")
        try:
            return datetime.fromtimestamp(
                number / 1000 if number >= EPOCH_MS_THRESHOLD else number, UTC
            )
        except (OverflowError, OSError, ValueError) as exc:
            raise InvalidQuery(f"{name}: epoch value is out of range") from exc
    try:
        # An unencoded '+' in a query string arrives as a space.
        parsed = datetime.fromisoformat(text.replace(" ", "+") if "T" in text else text)
    except ValueError as exc:
        raise InvalidQuery(
            f"{name}: {value[:40]!r} is neither ISO 8601, epoch, 'now' nor relative "
            "like '-1h', '-30m', '-7d'"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:
        raise InvalidQuery(f"{name}: {value[:40]!r} is out of range once in UTC") from exc


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: datetime
    end: datetime


def time_range(
    start_time: str | None,
    end_time: str | None,
    *,
    now: datetime,
    default: timedelta | None = DEFAULT_RANGE,
) -> TimeRange:
    """[start, end): end defaults to now, start to `default` before end (required if None)."""
    end = parse_time(end_time, now=now, name="end_time") if end_time else now
    if start_time:
        start = parse_time(start_time, now=now, name="start_time")
    elif default is not None:
        start = end - default
    else:
        raise InvalidQuery("start_time is required")
    if start >= end:
        raise InvalidQuery(
            f"start_time ({start.isoformat()}) must be before end_time ({end.isoformat()})"
        )
    return TimeRange(start, end)


def parse_interval(value: str) -> timedelta:
    """`<n><s|m|h|d>`: 30s, 1m, 5m, 15m, 1h, 1d."""
    match = _INTERVAL.match(value.strip())
    if not match or int(match.group(1)) == 0:
        raise InvalidQuery(f"interval {value[:20]!r} must look like 30s, 1m, 5m, 15m, 1h or 1d")
    amount, unit = match.groups()
    interval = timedelta(seconds=int(amount) * _UNITS[unit])
    if interval > MAX_INTERVAL:
        raise InvalidQuery(f"interval {value[:20]!r} is wider than {MAX_INTERVAL.days}d")
    return interval


def parse_aggregates(value: str | None) -> list[str]:
    if not value:
        return ["avg", "min", "max"]
    wanted = [a.strip().lower() for a in value.split(",") if a.strip()]
    unknown = [a for a in wanted if a not in AGGREGATES]
    if unknown or not wanted:
        raise InvalidQuery(f"agg: unknown {', '.join(unknown)}; use {', '.join(AGGREGATES)}")
    return list(dict.fromkeys(wanted))


def parse_fields(value: str | None) -> list[str] | None:
    """Metric names asked for; None means every metric of the machine."""
    if value is None or not value.strip():
        return None
    names = list(dict.fromkeys(f.strip() for f in value.split(",") if f.strip()))
    bad = [n for n in names if not METRIC_NAME.match(n) or n in RESERVED_METRIC_NAMES]
    if bad:
        raise InvalidQuery(f"fields: {', '.join(b[:64] for b in bad)} is not a metric name")
    if len(names) > MAX_FIELDS:
        raise InvalidQuery(f"fields: at most {MAX_FIELDS} metrics per query")
    return names


def check_bucket_count(window: TimeRange, interval: timedelta) -> None:
    buckets = (window.end - window.start) / interval
    if buckets > MAX_BUCKETS:
        raise InvalidQuery(
            f"{math.ceil(buckets)} buckets of {interval} in this range; at most {MAX_BUCKETS} "
            "(use a larger interval or a shorter range)"
        )


def is_relative(value: str | None) -> bool:
    """Whether a time parameter moves with the clock (`now`, `-1h`)."""
    return value is not None and (value.strip() == "now" or bool(_RELATIVE.match(value.strip())))


def parse_zone(value: str) -> ZoneInfo:
    """An IANA time zone name (Europe/Berlin) for day buckets in the plant's time."""
    try:
        return ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidQuery(
            f"tz: {value[:64]!r} is not a time zone name like Europe/Berlin or UTC"
        ) from exc


def local_days(window: TimeRange, zone: ZoneInfo) -> list[datetime]:
    """The starts (in UTC) of the local calendar days that overlap the window: 23 or 25 hours
    apart across a DST change."""
    day = window.start.astimezone(zone).date()
    starts: list[datetime] = []
    while True:
        midnight = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
        if midnight >= window.end:
            return starts
        starts.append(midnight)
        day += timedelta(days=1)


def day_rollup_step(days: Sequence[datetime]) -> timedelta | None:
    """The coarsest rollup whose buckets never straddle a local midnight of these days
    (1 h for whole-hour offsets such as Europe/Berlin, 1 min for Asia/Kolkata), or None."""
    for step in (rollups.HOUR, rollups.MINUTE):
        if all((day - rollups.ORIGIN) % step == timedelta(0) for day in days):
            return step
    return None


BUCKET_ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)


def bucket_start(moment: datetime, interval: timedelta) -> datetime:
    """The start of the bucket holding `moment` (same origin as queries.BUCKET_ORIGIN)."""
    return BUCKET_ORIGIN + ((moment - BUCKET_ORIGIN) // interval) * interval


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# Shaping narrow rows into wide ones


def wide_raw_rows(
    records: Sequence[asyncpg.Record], *, metrics: Sequence[str], include_invalid: bool
) -> list[dict[str, Any]]:
    order = {name: i for i, name in enumerate(metrics)}
    rows: list[dict[str, Any]] = []
    for record in records:
        values = sorted(
            zip(record["metrics"], record["values"], record["valids"], strict=True),
            key=lambda item: order.get(item[0], len(order)),
        )
        row: dict[str, Any] = {"timestamp": utc_iso(record["time"])}
        for name, value, _ in values:
            row[name] = value
        if include_invalid:
            row["valid"] = {name: valid for name, _, valid in values}
        rows.append(row)
    return rows


def wide_buckets(
    records: Sequence[asyncpg.Record],
    *,
    metrics: Sequence[str],
    aggregates: Sequence[str],
    include_invalid: bool,
    fill: Fill,
    window: TimeRange,
    interval: timedelta,
    grid: Sequence[datetime] | None = None,
) -> list[tuple[datetime, dict[str, Any]]]:
    """(bucket start, row) in ascending time; every row has every `<metric>_<agg>` key.

    `records` are queries.buckets() rows: bucket, metric, the aggregates (, invalid);
    `grid`: the bucket starts when they are not `interval` apart (local days).
    `fill`: "none" lists buckets with readings only; the others list every bucket of the
    window, empty ones with nulls ("null"), or with values carried from the previous bucket
    that has one ("previous") or interpolated between the neighbours that have one by bucket
    start time ("linear"). With "previous"/"linear" a bucket without readings counts 0."""
    columns = [*aggregates, *(["invalid"] if include_invalid else [])]
    # Record positions, not names: this loop runs for every (bucket, metric) of the answer.
    targets = {m: [(i, f"{m}_{c}") for i, c in enumerate(columns, start=2)] for m in metrics}
    template: dict[str, Any] = dict.fromkeys(
        ["timestamp", *(key for m in metrics for _, key in targets[m])]
    )
    by_bucket: dict[datetime, dict[str, Any]] = {}
    for record in records:
        bucket = record[0]
        row = by_bucket.get(bucket)
        if row is None:
            row = by_bucket[bucket] = template.copy()
        for position, key in targets[record[1]]:
            row[key] = record[position]
    if fill != "none" and grid is not None:
        for bucket in grid:
            if bucket not in by_bucket:
                by_bucket[bucket] = template.copy()
    elif fill != "none":
        bucket = bucket_start(window.start, interval)
        while bucket < window.end:
            if bucket not in by_bucket:
                by_bucket[bucket] = template.copy()
            bucket += interval
    ordered = sorted(by_bucket.items(), key=lambda item: item[0])
    for bucket, row in ordered:
        row["timestamp"] = utc_iso(bucket)
    if fill in ("previous", "linear"):
        for metric in metrics:
            for column in columns:
                key = f"{metric}_{column}"
                if column in ("count", "invalid"):
                    for _, row in ordered:
                        if row[key] is None:
                            row[key] = 0
                elif fill == "previous":
                    _carry_forward(ordered, key)
                else:
                    _interpolate(ordered, key)
    return ordered


Fill = Literal["none", "null", "previous", "linear"]


def _carry_forward(rows: list[tuple[datetime, dict[str, Any]]], key: str) -> None:
    last: Any = None
    for _, row in rows:
        if row[key] is None:
            row[key] = last
        else:
            last = row[key]


def _interpolate(rows: list[tuple[datetime, dict[str, Any]]], key: str) -> None:
    known = [i for i, (_, row) in enumerate(rows) if row[key] is not None]
    for left, right in itertools.pairwise(known):
        if right - left < 2:
            continue
        t0, v0 = rows[left][0], rows[left][1][key]
        t1, v1 = rows[right][0], rows[right][1][key]
        for i in range(left + 1, right):
            share = (rows[i][0] - t0) / (t1 - t0)
            rows[i][1][key] = v0 + (v1 - v0) * share


# ---------------------------------------------------------------------------------------------
# Downsampling for charts (points=N)
#
# M4 (Jugel et al., VLDB 2014): per chart bucket, the first, last, smallest and largest
# reading. A line chart drawn from those is pixel-identical to one drawn from every reading
# when a bucket is one pixel column wide, and spikes are never lost (LTTB picks one point per
# bucket by triangle area and may drop a one-sample spike). All four are decomposable, so a
# bucket is answered from the 1-minute/1-hour rollups; LTTB needs every reading of a bucket
# and the previous bucket's choice, so it always scans the raw readings.

MIN_POINTS = 4
MAX_POINTS = 10_000


@dataclass(frozen=True, slots=True)
class ChartPlan:
    width: timedelta
    origin: datetime
    plan: rollups.Plan


def chart_plan(window: TimeRange, points: int, *, now: datetime) -> ChartPlan:
    """Buckets for at most `points` points per metric: at most points // 4 buckets of M4.
    Widths of a whole number of hours (minutes) on an hour (minute) read the rollups."""
    buckets = max(1, points // 4)
    span = window.end - window.start
    for step in (rollups.HOUR, rollups.MINUTE):
        if span / buckets >= step:
            # The first bucket starts at the step before start_time: one step more to cover.
            width = step * math.ceil((span + step) / (buckets * step))
            origin = rollups.floor(window.start, step)
            break
    else:
        width = timedelta(microseconds=math.ceil(span / timedelta(microseconds=1) / buckets))
        origin = window.start
    return ChartPlan(
        width=width,
        origin=origin,
        plan=rollups.plan(window.start, window.end, width=width, now=now, origin=origin),
    )


def wide_points(records: Sequence[asyncpg.Record]) -> list[tuple[datetime, dict[str, Any]]]:
    """queries.m4() records as wide rows in ascending time: a metric is present at the times
    it has a point."""
    by_time: dict[datetime, dict[str, Any]] = {}
    for record in records:
        metric = record["metric"]
        for moment, value in (
            (record["first_time"], record["first"]),
            (record["min_time"], record["min"]),
            (record["max_time"], record["max"]),
            (record["last_time"], record["last"]),
        ):
            row = by_time.get(moment)
            if row is None:
                row = by_time[moment] = {"timestamp": utc_iso(moment)}
            row[metric] = value
    return sorted(by_time.items(), key=lambda item: item[0])


# ---------------------------------------------------------------------------------------------
# Export

EXPORT_CHUNK_BYTES = 64 * 1024


def _csv_line(
    moment: datetime, values: dict[str, float], valid: bool | None, metrics: Sequence[str]
) -> str:
    cells = [utc_iso(moment)]
    cells += ["" if (v := values.get(m)) is None else repr(v) for m in metrics]
    if valid is not None:
        cells.append("true" if valid else "false")
    return ",".join(cells) + "\n"


def _ndjson_line(moment: datetime, values: dict[str, float], valids: dict[str, bool] | None) -> str:
    row: dict[str, Any] = {"timestamp": utc_iso(moment), **values}
    if valids is not None:
        row["valid"] = valids
    return json.dumps(row, allow_nan=False) + "\n"


async def export_chunks(
    pool: asyncpg.Pool,
    *,
    machine_id: uuid.UUID,
    metrics: Sequence[str],
    window: TimeRange,
    fmt: str,
    include_invalid: bool,
) -> AsyncIterator[bytes]:
    """CSV (`timestamp,<metric>...[,valid]`) or NDJSON wide rows in ascending time, in chunks
    of about 64 KiB: memory stays flat whatever the range."""
    parts: list[str] = []
    size = 0
    if fmt == "csv":
        header = ["timestamp", *metrics, *(["valid"] if include_invalid else [])]
        parts.append(",".join(header) + "\n")
    moment: datetime | None = None
    values: dict[str, float] = {}
    valids: dict[str, bool] = {}

    def line() -> str:
        assert moment is not None  # noqa: S101 (only called once a row was read)
        if fmt == "csv":
            return _csv_line(
                moment, values, all(valids.values()) if include_invalid else None, metrics
            )
        return _ndjson_line(moment, values, valids if include_invalid else None)

    async for record in queries.stream_readings(
        pool,
        machine_id=machine_id,
        metrics=metrics,
        start=window.start,
        end=window.end,
        include_invalid=include_invalid,
    ):
        if record["time"] != moment:
            if moment is not None:
                text = line()
                parts.append(text)
                size += len(text)
                if size >= EXPORT_CHUNK_BYTES:
                    yield "".join(parts).encode()
                    parts, size = [], 0
            moment, values, valids = record["time"], {}, {}
        values[record["metric"]] = record["value"]
        valids[record["metric"]] = record["valid"]
    if moment is not None:
        parts.append(line())
    if parts:
        yield "".join(parts).encode()
