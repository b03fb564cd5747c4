"""Sources: CRUD, one pull (fetch, decode, store through the ingest write path), the run record
and the schedule shared by every process.

Scheduling across processes: a due source is *claimed* with `SELECT ... FOR UPDATE SKIP LOCKED`
and given a lease (`lease_until` = now + its timeout + a margin) in one short transaction;
every other process skips it until the lease ends or the run is recorded. The HTTP exchange
runs outside any transaction. A process that dies mid-poll leaves a lease that simply expires;
the next poll re-reads the same points, which the readings' unique key stores once. A manual
poll holds the source's row lock for its duration instead, and is refused (409) while a lease
or another manual poll is active.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from pydantic import TypeAdapter
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse import db_errors
from plantpulse.config import SourcesSettings
from plantpulse.errors import Conflict, InvalidInput, NotFound, PlantPulseError
from plantpulse.machines import service as machines
from plantpulse.sources.crypto import HeaderCipher, SecretsUnreadable
from plantpulse.sources.decoders import Decoded, decode
from plantpulse.sources.fetch import Fetched, FetchFailed, fetch
from plantpulse.sources.guard import AddressRefused, check_literal
from plantpulse.sources.models import Source, SourceRun
from plantpulse.sources.schemas import DecoderConfig, SourceCreate, SourceUpdate
from plantpulse.telemetry.payloads import Clock, Parsed, Rejection
from plantpulse.telemetry.service import IngestOutcome

log = logging.getLogger(__name__)

# A lease outlives the poll's own deadline by this much (storing the readings, recording).
LEASE_MARGIN_SECONDS = 60.0
MAX_LISTED_REJECTIONS = 100
_DECODER: TypeAdapter[Any] = TypeAdapter(DecoderConfig)

# Stores decoded readings through the ingest write path (poller.py builds it from the
# lifespan's writer and catalog): the one place sources call telemetry ingest.
Store = Callable[[Parsed], Awaitable[IngestOutcome]]


class SourceNotFound(NotFound):
    pass


class SourceExists(Conflict):
    pass


class PollInProgress(Conflict):
    pass


class UrlRefused(InvalidInput):
    pass


# --- CRUD -------------------------------------------------------------------------------------


async def get_source(session: AsyncSession, source_id: uuid.UUID) -> Source:
    source = await session.get(Source, source_id)
    if source is None:
        raise SourceNotFound(f"source {source_id} does not exist")
    return source


async def list_sources(
    session: AsyncSession, *, limit: int, offset: int
) -> tuple[list[Source], int]:
    total = await session.scalar(select(func.count()).select_from(Source)) or 0
    rows = await session.scalars(select(Source).order_by(Source.name).limit(limit).offset(offset))
    return list(rows), total


def _check_url(url: str, settings: SourcesSettings) -> None:
    try:
        check_literal(httpx.URL(url).host, allow_private=settings.allow_private_networks)
    except AddressRefused as exc:
        raise UrlRefused(
            f"url: {exc} (set PLANTPULSE_SOURCES__ALLOW_PRIVATE_NETWORKS=true to allow it)"
        ) from None


async def _save(session: AsyncSession, source: Source) -> Source:
    try:
        async with session.begin_nested():
            session.add(source)
    except IntegrityError as exc:
        if not db_errors.is_unique_violation(exc):
            raise
        raise SourceExists(f"a source named {source.name!r} already exists") from exc
    return source


async def create_source(
    session: AsyncSession,
    *,
    data: SourceCreate,
    cipher: HeaderCipher,
    settings: SourcesSettings,
    user_id: uuid.UUID | None,
) -> Source:
    _check_url(data.url, settings)
    await machines.get_machine(session, data.machine_id)
    source = Source(
        id=uuid.uuid4(),
        name=data.name,
        enabled=data.enabled,
        url=data.url,
        method=data.method,
        body=data.body,
        header_names=sorted(data.headers),
        headers_encrypted=cipher.encrypt(data.headers) if data.headers else None,
        interval_seconds=data.interval_seconds,
        timeout_seconds=data.timeout_seconds,
        machine_id=data.machine_id,
        metric=data.metric,
        decoder=data.decoder.model_dump(mode="json"),
        bad_tags=data.bad_tags,
        # A scheduled source is first polled at once.
        next_poll_at=datetime.now(UTC) if data.interval_seconds is not None else None,
        consecutive_failures=0,
        created_by=user_id,
    )
    return await _save(session, source)


async def update_source(
    session: AsyncSession,
    *,
    source_id: uuid.UUID,
    data: SourceUpdate,
    cipher: HeaderCipher,
    settings: SourcesSettings,
) -> Source:
    source = await get_source(session, source_id)
    changes = data.model_dump(exclude_unset=True, mode="json")
    if "url" in changes:
        _check_url(changes["url"], settings)
    if "machine_id" in changes:
        await machines.get_machine(session, data.machine_id)  # type: ignore[arg-type]
        changes["machine_id"] = data.machine_id
    if "headers" in changes:
        headers: dict[str, str] = changes.pop("headers")
        source.header_names = sorted(headers)
        source.headers_encrypted = cipher.encrypt(headers) if headers else None
    for name, value in changes.items():
        setattr(source, name, value)
    if "interval_seconds" in changes or "enabled" in changes:
        # A new schedule starts now; a fresh start also forgets earlier failures.
        source.next_poll_at = datetime.now(UTC) if source.interval_seconds is not None else None
        source.consecutive_failures = 0
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        if not db_errors.is_unique_violation(exc):
            raise
        raise SourceExists(f"a source named {source.name!r} already exists") from exc
    return source


async def delete_source(session: AsyncSession, *, source_id: uuid.UUID) -> None:
    source = await get_source(session, source_id)
    await session.delete(source)
    await session.flush()


async def list_runs(
    session: AsyncSession, *, source_id: uuid.UUID, limit: int, offset: int
) -> tuple[list[SourceRun], int]:
    await get_source(session, source_id)
    where = SourceRun.source_id == source_id
    total = await session.scalar(select(func.count()).select_from(SourceRun).where(where)) or 0
    rows = await session.scalars(
        select(SourceRun)
        .where(where)
        .order_by(SourceRun.started_at.desc(), SourceRun.id)
        .limit(limit)
        .offset(offset)
    )
    return list(rows), total


# --- one pull ---------------------------------------------------------------------------------


@dataclass(slots=True)
class PullResult:
    started_at: datetime
    duration_ms: float = 0.0
    http_status: int | None = None
    points: int = 0
    stored: int = 0
    duplicates: int = 0
    invalid: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        return "partial" if self.rejections else "ok"


def _chunks(parsed: Parsed, size: int) -> list[Parsed]:
    """The rows in batches the ingest path accepts (it refuses more than `size` at once);
    the decoder's rejections ride with the first, as ingest reports them back."""
    if len(parsed.rows) <= size:
        return [parsed]
    return [
        Parsed(
            rows=parsed.rows[i : i + size],
            rejected=parsed.rejected if i == 0 else [],
            forced_invalid=parsed.forced_invalid,
        )
        for i in range(0, len(parsed.rows), size)
    ]


