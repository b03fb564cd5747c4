from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from plantpulse.auth.dependencies import Principal, require
from plantpulse.auth.permissions import Permission
from plantpulse.db import DbSession
from plantpulse.errors import (
    BadRequest,
    ErrorResponse,
    InvalidInput,
    PayloadTooLarge,
    PermissionDenied,
    envelope,
    error_responses,
)
from plantpulse.machines import service as machines
from plantpulse.machines.catalog import MachineCatalog
from plantpulse.machines.dependencies import TelemetrySender
from plantpulse.schemas import Offset
from plantpulse.state import AppResources, Resources
from plantpulse.telemetry import payloads, queries, rollups, service
from plantpulse.telemetry.cache import TelemetryCache
from plantpulse.telemetry.schemas import (
    DEVICE_BODY,
    GATEWAY_BODY,
    DeleteResult,
    FleetLatest,
    IngestRejected,
    IngestResult,
    MachineLatest,
    RejectedItem,
    TelemetryPage,
)

router = APIRouter(prefix="/api/v1", tags=["telemetry"])

ReadTelemetry = Annotated[Principal, Depends(require(Permission.telemetry_read))]
DeleteTelemetry = Annotated[Principal, Depends(require(Permission.telemetry_delete))]

MAX_LISTED_REJECTIONS = 1_000
RAW_DEFAULT_LIMIT = 1_000
MAX_LIMIT = 10_000
MAX_OFFSET = 100_000
MAX_FLEET = 1_000
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

_INGEST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every reading was accepted (re-sent ones count as `duplicates`)"},
    207: {
        "model": IngestResult,
        "description": "Some readings were accepted, some rejected: `rejected_items` says "
        "where and why. A request holds one value per machine, metric and time: later ones "
        "(e.g. readings without timestamps, which all take the same time) are rejected",
    },
    **error_responses(400, 401, 403, 404, 503),
    413: {
        "model": ErrorResponse,
        "description": "The body is over `ingest.max_payload_bytes` (by Content-Length or by "
        "what arrived), or it holds more than `ingest.max_readings_per_request` readings (one "
        "reading = one metric value at one time); nothing was stored",
    },
    422: {
        # NothingAccepted carries the ingest counts; a wrong shape is the plain envelope.
        "model": IngestRejected | ErrorResponse,
        "description": "Nothing was accepted (or the payload has the wrong shape)",
    },
}

# Query parameter documentation shared by the read routes.
StartTime = Annotated[
    str | None,
    Query(
        description="Inclusive. ISO 8601 (no offset = UTC), epoch s/ms, `now`, or relative: "
        "`-30s`, `-15m`, `-1h`, `-7d`, `-2w`. Default: 24 h before end_time",
        examples=["-1h", "2024-01-15T10:00:00Z"],
    ),
]
EndTime = Annotated[
    str | None, Query(description="Exclusive; same forms as start_time. Default: now")
]
Fields = Annotated[
    str | None,
    Query(description="Comma-separated metric names; default: every metric of the machine"),
]
IncludeInvalid = Annotated[
    bool,
    Query(
        description="Also return readings outside their metric's plausible range, marked "
        "(needs telemetry:read-invalid)"
    ),
]


def _cache(resources: Resources) -> TelemetryCache:
    cache = resources.extras.get("telemetry_cache")
    if isinstance(cache, TelemetryCache):
        return cache
    return TelemetryCache(None, "")


def _may_see_invalid(principal: Principal, include_invalid: bool) -> bool:
    if include_invalid and not principal.can(Permission.telemetry_read_invalid):
        raise PermissionDenied("include_invalid needs the 'telemetry:read-invalid' permission")
    return include_invalid


