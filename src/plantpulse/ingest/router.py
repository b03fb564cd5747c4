from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from plantpulse.auth.dependencies import Principal, require
from plantpulse.auth.permissions import Permission
from plantpulse.db import DbSession
from plantpulse.errors import InvalidInput, error_responses
from plantpulse.ingest import service
from plantpulse.ingest.decoders import Reason
from plantpulse.ingest.schemas import DeadLetterRead, IngestStats
from plantpulse.schemas import InputDatetime, Offset, Page, Text
from plantpulse.state import AppResources

router = APIRouter(prefix="/api/v1/ingest", tags=["ingest"], responses=error_responses(401, 403))

IngestAdmin = Annotated[Principal, Depends(require(Permission.ingest_admin))]


@router.get("/dead-letters", responses=error_responses(422))
async def list_dead_letters(
    _: IngestAdmin,
    session: DbSession,
    since: Annotated[
        InputDatetime | None, Query(description="Received at or after (ISO 8601)")
    ] = None,
    until: Annotated[InputDatetime | None, Query(description="Received before (ISO 8601)")] = None,
    reason: Annotated[Reason | None, Query(description="Only this reason code")] = None,
    source: Literal["mqtt", "http"] | None = None,
    topic: Annotated[Text | None, Query(max_length=1024, description="Exact topic")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Offset = 0,
) -> Page[DeadLetterRead]:
    """Messages that could not be ingested, newest first, with the reason."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(f"{name} needs a UTC offset (add 'Z' or '+01:00')")
    if since is not None and until is not None and until <= since:
        raise InvalidInput("until must be after since")
    rows, total = await service.list_dead_letters(
        session,
        since=since,
        until=until,
        reason=reason,
        source=source,
        topic=topic,
        limit=limit,
        offset=offset,
    )
    return Page(
        items=[DeadLetterRead.model_validate(dict(row)) for row in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/stats")
async def stats(_: IngestAdmin, resources: AppResources) -> IngestStats:
    """MQTT ingest counters of this process: received, accepted, rejected, queue, latency."""
    ingest = resources.extras.get("mqtt_ingest")
    if ingest is None:
        return IngestStats(enabled=False)
    return IngestStats.model_validate(ingest.snapshot())
