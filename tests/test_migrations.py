from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests import support


@pytest.fixture
async def scratch_url() -> AsyncIterator[str]:
    url = await support.create_database("migrations")
    try:
        yield url
    finally:
        await support.drop_database(url)


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(support.dsn(url))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


class TestMigrations:
    async def test_upgrade_creates_the_schema_and_the_hypertable(self, scratch_url: str) -> None:
        await support.migrate(scratch_url)
        assert {
            "users",
            "machines",
            "readings",
            "machine_metrics",
            "dead_letters",
        } <= await _tables(scratch_url)
        conn = await asyncpg.connect(support.dsn(scratch_url))
        try:
            hypertables = await conn.fetch(
                "SELECT hypertable_name FROM timescaledb_information.hypertables"
            )
            assert [r["hypertable_name"] for r in hypertables] == ["readings"]
            interval = await conn.fetchval(
                "SELECT time_interval FROM timescaledb_information.dimensions "
                "WHERE hypertable_name = 'readings'"
            )
            assert interval.days == 1
        finally:
            await conn.close()

    async def test_downgrade_to_base_removes_everything_and_upgrade_again_works(
        self, scratch_url: str
    ) -> None:
        await support.migrate(scratch_url)
        await support.migrate(scratch_url, "base", down=True)
        assert await _tables(scratch_url) <= {"alembic_version"}
        await support.migrate(scratch_url)
        assert "readings" in await _tables(scratch_url)

    async def test_sources_upgrade_and_downgrade(self, scratch_url: str) -> None:
        await support.migrate(scratch_url)
        assert {"sources", "source_runs"} <= await _tables(scratch_url)
        await support.migrate(scratch_url, "0003", down=True)
        assert not {"sources", "source_runs"} & await _tables(scratch_url)
        assert "alert_rules" in await _tables(scratch_url)
        await support.migrate(scratch_url)
        assert "sources" in await _tables(scratch_url)

    async def test_mqtt_deliveries_upgrade_and_downgrade(self, scratch_url: str) -> None:
        await support.migrate(scratch_url)
        assert "mqtt_deliveries" in await _tables(scratch_url)
        await support.migrate(scratch_url, "-1", down=True)
        assert "mqtt_deliveries" not in await _tables(scratch_url)
        assert "readings_1m" in await _tables(scratch_url)
        await support.migrate(scratch_url)
        assert "mqtt_deliveries" in await _tables(scratch_url)

    async def test_each_step_downgrades_one_at_a_time(self, scratch_url: str) -> None:
        await support.migrate(scratch_url)
        await support.migrate(scratch_url, "0005_rollups", down=True)
        rollups = {"readings_1m", "readings_1h", "rollup_dirty"}
        assert rollups <= await _tables(scratch_url)
        await support.migrate(scratch_url, "-1", down=True)
        assert not rollups & await _tables(scratch_url)
        # Down to the alerts step; the later ones have their own tests.
        await support.migrate(scratch_url, "0003", down=True)
        alerts_config = {"alert_rules", "alerts", "alert_states", "system_config", "config_audit"}
        assert alerts_config <= await _tables(scratch_url)
        await support.migrate(scratch_url, "-1", down=True)
        assert not alerts_config & await _tables(scratch_url)
        assert "readings" in await _tables(scratch_url)
        await support.migrate(scratch_url, "-1", down=True)
        assert "readings" not in await _tables(scratch_url)
        assert "users" in await _tables(scratch_url)
        await support.migrate(scratch_url)

    async def test_existing_readings_are_rolled_up_by_the_rollups_migration(
        self, scratch_url: str
    ) -> None:
        await support.migrate(scratch_url, "0003")
        conn = await asyncpg.connect(support.dsn(scratch_url))
        try:
            machine_id = uuid.uuid4()
            start = datetime(2024, 1, 1, 23, 58, tzinfo=UTC)
            await conn.copy_records_to_table(
                "readings",
                records=[
                    (start + timedelta(seconds=30 * i), machine_id, "v", float(i), i != 3)
                    for i in range(8)
                ],
                columns=("time", "machine_id", "metric", "value", "valid"),
            )
            await support.migrate(scratch_url)
            minutes = await conn.fetch(
                "SELECT bucket, valid, count, sum, first, last FROM readings_1m ORDER BY 1, 2"
            )
            assert [tuple(r)[1:] for r in minutes] == [
                (True, 2, 1.0, 0.0, 1.0),
                (False, 1, 3.0, 3.0, 3.0),
                (True, 1, 2.0, 2.0, 2.0),
                (True, 2, 9.0, 4.0, 5.0),
                (True, 2, 13.0, 6.0, 7.0),
            ]
            hours = await conn.fetch(
                "SELECT bucket, valid, count, min, max FROM readings_1h ORDER BY 1, 2"
            )
            assert [tuple(r)[1:] for r in hours] == [
                (False, 1, 3.0, 3.0),
                (True, 3, 0.0, 2.0),
                (True, 4, 4.0, 7.0),
            ]
        finally:
            await conn.close()
