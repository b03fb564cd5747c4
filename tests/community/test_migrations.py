"""The migrations on the Community edition: the compression settings and policy of 0002 (the
Apache edition skips them), and downgrades with compressed chunks in place."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests import support
from tests.test_migrations import _tables


@pytest.fixture
async def scratch_url(community_server: str) -> AsyncIterator[str]:
    url = await support.create_database("cmigrations", server=community_server)
    try:
        yield url
    finally:
        await support.drop_database(url)


async def _compression_job(conn: asyncpg.Connection) -> asyncpg.Record | None:
    job: asyncpg.Record | None = await conn.fetchrow(
        "SELECT job_id, config->>'compress_after' AS compress_after "
        "FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_compression' AND hypertable_name = 'readings'"
    )
    return job


class TestCommunityMigrations:
    async def test_upgrade_sets_up_compression_and_its_policy(self, scratch_url: str) -> None:
        await support.migrate(scratch_url)
        conn = await asyncpg.connect(support.dsn(scratch_url))
        try:
            assert await conn.fetchval("SHOW timescaledb.license") == "timescale"
            settings = await conn.fetch(
                "SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc "
                "FROM timescaledb_information.compression_settings "
                "WHERE hypertable_name = 'readings' ORDER BY attname"
            )
            assert [tuple(r) for r in settings] == [
                ("machine_id", 1, None, None),
                ("metric", 2, None, None),
                ("time", None, 1, False),
            ]
            job = await _compression_job(conn)
            assert job is not None
            assert job["compress_after"] == "7 days"
        finally:
            await conn.close()

    async def test_compression_policy_compresses_chunks_older_than_a_week(
        self, scratch_url: str
    ) -> None:
        await support.migrate(scratch_url)
        await support.pause_policies(scratch_url)  # run below, not by the scheduler
        machine = uuid.uuid4()
        now = datetime.now(UTC)
        conn = await asyncpg.connect(support.dsn(scratch_url))
        try:
            await conn.execute("INSERT INTO machines (id, name) VALUES ($1, 'm')", machine)
            await conn.executemany(
                "INSERT INTO readings (time, machine_id, metric, value) VALUES ($1, $2, 't', 1)",
                [(now - timedelta(days=days), machine) for days in (10, 9, 1)],
            )
            job = await _compression_job(conn)
            assert job is not None
            await conn.execute(f"CALL run_job({job['job_id']})")
            chunks = await conn.fetch(
                "SELECT range_end, is_compressed FROM timescaledb_information.chunks "
                "WHERE hypertable_name = 'readings' ORDER BY range_start"
            )
            assert [r["is_compressed"] for r in chunks] == [True, True, False]
            # Compressed readings read back as they went in.
            assert await conn.fetchval("SELECT count(*) FROM readings") == 3
        finally:
            await conn.close()

    async def test_downgrade_with_compressed_chunks_and_upgrade_again(
        self, scratch_url: str
    ) -> None:
        await support.migrate(scratch_url)
        await support.pause_policies(scratch_url)
        machine = uuid.uuid4()
        conn = await asyncpg.connect(support.dsn(scratch_url))
        try:
            await conn.execute("INSERT INTO machines (id, name) VALUES ($1, 'm')", machine)
            await conn.execute(
                "INSERT INTO readings (time, machine_id, metric, value) "
                "VALUES (now() - interval '30 days', $1, 't', 1)",
                machine,
            )
            await conn.execute("SELECT compress_chunk(c) FROM show_chunks('readings') c")
        finally:
            await conn.close()
        await support.migrate(scratch_url, "-1", down=True)
        assert "readings" in await _tables(scratch_url)
        await support.migrate(scratch_url, "base", down=True)
        assert await _tables(scratch_url) <= {"alembic_version"}
        await support.migrate(scratch_url)
        conn = await asyncpg.connect(support.dsn(scratch_url))
        try:
            assert await _compression_job(conn) is not None
            assert await conn.fetchval("SELECT count(*) FROM readings") == 0
        finally:
            await conn.close()
