"""Seeding helpers for telemetry tests: committed readings (the query code reads through
its own pool) with their metric catalogue entries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from plantpulse.machines import security
from plantpulse.telemetry import rollups
from plantpulse.telemetry.writer import StoredRow

# (time, metric, value) or (time, metric, value, valid)
Reading = tuple[datetime, str, float] | tuple[datetime, str, float, bool]


async def store(pool: asyncpg.Pool, rows: Sequence[StoredRow]) -> None:
    """Rows committed as the batch writer commits them: with their rollup markers."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.copy_records_to_table(
            "readings", records=rows, columns=("time", "machine_id", "metric", "value", "valid")
        )
        await rollups.mark_dirty(conn, rows)


async def seed(pool: asyncpg.Pool, machine_id: uuid.UUID, readings: Sequence[Reading]) -> None:
    """Store readings and bring the rollups up to date (queries may read them)."""
    records = [
        (r[0], machine_id, r[1], float(r[2]), r[3] if len(r) == 4 else True) for r in readings
    ]
    await store(pool, records)
    await rollups.refresh_all(pool)
    metrics = sorted({r[1] for r in readings})
    await pool.executemany(
        "INSERT INTO machine_metrics (machine_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        [(machine_id, m) for m in metrics],
    )


async def give_api_key(pool: asyncpg.Pool, machine_id: uuid.UUID) -> str:
    """Committed for real: the ingest path reads the machine on other connections."""
    key, prefix, key_hash = security.new_api_key()
    await pool.execute(
        "UPDATE machines SET api_key_prefix = $2, api_key_hash = $3 WHERE id = $1",
        machine_id,
        prefix,
        key_hash,
    )
    return key


async def stored(pool: asyncpg.Pool, machine_id: uuid.UUID) -> list[tuple[datetime, str, float]]:
    rows = await pool.fetch(
        "SELECT time, metric, value FROM readings WHERE machine_id = $1 ORDER BY time, metric",
        machine_id,
    )
    return [(r["time"], r["metric"], r["value"]) for r in rows]