def _decode_body(
    fetched: Fetched,
    decoder: dict[str, Any],
    *,
    machine_id: uuid.UUID,
    metric: str,
    bad_tags: list[str] | None,
    clock: Clock,
) -> Decoded:
    try:
        body = orjson.loads(fetched.body)
    except orjson.JSONDecodeError:
        excerpt = fetched.body[:80].decode(errors="replace")
        raise FetchFailed(
            f"the response is not JSON (content-type {fetched.content_type or 'none'!r}, "
            f"starts with {excerpt!r})",
            http_status=fetched.status,
        ) from None
    spec = _DECODER.validate_python(decoder).spec()
    return decode(body, spec, machine_id=machine_id, metric=metric, bad_tags=bad_tags, clock=clock)


async def pull(
    source: Source,
    *,
    client: httpx.AsyncClient,
    cipher: HeaderCipher,
    settings: SourcesSettings,
    store: Store,
    max_readings: int,
    future_skew_seconds: float,
) -> PullResult:
    """Fetch, decode and store one source's points. Never raises for what the remote side
    does (the result says what went wrong); a database outage while storing is an error too."""
    result = PullResult(started_at=datetime.now(UTC))
    started = time.monotonic()
    try:
        headers = cipher.decrypt(source.headers_encrypted) if source.headers_encrypted else {}
        fetched = await fetch(
            client,
            method=source.method,
            url=source.url,
            headers=headers,
            body=source.body if source.method == "POST" else None,
            deadline_seconds=source.timeout_seconds,
            max_bytes=settings.max_body_bytes,
            max_redirects=settings.max_redirects,
        )
        result.http_status = fetched.status
        # Up to max_body_bytes of JSON to parse and decode: off the event loop, so ingest and
        # the API keep their latency while a large answer is worked through.
        decoded = await asyncio.to_thread(
            _decode_body,
            fetched,
            source.decoder,
            machine_id=source.machine_id,
            metric=source.metric,
            bad_tags=source.bad_tags,
            clock=Clock.current(future_skew_seconds),
        )
        result.points = decoded.points
        result.invalid = decoded.invalid
        for chunk in _chunks(decoded.parsed, max_readings):
            outcome = await store(chunk)
            result.stored += outcome.stored
            result.duplicates += outcome.duplicates
            result.rejections.extend(outcome.rejected)
    except (FetchFailed, SecretsUnreadable) as exc:
        result.error = str(exc)
        result.http_status = getattr(exc, "http_status", result.http_status)
    except PlantPulseError as exc:  # from storing: the database is down, say
        result.error = f"storing failed: {exc.detail}"
    result.duration_ms = round((time.monotonic() - started) * 1000, 1)
    return result


