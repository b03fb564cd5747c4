"""Ingest administration: the dead-letter list. Plain async functions: session first."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import RowMapping, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse.ingest.decoders import Reason
from plantpulse.ingest.models import dead_letters


async def list_dead_letters(
    session: AsyncSession,
    *,
    since: datetime | None,
    until: datetime | None,
    reason: Reason | None,
    source: str | None,
    topic: str | None,
    limit: int,
    offset: int,
) -> tuple[list[RowMapping], int]:
    """Newest first."""
    query = select(dead_letters)
    if since is not None:
        query = query.where(dead_letters.c.received_at >= since)
    if until is not None:
        query = query.where(dead_letters.c.received_at < until)
    if reason is not None:
        query = query.where(dead_letters.c.reason.startswith(f"{reason}:", autoescape=True))
    if source is not None:
        query = query.where(dead_letters.c.source == source)
    if topic is not None:
        query = query.where(dead_letters.c.topic == topic)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.execute(
        query.order_by(dead_letters.c.received_at.desc(), dead_letters.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(rows.mappings()), int(total or 0)
