"""Deleting readings that sit in compressed chunks (issue 8, B2): a compressed day of a busy
machine holds more rows than TimescaleDB decompresses per transaction by default (100,000)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.community.conftest import METRICS, drop_day, fresh_day, is_compressed, seed_compressed
from tests.conftest import MachineFactory

# 3 metrics x 40,000 readings 2 s apart: 120,000 readings of one machine in one day.
PER_SERIES = 40_000


@dataclass(frozen=True, slots=True)
class BusyDay:
    machine: uuid.UUID
    day: datetime
    readings: int


@pytest.fixture
async def busy_day(
    pg_pool: asyncpg.Pool, committed_machine: MachineFactory
) -> AsyncIterator[BusyDay]:
    machine = await committed_machine()
    day = fresh_day()
    try:
        count = await seed_compressed(
            pg_pool, [machine], day, per_series=PER_SERIES, step=timedelta(seconds=2)
        )
        assert count == PER_SERIES * len(METRICS) > 100_000
        assert await is_compressed(pg_pool, day)
        yield BusyDay(machine, day, count)
    finally:
        await drop_day(pg_pool, day)


async def count(pool: asyncpg.Pool, machine: uuid.UUID) -> int:
    n: int = await pool.fetchval("SELECT count(*) FROM readings WHERE machine_id = $1", machine)
    return n


class TestDeleteReadingsInCompressedChunks:
    async def test_deleting_a_compressed_day_of_one_machine(
        self, client: AsyncClient, manager: dict[str, str], pg_pool: asyncpg.Pool, busy_day: BusyDay
    ) -> None:
        response = await client.delete(
            f"/api/v1/machines/{busy_day.machine}/telemetry",
            params={
                "start_time": busy_day.day.isoformat(),
                "end_time": (busy_day.day + timedelta(days=1)).isoformat(),
            },
            headers=manager,
        )
        assert response.status_code == 200, response.text
        assert response.json()["deleted"] == busy_day.readings
        assert await count(pg_pool, busy_day.machine) == 0

    async def test_deleting_part_of_a_compressed_day_keeps_the_rest(
        self, client: AsyncClient, manager: dict[str, str], pg_pool: asyncpg.Pool, busy_day: BusyDay
    ) -> None:
        # The first 10 hours: 18,000 readings per metric (one every 2 s).
        end = busy_day.day + timedelta(hours=10)
        response = await client.delete(
            f"/api/v1/machines/{busy_day.machine}/telemetry",
            params={"start_time": busy_day.day.isoformat(), "end_time": end.isoformat()},
            headers=manager,
        )
        assert response.status_code == 200, response.text
        assert response.json()["deleted"] == 18_000 * len(METRICS)
        assert await count(pg_pool, busy_day.machine) == busy_day.readings - 18_000 * len(METRICS)

    async def test_deleting_the_machine_deletes_its_compressed_readings(
        self,
        # First, so it is torn down last: dropping the day's chunk waits for the locks of the
        # test's transaction (`db`), which must be rolled back by then.
        busy_day: BusyDay,
        client: AsyncClient,
        manager: dict[str, str],
        db: AsyncSession,
    ) -> None:
        response = await client.delete(f"/api/v1/machines/{busy_day.machine}", headers=manager)
        assert response.status_code == 204, response.text
        # The request's transaction is the test's (rolled back afterwards): look inside it.
        left = await db.scalar(
            text("SELECT count(*) FROM readings WHERE machine_id = :m"), {"m": busy_day.machine}
        )
        assert left == 0
