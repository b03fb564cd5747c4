from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Query

from plantpulse.auth.dependencies import Principal, require
from plantpulse.auth.permissions import Permission
from plantpulse.db import DbSession
from plantpulse.errors import error_responses
from plantpulse.schemas import Offset, Page
from plantpulse.state import AppResources
from plantpulse.sysconfig import service
from plantpulse.sysconfig.schemas import ConfigAuditRead, ConfigEntryRead, ConfigUpdate
from plantpulse.sysconfig.sync import config_sync

router = APIRouter(prefix="/api/v1/config", tags=["config"], responses=error_responses(401, 403))

ReadConfig = Annotated[Principal, Depends(require(Permission.config_read))]
WriteConfig = Annotated[Principal, Depends(require(Permission.config_write))]


def _read(entry: service.ConfigEntry) -> ConfigEntryRead:
    return ConfigEntryRead.model_validate(entry, from_attributes=True)


@router.get("")
async def list_config(
    _: ReadConfig, session: DbSession, resources: AppResources
) -> list[ConfigEntryRead]:
    """Every system setting with its value, default, type and who changed it last."""
    defaults = config_sync(resources).defaults
    return [_read(e) for e in await service.list_entries(session, defaults=defaults)]


@router.get("/audit", responses=error_responses(404, 422))
async def list_config_audit(
    _: ReadConfig,
    session: DbSession,
    key: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Offset = 0,
) -> Page[ConfigAuditRead]:
    """Changes to system settings, newest first (optionally for one key)."""
    rows, total = await service.list_audit(session, key=key, limit=limit, offset=offset)
    return Page(
        items=[ConfigAuditRead.model_validate(r) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/{key}", responses=error_responses(404))
async def get_config(
    key: str, _: ReadConfig, session: DbSession, resources: AppResources
) -> ConfigEntryRead:
    """One system setting."""
    defaults = config_sync(resources).defaults
    return _read(await service.get_entry(session, key=key, defaults=defaults))


@router.put("/{key}", responses=error_responses(404, 422))
async def set_config(
    key: str,
    data: ConfigUpdate,
    principal: WriteConfig,
    session: DbSession,
    resources: AppResources,
    after_commit: BackgroundTasks,
) -> ConfigEntryRead:
    """Change a system setting; it takes effect in every process without a restart."""
    sync = config_sync(resources)
    entry = await service.set_value(
        session,
        key=key,
        value=data.value,
        user_id=principal.user.id,
        defaults=sync.defaults,
        timescale=resources.timescale,
    )

    # Background tasks run after the response, i.e. after DbSession committed; a coroutine,
    # because Starlette runs plain functions in a worker thread, away from the event loop.
    async def announce() -> None:
        sync.changed(entry.key, entry.value)

    after_commit.add_task(announce)
    return _read(entry)