async def _read_json(request: Request, max_bytes: int) -> Any:
    """The body as JSON, refusing more than `max_bytes` by the declared length and by what
    actually arrives (chunked uploads declare none)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError as exc:
            raise BadRequest("Content-Length is not a number") from exc
        if length > max_bytes:
            raise PayloadTooLarge(f"the body is {length} bytes; the limit is {max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"the body exceeds the limit of {max_bytes} bytes")
    if not body:
        raise BadRequest("the body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON: {str(exc)[:200]}") from exc


def _ingest_response(outcome: service.IngestOutcome) -> JSONResponse:
    rejected = len(outcome.rejected)
    result = IngestResult(
        accepted=outcome.accepted,
        stored=outcome.stored,
        duplicates=outcome.duplicates,
        rejected=rejected,
        rejected_items=[
            RejectedItem(where=r.where, reason=r.reason)
            for r in outcome.rejected[:MAX_LISTED_REJECTIONS]
        ],
        rejected_items_truncated=rejected > MAX_LISTED_REJECTIONS,
    )
    if outcome.accepted == 0:
        detail = (
            f"no reading was accepted ({rejected} rejected)"
            if rejected
            else "the payload holds no readings"
        )
        return envelope(422, detail, error="NothingAccepted", **result.model_dump(mode="json"))
    return JSONResponse(result.model_dump(mode="json"), status_code=207 if rejected else 200)


async def _ingest(resources: Resources, parsed: payloads.Parsed) -> JSONResponse:
    outcome = await service.ingest(
        parsed,
        catalog=resources.catalog,
        writer=resources.writer,
        auto_register=resources.live.auto_register_machines,
        max_readings=resources.settings.ingest.max_readings_per_request,
        source="http",
    )
    return _ingest_response(outcome)


@router.post(
    "/telemetry/ingest",
    response_model=IngestResult,
    responses=_INGEST_RESPONSES,
    openapi_extra={"requestBody": GATEWAY_BODY},
)
async def ingest_batch(
    request: Request, resources: AppResources, sender: TelemetrySender
) -> JSONResponse:
    """Ingest a gateway batch (bearer with telemetry:write, or a machine's X-API-Key)."""
    body = await _read_json(request, resources.settings.ingest.max_payload_bytes)
    clock = payloads.Clock.current(resources.live.future_skew_seconds)
    try:
        parsed = payloads.gateway_batch(body, clock=clock, only_machine=sender.machine_id)
    except payloads.PayloadError as exc:
        raise InvalidInput(str(exc)) from exc
    return await _ingest(resources, parsed)


async def _require_known(catalog: MachineCatalog, machine_id: uuid.UUID, register: bool) -> None:
    async with service.database_errors():
        if register or await catalog.known([machine_id]):
            return
    raise machines.MachineNotFound(f"machine {machine_id} does not exist")


@router.post(
    "/machines/{machine_id}/telemetry",
    response_model=IngestResult,
    responses=_INGEST_RESPONSES,
    openapi_extra={"requestBody": DEVICE_BODY},
)
async def ingest_device(
    machine_id: uuid.UUID, request: Request, resources: AppResources, sender: TelemetrySender
) -> JSONResponse:
    """Ingest one machine's readings (its own X-API-Key, or bearer with telemetry:write)."""
    sender.check(machine_id)
    await _require_known(resources.catalog, machine_id, resources.live.auto_register_machines)
    body = await _read_json(request, resources.settings.ingest.max_payload_bytes)
    clock = payloads.Clock.current(resources.live.future_skew_seconds)
    try:
        parsed = payloads.single_device(body, machine_id=machine_id, clock=clock)
    except payloads.PayloadError as exc:
        raise InvalidInput(str(exc)) from exc
    return await _ingest(resources, parsed)


@router.get(
    "/machines/{machine_id}/telemetry",
    response_model=TelemetryPage,
    responses=error_responses(401, 403, 404, 422, 503, 507),
)
async def query_telemetry(
    machine_id: uuid.UUID,
    session: DbSession,
    resources: AppResources,
    principal: ReadTelemetry,
    start_time: StartTime = None,
    end_time: EndTime = None,
    fields: Fields = None,
    interval: Annotated[
        str | None,
        Query(
            description="Bucket width `<n><s|m|h|d>` (1m, 5m, 15m, 1h, 1d): aggregate into "
            "buckets instead of raw readings (at most 10,000 buckets per query, at most "
            "3650d wide)",
        ),
    ] = None,
    agg: Annotated[
        str | None,
        Query(description="With interval: avg,min,max,sum,count,first,last (default avg,min,max)"),
    ] = None,
    fill: Annotated[
        service.Fill,
        Query(
            description="With interval: list empty buckets too, with null values (`null`), "
            "the previous bucket's values (`previous`) or values interpolated between the "
            "neighbouring buckets (`linear`); with `previous`/`linear` their count is 0. "
            "Only buckets inside the range are used"
        ),
    ] = "none",
    tz: Annotated[
        str | None,
        Query(
            description="With interval=1d: days of this time zone (IANA name, e.g. "
            "Europe/Berlin): each bucket is a local calendar day starting at local midnight "
            "(23 or 25 hours across a DST change); timestamps stay UTC",
            examples=["Europe/Berlin"],
        ),
    ] = None,
    points: Annotated[
        int | None,
        Query(
            ge=service.MIN_POINTS,
            le=service.MAX_POINTS,
            description="For charts: at most this many points per metric over the whole "
            "range (M4: per chart bucket the first, smallest, largest and last reading, so "
            "spikes survive); read from the rollups for long ranges. Not with interval, agg, "
            "fill, limit, offset or include_invalid",
        ),
    ] = None,
    limit: Annotated[
        int | None,
        Query(ge=1, le=MAX_LIMIT, description="Rows (timestamps or buckets); raw default 1000"),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    order: Annotated[Literal["asc", "desc"], Query(description="By time")] = "desc",
    include_invalid: IncludeInvalid = False,
) -> Response:
    """Readings of a machine as wide rows: raw, aggregated into time buckets, or downsampled."""
    include_invalid = _may_see_invalid(principal, include_invalid)
    now = datetime.now(UTC)
    window = service.time_range(start_time, end_time, now=now)
    names = service.parse_fields(fields)
    step = service.parse_interval(interval) if interval else None
    aggregates = service.parse_aggregates(agg) if step else None
    if step is None and (agg or fill != "none"):
        raise service.InvalidQuery("agg and fill need an interval")
    if points is not None and (step is not None or limit is not None or offset or include_invalid):
        raise service.InvalidQuery(
            "points cannot be combined with interval, agg, fill, limit, offset or include_invalid"
        )
    zone = service.parse_zone(tz) if tz else None
    if zone is not None and step != timedelta(days=1):
        raise service.InvalidQuery("tz applies to day buckets: use it with interval=1d")
    if step is not None:
        service.check_bucket_count(window, step)
    await machines.get_machine(session, machine_id)

    if points is None and (step is None or aggregates is None):
        async with service.database_errors():
            metrics = names or await queries.machine_metrics(resources.pg, machine_id)
            size = limit or RAW_DEFAULT_LIMIT
            records = (
                await queries.raw_rows(
                    resources.pg,
                    machine_id=machine_id,
                    metrics=metrics,
                    start=window.start,
                    end=window.end,
                    limit=size + 1,
                    offset=offset,
                    order=order,
                    include_invalid=include_invalid,
                )
                if metrics
                else []
            )
        page = TelemetryPage.model_construct(
            retained_since=_retained_since(resources, now),
            machine_id=machine_id,
            start_time=window.start,
            end_time=window.end,
            fields=list(metrics),
            order=order,
            limit=size,
            offset=offset,
            has_more=len(records) > size,
            items=service.wide_raw_rows(
                records[:size], metrics=metrics, include_invalid=include_invalid
            ),
        )
        return Response(page.model_dump_json(), media_type="application/json")

    cache = _cache(resources)
    key = cache.key(
        machine_id,
        {
            "start": start_time,
            "end": end_time,
            "fields": names,
            "interval": interval,
            "agg": aggregates,
            "fill": fill,
            "points": points,
            "tz": tz,
            "limit": limit,
            "offset": offset,
            "order": order,
            "invalid": include_invalid,
        },
    )
    cached, version = await cache.get(machine_id, key)
    if cached is not None:
        return Response(cached, media_type="application/json", headers={"X-Cache": "hit"})
    async with service.database_errors():
        metrics = names or await queries.machine_metrics(resources.pg, machine_id)
        if points is not None:
            page = await _chart_page(
                resources,
                machine_id=machine_id,
                metrics=metrics,
                window=window,
                now=now,
                points=points,
                order=order,
            )
        elif step is not None and aggregates is not None:
            page = await _bucket_page(
                resources,
                machine_id=machine_id,
                metrics=metrics,
                window=window,
                now=now,
                step=step,
                interval=interval,
                aggregates=aggregates,
                fill=fill,
                zone=zone,
                limit=limit,
                offset=offset,
                order=order,
                include_invalid=include_invalid,
            )
        else:  # unreachable: the raw branch above took every other case
            raise service.InvalidQuery("interval or points is required")
    body = page.model_dump_json().encode()
    relative = end_time is None or service.is_relative(end_time) or service.is_relative(start_time)
    ttl = cache.ttl_for(end=window.end, relative=relative, now=now)
    await cache.put(key, body, version=version, ttl=ttl)
    return Response(body, media_type="application/json", headers={"X-Cache": "miss"})


def _retained_since(resources: Resources, now: datetime) -> dict[str, datetime | None]:
    live = resources.live
    days = {
        "raw": live.retention_days,
        "1m": live.rollup_1m_retention_days,
        "1h": live.rollup_1h_retention_days,
    }
    return {name: None if d is None else now - timedelta(days=d) for name, d in days.items()}


async def _bucket_page(
    resources: Resources,
    *,
    machine_id: uuid.UUID,
    metrics: list[str],
    window: service.TimeRange,
    now: datetime,
    step: timedelta,
    interval: str | None,
    aggregates: list[str],
    fill: service.Fill,
    zone: ZoneInfo | None,
    limit: int | None,
    offset: int,
    order: Literal["asc", "desc"],
    include_invalid: bool,
) -> TelemetryPage:
    grid: list[datetime] | None = None
    if zone is not None:
        # Local days: the rollups answer when no rollup bucket straddles a local midnight.
        grid = service.local_days(window, zone)
        width = service.day_rollup_step(grid)
        raw = rollups.Plan("raw", window.start, window.end, window.end, window.end)
        plan = (
            raw if width is None else rollups.plan(window.start, window.end, width=width, now=now)
        )
    else:
        plan = rollups.plan(window.start, window.end, width=step, now=now)
    plan = await rollups.settled(resources.pg, plan, machine_id)
    records: list[Any] = []
    if metrics and zone is not None:
        records = await queries.rollup_buckets(
            resources.pg,
            machine_id=machine_id,
            metrics=metrics,
            plan=plan,
            interval=step,
            aggregates=aggregates,
            include_invalid=include_invalid,
            zone=zone.key,
        )
    elif metrics and plan.source == "raw":
        records = await queries.buckets(
            resources.pg,
            machine_id=machine_id,
            metrics=metrics,
            start=window.start,
            end=window.end,
            interval=step,
            aggregates=aggregates,
            include_invalid=include_invalid,
            timescale=resources.timescale.installed,
        )
    elif metrics:
        records = await queries.rollup_buckets(
            resources.pg,
            machine_id=machine_id,
            metrics=metrics,
            plan=plan,
            interval=step,
            aggregates=aggregates,
            include_invalid=include_invalid,
        )
    rows = service.wide_buckets(
        records,
        metrics=metrics,
        aggregates=aggregates,
        include_invalid=include_invalid,
        fill=fill,
        window=window,
        interval=step,
        grid=grid,
    )
    if order == "desc":
        rows.reverse()
    size = limit or service.MAX_BUCKETS
    # Built from checked values: skip re-validating thousands of rows.
    return TelemetryPage.model_construct(
        retained_since=_retained_since(resources, now),
        machine_id=machine_id,
        start_time=window.start,
        end_time=window.end,
        fields=list(metrics),
        interval=interval,
        agg=aggregates,
        points=None,
        source=plan.source,
        order=order,
        limit=size,
        offset=offset,
        has_more=len(rows) > offset + size,
        items=[row for _, row in rows[offset : offset + size]],
    )


async def _chart_page(
    resources: Resources,
    *,
    machine_id: uuid.UUID,
    metrics: list[str],
    window: service.TimeRange,
    now: datetime,
    points: int,
    order: Literal["asc", "desc"],
) -> TelemetryPage:
    chart = service.chart_plan(window, points, now=now)
    plan = await rollups.settled(resources.pg, chart.plan, machine_id)
    records = (
        await queries.m4(
            resources.pg,
            machine_id=machine_id,
            metrics=metrics,
            plan=plan,
            width=chart.width,
            origin=chart.origin,
            include_invalid=False,
        )
        if metrics
        else []
    )
    rows = service.wide_points(records)
    if order == "desc":
        rows.reverse()
    return TelemetryPage.model_construct(
        retained_since=_retained_since(resources, now),
        machine_id=machine_id,
        start_time=window.start,
        end_time=window.end,
        fields=list(metrics),
        interval=None,
        agg=None,
        points=points,
        source=plan.source,
        order=order,
        limit=len(rows),
        offset=0,
        has_more=False,
        items=[row for _, row in rows],
    )


def _machine_latest(
    machine_id: uuid.UUID, name: str, records: list[Any], include_invalid: bool
) -> dict[str, Any]:
    """A MachineLatest as JSON-ready data: the fleet view builds 1,000 of these per request,
    so they skip model validation (the values come straight from the database)."""
    metrics: dict[str, Any] = {}
    for record in sorted(records, key=lambda r: str(r["metric"])):
        value: dict[str, Any] = {
            "value": record["value"],
            "timestamp": service.utc_iso(record["time"]),
        }
        if include_invalid:
            value["valid"] = record["valid"]
        metrics[record["metric"]] = value
    return {"machine_id": str(machine_id), "name": name, "metrics": metrics}


def _json(data: Any) -> Response:
    return Response(json.dumps(data, allow_nan=False), media_type="application/json")


@router.get(
    "/machines/{machine_id}/telemetry/latest",
    response_model=MachineLatest,
    responses=error_responses(401, 403, 404, 503),
)
async def machine_latest(
    machine_id: uuid.UUID,
    resources: AppResources,
    principal: ReadTelemetry,
    include_invalid: IncludeInvalid = False,
) -> Response:
    """The newest value of every metric of a machine, by event time."""
    include_invalid = _may_see_invalid(principal, include_invalid)
    async with service.database_errors():
        found = await queries.machine_latest(
            resources.pg, machine_id=machine_id, include_invalid=include_invalid
        )
    if found is None:
        raise machines.MachineNotFound(f"machine {machine_id} does not exist")
    name, records = found
    return _json(_machine_latest(machine_id, name, records, include_invalid))


def _parse_ids(value: str | None) -> list[uuid.UUID] | None:
    if value is None or not value.strip():
        return None
    ids: list[uuid.UUID] = []
    for part in value.split(","):
        if not part.strip():
            continue
        try:
            ids.append(uuid.UUID(part.strip()))
        except ValueError as exc:
            raise service.InvalidQuery(f"machine_ids: {part.strip()[:40]!r} is not a UUID") from exc
    unique = list(dict.fromkeys(ids))
    if len(unique) > MAX_FLEET:
        raise service.InvalidQuery(f"machine_ids: at most {MAX_FLEET} machines per request")
    return unique


@router.get(
    "/telemetry/latest",
    response_model=FleetLatest,
    responses=error_responses(401, 403, 422, 503),
)
async def fleet_latest(
    resources: AppResources,
    principal: ReadTelemetry,
    machine_ids: Annotated[
        str | None,
        Query(description="Comma-separated machine ids (at most 1000); default: all machines"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_FLEET, description="Machines per page")] = MAX_FLEET,
    offset: Offset = 0,
    include_invalid: IncludeInvalid = False,
) -> Response:
    """The newest value of every metric of many machines (the fleet view), by event time."""
    include_invalid = _may_see_invalid(principal, include_invalid)
    wanted = _parse_ids(machine_ids)
    async with service.database_errors():
        page, total = await queries.machine_page(
            resources.pg, machine_ids=wanted, limit=limit, offset=offset
        )
        records = (
            await queries.latest(
                resources.pg, machine_ids=[m["id"] for m in page], include_invalid=include_invalid
            )
            if page
            else []
        )
        unknown: list[uuid.UUID] = []
        if wanted is not None and total < len(wanted):
            existing = await queries.existing_machines(resources.pg, wanted)
            unknown = [m for m in wanted if m not in existing]
    by_machine: dict[uuid.UUID, list[Any]] = {m["id"]: [] for m in page}
    for record in records:
        by_machine[record["machine_id"]].append(record)
    return _json(
        {
            "items": [
                _machine_latest(m["id"], m["name"], by_machine[m["id"]], include_invalid)
                for m in page
            ],
            "total": total,
            "limit": limit,
            "offset": offset,
            "unknown_machine_ids": [str(m) for m in unknown],
        }
    )


def _filename_part(value: str) -> str:
    return _FILENAME_UNSAFE.sub("-", value).strip("-")[:64] or "machine"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


@router.get(
    "/machines/{machine_id}/telemetry/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "A file of wide rows in ascending time: CSV "
            "(`timestamp,<metric>...`, plus `valid` with include_invalid) or NDJSON (one JSON "
            "row per line, as in the query API). Streamed: any range, constant memory.",
            "content": {"text/csv": {}, "application/x-ndjson": {}},
        },
        **error_responses(401, 403, 404, 422, 503, 507),
    },
)
async def export_telemetry(
    machine_id: uuid.UUID,
    session: DbSession,
    resources: AppResources,
    principal: ReadTelemetry,
    format: Annotated[Literal["csv", "ndjson"], Query()] = "csv",
    start_time: StartTime = None,
    end_time: EndTime = None,
    fields: Fields = None,
    include_invalid: IncludeInvalid = False,
) -> StreamingResponse:
    """Download a machine's readings as CSV or NDJSON, streamed."""
    include_invalid = _may_see_invalid(principal, include_invalid)
    window = service.time_range(start_time, end_time, now=datetime.now(UTC))
    names = service.parse_fields(fields)
    machine = await machines.get_machine(session, machine_id)
    async with service.database_errors():
        metrics = names or await queries.machine_metrics(resources.pg, machine_id)
    filename = (
        f"{_filename_part(machine.name)}_{_stamp(window.start)}_{_stamp(window.end)}.{format}"
    )
    chunks = service.export_chunks(
        resources.pg,
        machine_id=machine_id,
        metrics=metrics,
        window=window,
        fmt=format,
        include_invalid=include_invalid,
    )
    return StreamingResponse(
        _guarded(chunks),
        media_type="text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


async def _guarded(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    # Headers are gone once streaming starts: a failure can only end the body early,
    # which a client sees as a truncated download (no final newline / short file).
    try:
        async for chunk in chunks:
            yield chunk
    except Exception:
        service.log.exception("telemetry export failed mid-stream")


@router.delete(
    "/machines/{machine_id}/telemetry",
    response_model=DeleteResult,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def delete_telemetry(
    machine_id: uuid.UUID,
    session: DbSession,
    resources: AppResources,
    _: DeleteTelemetry,
    start_time: Annotated[
        str | None, Query(description="Required (no accidental wipes); same forms as queries")
    ] = None,
    end_time: EndTime = None,
) -> DeleteResult:
    """Delete a machine's readings in [start_time, end_time)."""
    window = service.time_range(start_time, end_time, now=datetime.now(UTC), default=None)
    await machines.get_machine(session, machine_id)
    async with service.database_errors():
        deleted = await queries.delete_range(
            resources.pg, machine_id=machine_id, start=window.start, end=window.end
        )
    await _cache(resources).invalidate([machine_id])
    return DeleteResult(
        machine_id=machine_id, start_time=window.start, end_time=window.end, deleted=deleted
    )