# --- the run record and the schedule ----------------------------------------------------------


def backoff_seconds(failures: int, *, interval: float, maximum: float) -> float:
    """After `failures` failed runs in a row: a random delay in [d/2, d], d = interval * 2**n
    capped at `maximum` (never below the interval), so sources that fail together (the
    remote side is down) do not all retry in the same second."""
    ceiling = max(interval, maximum)
    delay = min(interval * 2 ** min(failures, 32), ceiling)
    return max(interval, random.uniform(delay / 2, delay))  # noqa: S311 - jitter


async def record_run(
    session: AsyncSession,
    *,
    source_id: uuid.UUID,
    trigger: str,
    result: PullResult,
    settings: SourcesSettings,
) -> SourceRun:
    """Store the run; a scheduled run also releases the lease and sets the next poll.

    A source deleted while it was being polled gets no run (there is nothing to attach it to)."""
    source = await session.scalar(select(Source).where(Source.id == source_id).with_for_update())
    run = SourceRun(
        id=uuid.uuid4(),
        source_id=source_id,
        trigger=trigger,
        status=result.status,
        started_at=result.started_at,
        duration_ms=result.duration_ms,
        http_status=result.http_status,
        points=result.points,
        stored=result.stored,
        duplicates=result.duplicates,
        invalid=result.invalid,
        rejected=len(result.rejections),
        rejections=[
            {"where": r.where, "reason": r.reason}
            for r in result.rejections[:MAX_LISTED_REJECTIONS]
        ],
        error=result.error,
    )
    if source is None:
        return run
    session.add(run)
    failed = result.error is not None
    source.consecutive_failures = source.consecutive_failures + 1 if failed else 0
    if trigger == "schedule":
        source.lease_until = None
        if source.interval_seconds is not None:
            delay = (
                backoff_seconds(
                    source.consecutive_failures,
                    interval=source.interval_seconds,
                    maximum=settings.max_backoff_seconds,
                )
                if failed
                else source.interval_seconds
            )
            source.next_poll_at = datetime.now(UTC) + timedelta(seconds=delay)
    await session.flush()
    keep = (
        select(SourceRun.id)
        .where(SourceRun.source_id == source_id)
        .order_by(SourceRun.started_at.desc())
        .limit(settings.runs_kept)
    )
    await session.execute(
        delete(SourceRun).where(SourceRun.source_id == source_id, SourceRun.id.not_in(keep))
    )
    return run


async def claim_due(session: AsyncSession, *, limit: int) -> list[Source]:
    """Due sources no other process is polling, leased to this one (see the module doc)."""
    now = datetime.now(UTC)
    rows = await session.scalars(
        select(Source)
        .where(
            Source.enabled,
            Source.interval_seconds.is_not(None),
            or_(Source.next_poll_at.is_(None), Source.next_poll_at <= func.now()),
            or_(Source.lease_until.is_(None), Source.lease_until < func.now()),
        )
        .order_by(Source.next_poll_at.nulls_first())
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed = list(rows)
    for source in claimed:
        source.lease_until = now + timedelta(seconds=source.timeout_seconds + LEASE_MARGIN_SECONDS)
    await session.flush()
    return claimed


async def lock_for_manual_poll(session: AsyncSession, source_id: uuid.UUID) -> Source:
    """The source, row-locked for this transaction; PollInProgress if a poll is running."""
    source = await session.scalar(
        select(Source)
        .where(Source.id == source_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    if source is None:
        await get_source(session, source_id)  # 404 if it does not exist at all
        raise PollInProgress(f"source {source_id} is being polled right now; try again shortly")
    if source.lease_until is not None and source.lease_until > datetime.now(UTC):
        raise PollInProgress(
            f"a scheduled poll of source {source_id} is running; try again shortly"
        )
    return source


async def release_leases(session: AsyncSession, source_ids: list[uuid.UUID]) -> None:
    await session.execute(update(Source).where(Source.id.in_(source_ids)).values(lease_until=None))
