"""`/api/v1/sources`: external HTTP sources PlantPulse pulls readings from."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from plantpulse.auth.dependencies import Principal, require
from plantpulse.auth.permissions import Permission
from plantpulse.db import DbSession
from plantpulse.errors import error_responses
from plantpulse.schemas import Offset, Page
from plantpulse.sources import service
from plantpulse.sources.poller import poller_of
from plantpulse.sources.schemas import SourceCreate, SourceRead, SourceRunRead, SourceUpdate
from plantpulse.state import AppResources

router = APIRouter(prefix="/api/v1/sources", tags=["sources"], responses=error_responses(401, 403))

ReadSources = Annotated[Principal, Depends(require(Permission.sources_read))]
WriteSources = Annotated[Principal, Depends(require(Permission.sources_write))]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get("", responses=error_responses(422))
async def list_sources(
    _: ReadSources, session: DbSession, limit: Limit = 50, offset: Offset = 0
) -> Page[SourceRead]:
    """Sources by name; header values are never returned, only their names."""
    rows, total = await service.list_sources(session, limit=limit, offset=offset)
    items = [SourceRead.model_validate(r) for r in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(404, 409, 422))
async def create_source(
    data: SourceCreate, principal: WriteSources, session: DbSession, resources: AppResources
) -> SourceRead:
    """Create a source; with an interval it is polled at once, then every interval."""
    source = await service.create_source(
        session,
        data=data,
        cipher=poller_of(resources).cipher,
        settings=resources.settings.sources,
        user_id=principal.user.id,
    )
    return SourceRead.model_validate(source)


@router.get("/{source_id}", responses=error_responses(404, 422))
async def get_source(source_id: uuid.UUID, _: ReadSources, session: DbSession) -> SourceRead:
    """One source."""
    return SourceRead.model_validate(await service.get_source(session, source_id))


@router.patch("/{source_id}", responses=error_responses(404, 409, 422))
async def update_source(
    source_id: uuid.UUID,
    data: SourceUpdate,
    _: WriteSources,
    session: DbSession,
    resources: AppResources,
) -> SourceRead:
    """Change a source; `headers` replaces all header values ({} removes them)."""
    source = await service.update_source(
        session,
        source_id=source_id,
        data=data,
        cipher=poller_of(resources).cipher,
        settings=resources.settings.sources,
    )
    return SourceRead.model_validate(source)


@router.delete(
    "/{source_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404, 422)
)
async def delete_source(source_id: uuid.UUID, _: WriteSources, session: DbSession) -> None:
    """Delete a source and its run history (readings it stored stay)."""
    await service.delete_source(session, source_id=source_id)


@router.post("/{source_id}/poll", responses=error_responses(404, 409, 422))
async def poll_source(
    source_id: uuid.UUID, _: WriteSources, session: DbSession, resources: AppResources
) -> SourceRunRead:
    """Pull now ("populate"): the run with points stored, duplicates, invalid and rejected.

    A failure of the remote side (unreachable, slow, HTTP error, not JSON, too large, refused
    address) is a run with status `failed` and the reason in `error`, answered 200: the poll
    itself worked and was recorded. 409 while another poll of the source is running."""
    source = await service.lock_for_manual_poll(session, source_id)
    result = await poller_of(resources).pull(source)
    run = await service.record_run(
        session,
        source_id=source_id,
        trigger="manual",
        result=result,
        settings=resources.settings.sources,
    )
    return SourceRunRead.model_validate(run)


@router.get("/{source_id}/runs", responses=error_responses(404, 422))
async def list_runs(
    source_id: uuid.UUID,
    _: ReadSources,
    session: DbSession,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[SourceRunRead]:
    """The source's runs, newest first: status, duration, counts, error."""
    rows, total = await service.list_runs(session, source_id=source_id, limit=limit, offset=offset)
    items = [SourceRunRead.model_validate(r) for r in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)
