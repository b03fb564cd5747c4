"""Readings older than `retention_days` go, whichever database PlantPulse runs on.

Community edition: TimescaleDB's retention policy (`add_retention_policy`) drops old chunks on
the database's own scheduler. The policy lives in the database, the setting in `system_config`,
and they can part: a database restored without its jobs, a change made while this process was
down, a policy removed by hand. So every round (at start-up, when the database comes back,
then every `sysconfig.retention_check_seconds`) makes the policy match the stored setting. A
database where `retention_days` was never set through the API keeps whatever policy it has.

And the policy may not run at all: a scheduler that fails every job (the TSL build on the
development machines, shared/timescaledb-tsl/README.md) fails it quietly. When the retention
job's last run failed, this job drops the old chunks itself, as on the Apache edition; `/ready`
reports the failing job either way (health/jobs.py). Compression gets no such stand-in: it
only saves space, and compressing from the application would compete with TimescaleDB's own
policy for the same chunks, so a failing compression job is reported, not replaced.

Apache edition: `drop_chunks` (part of the Apache build). Plain PostgreSQL: `DELETE` in
bounded rounds. Every process runs the job; an advisory lock lets one work at a time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from plantpulse.errors import InvalidInput
from plantpulse.sysconfig.keys import KEYS
from plantpulse.timescale import TimescaleInfo

log = logging.getLogger(__name__)

# An arbitrary constant naming "the retention job" for pg_try_advisory_xact_lock.
LOCK_ID = 0x706C616E74_01
DELETE_ROUND = 50_000

REMOVE_POLICY = "SELECT remove_retention_policy('readings', if_exists => true)"
_CURRENT_POLICY = """
SELECT job_id, (config->>'drop_after')::interval AS drop_after
FROM timescaledb_information.jobs
WHERE proc_name = 'policy_retention' AND hypertable_schema = current_schema()
      AND hypertable_name = 'readings'
"""
_LAST_RUN_FAILED = """
SELECT last_run_status = 'Failed' FROM timescaledb_information.job_stats WHERE job_id = $1
"""


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


@dataclass(frozen=True, slots=True)
class Policy:
    """The retention TimescaleDB applies to readings, once matched to the stored setting."""

    managed: bool  # retention_days was set through the API (else: left as it is)
    days: int | None  # None: readings are kept forever
    job_id: int | None


async def reconcile_policy(pool: asyncpg.Pool) -> Policy | None:
    """Community edition: make TimescaleDB's retention policy match the stored
    `retention_days`. None when another process holds the retention lock right now."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", LOCK_ID):
            return None
        # FOR SHARE: a change being made through the API (which holds the row FOR UPDATE and
        # sets the policy in the same transaction) is waited for, never undone.
        stored = await conn.fetchval(
            "SELECT value FROM system_config WHERE key = 'retention_days' FOR SHARE"
        )
        current = await conn.fetchrow(_CURRENT_POLICY)
        job_id: int | None = current["job_id"] if current else None
        if stored is None:
            return Policy(managed=False, days=None, job_id=job_id)
        try:
            days: int | None = KEYS["retention_days"].validate(json.loads(stored))
        except InvalidInput as exc:
            log.warning("retention: the stored setting is unusable (%s); policy left alone", exc)
            return Policy(managed=False, days=None, job_id=job_id)
        have: timedelta | None = current["drop_after"] if current else None
        if have == (None if days is None else timedelta(days=days)):
            return Policy(managed=True, days=days, job_id=job_id)
        await conn.execute(REMOVE_POLICY)
        if days is not None:
            job_id = await conn.fetchval(
                "SELECT add_retention_policy('readings', make_interval(days => $1))", days
            )
        else:
            job_id = None
        log.warning(
            "retention: TimescaleDB's retention policy was %s, the stored setting says %s; "
            "policy %s",
            f"{have.days} days" if have is not None else "absent",
            f"{days} days" if days is not None else "keep forever",
            "replaced" if days is not None else "removed",
        )
        return Policy(managed=True, days=days, job_id=job_id)


async def _job_failing(pool: asyncpg.Pool, job_id: int) -> bool:
    failing: bool | None = await pool.fetchval(_LAST_RUN_FAILED, job_id)
    return bool(failing)


async def enforce(pool: asyncpg.Pool, *, days: int | None, timescale: TimescaleInfo) -> None:
    """One round: on the Community edition reconcile the policy (and stand in for its job if
    that fails); elsewhere delete old readings ourselves. `days` is this process's current
    setting (the Community path reads the stored one)."""
    if timescale.community:
        policy = await reconcile_policy(pool)
        if policy is None or policy.days is None or policy.job_id is None:
            return
        if not await _job_failing(pool, policy.job_id):
            return
        dropped = await purge_old_readings(pool, days=policy.days, timescale=timescale)
        log.log(
            logging.WARNING if dropped else logging.DEBUG,
            "retention: TimescaleDB's retention job %d is failing; PlantPulse dropped %d "
            "chunks older than %d days itself",
            policy.job_id,
            dropped,
            policy.days,
        )
        return
    if days is None:
        return
    removed = await purge_old_readings(pool, days=days, timescale=timescale)
    if removed:
        log.info(
            "retention: removed %d %s older than %d days",
            removed,
            "chunks" if timescale.installed else "readings",
            days,
        )
