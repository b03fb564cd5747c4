"""TimescaleDB's jobs on the Community edition (issue 8, B4): failures reported in `/ready` and
the log; the retention policy kept equal to the stored `retention_days` (at start-up, when the
database comes back); old chunks dropped even when the scheduler fails the retention job."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from sqlalchemy.engine import make_url

from plantpulse.app import create_app
from plantpulse.config import Settings, SysconfigSettings
from plantpulse.state import Resources
from plantpulse.sysconfig.retention import Policy, reconcile_policy
from tests import support
from tests.community.conftest import seed_compressed
from tests.conftest import make_settings
from tests.ingest.conftest import eventually


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Resources, AsyncClient]]:
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30) as manager:
        transport = ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://test") as client:
            yield manager._state["resources"], client


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(support.dsn(url))
    try:
        yield conn
    finally:
        await conn.close()


async def retention_policy(url: str) -> timedelta | None:
    async with connected(url) as conn:
        drop_after: timedelta | None = await conn.fetchval(
            "SELECT (config->>'drop_after')::interval FROM timescaledb_information.jobs "
            "WHERE proc_name = 'policy_retention' AND hypertable_name = 'readings'"
        )
        return drop_after


async def set_policy(url: str, days: int) -> None:
    async with connected(url) as conn:
        await conn.execute(
            "SELECT add_retention_policy('readings', make_interval(days => $1))", days
        )


async def store_retention(url: str, days: int | None) -> None:
    """As `PUT /api/v1/config/retention_days` leaves it in the table (a restored database
    has the row without TimescaleDB's job)."""
    async with connected(url) as conn:
        await conn.execute(
            "INSERT INTO system_config (key, value) VALUES ('retention_days', $1::jsonb)",
            json.dumps(days),
        )


class TestFailingJobs:
    async def test_failing_job_makes_ready_degraded_and_is_logged_once(
        self, own_database: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        async with connected(own_database) as conn:
            await conn.execute(
                "CREATE PROCEDURE pptest_fails(job_id int, config jsonb) LANGUAGE plpgsql "
                "AS $$ BEGIN RAISE EXCEPTION 'pptest: this job always fails'; END $$"
            )
            job_id = await conn.fetchval(
                "SELECT add_job('pptest_fails', '1 hour', initial_start => now())"
            )
            name = await conn.fetchval(
                "SELECT application_name FROM timescaledb_information.jobs WHERE job_id = $1",
                job_id,
            )

            async def failed() -> bool:
                status = await conn.fetchval(
                    "SELECT last_run_status FROM timescaledb_information.job_stats "
                    "WHERE job_id = $1",
                    job_id,
                )
                return bool(status == "Failed")

            # The scheduler runs it at once (and fails it: here any job, elsewhere this one).
            await eventually(failed, within=60)

        caplog.set_level(logging.INFO, logger="plantpulse.health.jobs")
        async with serving(make_settings(own_database)) as (_, client):
            first = await client.get("/ready")
            second = await client.get("/ready")
            assert first.status_code == second.status_code == 200
            body = first.json()
            assert body["status"] == "degraded"
            jobs = body["timescaledb_jobs"]
            assert jobs["status"] == "down"
            assert name in jobs["detail"]
            failing = {job["job_id"]: job for job in jobs["info"]["failing"]}
            assert failing[job_id]["name"] == name
            assert failing[job_id]["failures"] >= 1
            assert failing[job_id]["last_error"]
            assert second.json()["timescaledb_jobs"] == jobs

            logged = [r for r in caplog.records if name in r.getMessage()]
            assert [r.levelno for r in logged] == [logging.WARNING]
            assert f"CALL run_job({job_id})" in logged[0].getMessage()

            # Taken off the schedule, it is no longer a failure to report.
            async with connected(own_database) as conn:
                await conn.execute("SELECT alter_job($1, scheduled => false)", job_id)
            recovered = await client.get("/ready")
            assert recovered.json()["timescaledb_jobs"]["status"] == "up"
            assert recovered.json()["status"] == "ready"
            assert any(
                f"job {job_id} is no longer failing" in r.getMessage() for r in caplog.records
            )


class TestRetentionPolicyReconciled:
    @pytest.mark.parametrize(
        ("stored", "policy", "expected"),
        [
            pytest.param(30, None, timedelta(days=30), id="restored-without-the-policy"),
            pytest.param(30, 90, timedelta(days=30), id="policy-differs"),
            pytest.param(None, 90, None, id="stored-keep-forever"),
            pytest.param("unset", 90, timedelta(days=90), id="never-set-left-alone"),
            pytest.param(30, 30, timedelta(days=30), id="already-equal"),
        ],
    )
    async def test_policy_follows_the_stored_setting(
        self,
        own_database: str,
        stored: int | str | None,
        policy: int | None,
        expected: timedelta | None,
    ) -> None:
        if stored != "unset":
            assert not isinstance(stored, str)
            await store_retention(own_database, stored)
        if policy is not None:
            await set_policy(own_database, policy)
        pool = await asyncpg.create_pool(support.dsn(own_database), min_size=1, max_size=2)
        try:
            result = await reconcile_policy(pool)
        finally:
            await pool.close()
        assert isinstance(result, Policy)
        assert result.managed == (stored != "unset")
        assert await retention_policy(own_database) == expected
        assert (result.job_id is None) == (expected is None)

    async def test_start_up_restores_a_missing_policy(self, own_database: str) -> None:
        await store_retention(own_database, 30)
        assert await retention_policy(own_database) is None
        async with serving(make_settings(own_database)) as (resources, _):

            async def restored() -> bool:
                return await retention_policy(own_database) == timedelta(days=30)

            await eventually(restored, within=30)
            assert resources.live.retention_days == 30

    async def test_database_down_at_start_up_is_reconciled_when_it_returns(
        self, own_database: str
    ) -> None:
        await store_retention(own_database, 30)
        name = make_url(own_database).database
        admin = await asyncpg.connect(
            support.dsn(support.database_url("postgres", server=own_database))
        )
        settings = make_settings(own_database, sysconfig=SysconfigSettings(reload_seconds=0.2))
        try:
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            async with serving(settings) as (resources, client):
                assert (await client.get("/ready")).status_code == 503
                assert resources.live.retention_days is None  # the default, meanwhile
                await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')

                async def reconciled() -> bool:
                    return resources.live.retention_days == 30 and await retention_policy(
                        own_database
                    ) == timedelta(days=30)

                await eventually(reconciled, within=30)
                assert resources.timescale.community
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            await admin.close()


class TestRetentionRuns:
    async def test_policy_run_drops_compressed_chunks(self, own_database: str) -> None:
        """TimescaleDB's retention policy (run with `run_job`, as the scheduler would) drops
        compressed chunks like any other."""
        machine = uuid.uuid4()
        now = datetime.now(UTC)
        async with connected(own_database) as conn:
            await conn.execute("INSERT INTO machines (id, name) VALUES ($1, 'old')", machine)
        pool = await asyncpg.create_pool(support.dsn(own_database), min_size=1, max_size=2)
        try:
            old = (now - timedelta(days=60)).replace(hour=0, minute=0, second=0, microsecond=0)
            await seed_compressed(pool, [machine], old, per_series=100, step=timedelta(minutes=1))
            await seed_compressed(
                pool, [machine], old + timedelta(days=50), per_series=10, step=timedelta(hours=1)
            )
            await store_retention(own_database, 30)
            policy = await reconcile_policy(pool)
            assert policy is not None
            assert policy.job_id is not None
            await pool.execute(f"CALL run_job({policy.job_id})")
            remaining = await pool.fetch(
                "SELECT range_start FROM timescaledb_information.chunks "
                "WHERE hypertable_name = 'readings' ORDER BY range_start"
            )
        finally:
            await pool.close()
        assert [r["range_start"] for r in remaining] == [old + timedelta(days=50)]

    async def test_old_chunks_go_even_when_the_retention_job_fails(self, own_database: str) -> None:
        """Here the scheduler fails every job (shared/timescaledb-tsl/README.md): PlantPulse
        drops the chunks itself once it sees the retention job failing. With a working
        scheduler the policy drops them; either way they go."""
        machine = uuid.uuid4()
        now = datetime.now(UTC)
        old = (now - timedelta(days=60)).replace(hour=0, minute=0, second=0, microsecond=0)
        async with connected(own_database) as conn:
            await conn.execute("INSERT INTO machines (id, name) VALUES ($1, 'old')", machine)
        pool = await asyncpg.create_pool(support.dsn(own_database), min_size=1, max_size=2)
        try:
            await seed_compressed(pool, [machine], old, per_series=100, step=timedelta(minutes=1))
            await pool.execute(
                "INSERT INTO readings (time, machine_id, metric, value) VALUES ($1, $2, 't', 1)",
                now - timedelta(days=1),
                machine,
            )
        finally:
            await pool.close()
        await store_retention(own_database, 30)
        settings = make_settings(
            own_database, sysconfig=SysconfigSettings(retention_check_seconds=0.5)
        )
        async with serving(settings):

            async def dropped() -> bool:
                async with connected(own_database) as conn:
                    oldest = await conn.fetchval("SELECT min(time) FROM readings")
                return bool(oldest is not None and oldest > now - timedelta(days=30))

            await eventually(dropped, within=60)
        async with connected(own_database) as conn:
            assert await conn.fetchval("SELECT count(*) FROM readings") == 1
