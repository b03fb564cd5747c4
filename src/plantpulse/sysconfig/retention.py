"""Deleting readings older than `retention_days` where TimescaleDB has no retention policy.

Community edition: `add_retention_policy` (set in service.py) does it inside the database.
Apache edition: `drop_chunks` (part of the Apache build) from a periodic job. Plain PostgreSQL:
`DELETE` in bounded rounds. Every process runs the job; an advisory lock lets one work at a time.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from plantpulse import db_errors
from plantpulse.sysconfig.live import LiveConfig
from plantpulse.timescale import TimescaleInfo

log = logging.getLogger(__name__)

# An arbitrary constant naming "the retention job" for pg_try_advisory_xact_lock.
LOCK_ID = 0x706C616E74_01
DELETE_ROUND = 50_000


async def purge_old_readings(pool: asyncpg.Pool, *, days: int, timescale: TimescaleInfo) -> int:
    """Remove readings older than `days`; returns rows (plain PG) or chunks (TimescaleDB)."""
    removed = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", LOCK_ID):
                return removed
            if timescale.installed:
                dropped = await conn.fetch(
                    "SELECT drop_chunks('readings', "
                    "older_than => now() - make_interval(days => $1))",
                    days,
                )
                return len(dropped)
            status = await conn.execute(
                """
                DELETE FROM readings WHERE ctid IN (
                    SELECT ctid FROM readings
                    WHERE time < now() - make_interval(days => $1) LIMIT $2
                )
                """,
                days,
                DELETE_ROUND,
            )
        count = int(status.rsplit(" ", 1)[-1])
        removed += count
        if count < DELETE_ROUND:
            return removed


async def retention_job(
    pool: asyncpg.Pool, *, live: LiveConfig, timescale: TimescaleInfo, every_seconds: float
) -> None:
    while True:
        days = live.retention_days
        if days is not None and not timescale.community:
            try:
                removed = await purge_old_readings(pool, days=days, timescale=timescale)
                if removed:
                    log.info(
                        "retention: removed %d %s older than %d days",
                        removed,
                        "chunks" if timescale.installed else "readings",
                        days,
                    )
            except Exception as exc:
                # An outage (including a connection that broke mid-operation, which asyncpg
                # reports as InterfaceError) is retried next round; anything else goes to the
                # supervisor, which logs the traceback, shows it in /ready and restarts us.
                if not db_errors.is_transient(exc):
                    raise
                log.warning("retention job failed (%s); retrying later", exc)
        await asyncio.sleep(every_seconds)
