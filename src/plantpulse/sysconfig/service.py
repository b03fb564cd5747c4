"""System settings in the database: read with their defaults, change with an audit trail.

Services only flush; the new value reaches `resources.live` (this and every other process)
through `sync.ConfigSync` once the request's transaction has committed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse.db import utcnow
from plantpulse.sysconfig.keys import KEYS, get_key
from plantpulse.sysconfig.live import LiveConfig
from plantpulse.sysconfig.models import ConfigAudit, SystemConfig
from plantpulse.sysconfig.retention import REMOVE_POLICY
from plantpulse.timescale import TimescaleInfo


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    key: str
    value: Any
    default: Any
    type: str
    description: str
    updated_by: uuid.UUID | None
    updated_at: datetime | None


def _entry(key: str, row: SystemConfig | None, defaults: LiveConfig) -> ConfigEntry:
    spec = KEYS[key]
    default = getattr(defaults, key)
    return ConfigEntry(
        key=key,
        value=row.value if row is not None else default,
        default=default,
        type=spec.type,
        description=spec.description,
        updated_by=row.updated_by if row is not None else None,
        updated_at=row.updated_at if row is not None else None,
    )


async def list_entries(session: AsyncSession, *, defaults: LiveConfig) -> list[ConfigEntry]:
    rows = {r.key: r for r in await session.scalars(select(SystemConfig))}
    return [_entry(key, rows.get(key), defaults) for key in sorted(KEYS)]


async def get_entry(session: AsyncSession, *, key: str, defaults: LiveConfig) -> ConfigEntry:
    get_key(key)
    return _entry(key, await session.get(SystemConfig, key), defaults)


async def set_value(
    session: AsyncSession,
    *,
    key: str,
    value: Any,
    user_id: uuid.UUID | None,
    defaults: LiveConfig,
    timescale: TimescaleInfo,
) -> ConfigEntry:
    """Validate and store a value, recording old and new in the audit trail."""
    value = get_key(key).validate(value)
    # Lock the row so two concurrent changes are audited in the order they were applied.
    row = await session.get(SystemConfig, key, with_for_update=True)
    old = row.value if row is not None else getattr(defaults, key)
    if row is None:
        row = SystemConfig(key=key, value=value, updated_by=user_id)
        session.add(row)
    else:
        row.value = value
        row.updated_by = user_id
        row.updated_at = utcnow()
    session.add(ConfigAudit(key=key, old_value=old, new_value=value, changed_by=user_id))
    if key == "retention_days" and timescale.community:
        await apply_retention_policy(session, days=value)
    await session.flush()
    await session.refresh(row)
    return _entry(key, row, defaults)


async def apply_retention_policy(session: AsyncSession, *, days: int | None) -> None:
    """Community edition: TimescaleDB's own job drops old chunks (none when `days` is None).
    retention.reconcile_policy() restores this from the stored value if the two ever part."""
    await session.execute(text(REMOVE_POLICY))
    if days is not None:
        await session.execute(
            text("SELECT add_retention_policy('readings', make_interval(days => :days))"),
            {"days": days},
        )


async def list_audit(
    session: AsyncSession, *, key: str | None, limit: int, offset: int
) -> tuple[list[ConfigAudit], int]:
    query = select(ConfigAudit)
    if key is not None:
        get_key(key)
        query = query.where(ConfigAudit.key == key)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(
        query.order_by(ConfigAudit.changed_at.desc(), ConfigAudit.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(rows), int(total or 0)


async def stored_values(session: AsyncSession) -> dict[str, Any]:
    """Values set in the database for known keys (unknown or no longer valid ones skipped)."""
    values: dict[str, Any] = {}
    for row in await session.scalars(select(SystemConfig)):
        spec = KEYS.get(row.key)
        if spec is None:
            continue
        try:
            values[row.key] = spec.validate(row.value)
        except ValueError:
            continue
    return values
