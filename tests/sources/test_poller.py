"""The scheduler: backoff, scheduled polls, and one poller per source across processes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from asgi_lifespan import LifespanManager
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse.app import create_app
from plantpulse.config import Settings, SourcesSettings
from plantpulse.sources import service
from plantpulse.sources.models import Source
from plantpulse.sources.poller import SourcePoller
from tests.conftest import MachineFactory
from tests.live import eventually
from tests.sources.conftest import SourceFactory, sources_settings
from tests.sources.fake_server import Answer, FakeSource
from tests.sources.test_router import ONE, T, unique_path


class TestBackoff:
    def test_delays_double_with_jitter_and_stay_within_bounds(self) -> None:
        for failures, low, high in ((1, 10, 20), (2, 20, 40), (3, 40, 80)):
            draws = [
                service.backoff_seconds(failures, interval=10, maximum=3600) for _ in range(50)
            ]
            assert all(low <= d <= high for d in draws)
            assert len(set(draws)) > 1  # jitter: sources failing together spread out

    def test_capped_and_never_sooner_than_the_interval(self) -> None:
        assert 1800 <= service.backoff_seconds(40, interval=10, maximum=3600) <= 3600
        assert service.backoff_seconds(5, interval=600, maximum=60) == 600

    async def test_failed_scheduled_runs_push_the_next_poll_back_and_success_resets(
        self, committed_machine: MachineFactory, db: AsyncSession
    ) -> None:
        machine = await committed_machine()
        source = Source(
            id=uuid.uuid4(),
            name=f"b-{uuid.uuid4().hex[:6]}",
            url="http://example.com/",
            machine_id=machine,
            metric="level",
            decoder={"kind": "bytes-float32"},
            interval_seconds=10,
            consecutive_failures=0,
        )
        db.add(source)
        await db.flush()
        settings = SourcesSettings()
        for failures in (1, 2, 3):
            before = datetime.now(UTC)
            failed = service.PullResult(started_at=before, error="HTTP 500")
            await service.record_run(
                db, source_id=source.id, trigger="schedule", result=failed, settings=settings
            )
            assert source.consecutive_failures == failures
            assert source.next_poll_at is not None
            delay = (source.next_poll_at - before).total_seconds()
            ceiling = 10 * 2**failures
            assert ceiling / 2 - 1 <= delay <= ceiling + 1
        ok = service.PullResult(started_at=datetime.now(UTC))
        await service.record_run(
            db, source_id=source.id, trigger="schedule", result=ok, settings=settings
        )
        assert source.consecutive_failures == 0
        assert source.next_poll_at is not None
        assert (source.next_poll_at - datetime.now(UTC)) <= timedelta(seconds=10)


async def runs_of(pool: asyncpg.Pool, source_id: uuid.UUID) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT trigger, status, stored, error FROM source_runs WHERE source_id = $1 "
        "ORDER BY started_at",
        source_id,
    )


class TestSchedule:
    async def test_a_scheduled_source_is_polled_and_its_readings_stored(
        self,
        committed_machine: MachineFactory,
        committed_source: SourceFactory,
        poller: SourcePoller,
        fake_source: FakeSource,
        pg_pool: asyncpg.Pool,
    ) -> None:
        machine = await committed_machine()
        path = unique_path("scheduled")
        fake_source.answers[path] = Answer.json([{"time": T, "value": ONE, "tags": []}])
        source = await committed_source(machine_id=machine, url=fake_source.url(path))
        runs = await eventually(lambda: runs_of(pg_pool, source), seconds=10)
        assert (runs[0]["trigger"], runs[0]["status"], runs[0]["stored"]) == ("schedule", "ok", 1)
        value = await pg_pool.fetchval("SELECT value FROM readings WHERE machine_id = $1", machine)
        assert value == 1.0

    async def test_a_failing_source_is_recorded_and_backs_off(
        self,
        committed_machine: MachineFactory,
        committed_source: SourceFactory,
        poller: SourcePoller,
        fake_source: FakeSource,
        pg_pool: asyncpg.Pool,
    ) -> None:
        machine = await committed_machine()
        path = unique_path("down")
        fake_source.answers[path] = Answer(status=503, body=b"maintenance")
        source = await committed_source(machine_id=machine, url=fake_source.url(path))
        runs = await eventually(lambda: runs_of(pg_pool, source), seconds=10)
        assert runs[0]["status"] == "failed"
        assert runs[0]["error"] == "HTTP 503: maintenance"
        row = await pg_pool.fetchrow(
            "SELECT consecutive_failures, next_poll_at - now() AS wait, lease_until "
            "FROM sources WHERE id = $1",
            source,
        )
        assert row is not None
        assert row["consecutive_failures"] >= 1
        assert row["wait"] > timedelta(seconds=0.5)  # 1 s interval doubled, jittered: >= 1 s
        assert row["lease_until"] is None


class TestOnePollerPerSource:
    async def test_two_lifespans_never_poll_the_same_source_at_once(
        self,
        settings: Settings,
        committed_machine: MachineFactory,
        committed_source: SourceFactory,
        fake_source: FakeSource,
        pg_pool: asyncpg.Pool,
    ) -> None:
        machine = await committed_machine()
        path = unique_path("contended")
        # Slow answers: a second poller starting while the first waits would be seen here.
        fake_source.answers[path] = Answer.json([{"time": T, "value": ONE, "tags": []}], delay=0.3)
        first = create_app(sources_settings(settings))
        second = create_app(sources_settings(settings))
        async with LifespanManager(first), LifespanManager(second):
            source = await committed_source(machine_id=machine, url=fake_source.url(path))
            await eventually(lambda: _count_runs(pg_pool, source, 4), seconds=20)
            await pg_pool.execute("UPDATE sources SET enabled = false WHERE id = $1", source)
            await eventually(
                lambda: pg_pool.fetchval(
                    "SELECT lease_until IS NULL FROM sources WHERE id = $1", source
                ),
                seconds=10,
            )
        runs = await runs_of(pg_pool, source)
        assert fake_source.max_in_flight[path] == 1
        # Every request belongs to exactly one recorded run: nobody polled twice.
        assert len(fake_source.requests_to(path)) == len(runs)
        assert next(r["stored"] for r in runs) == 1
        assert {r["status"] for r in runs} == {"ok"}


async def _count_runs(pool: asyncpg.Pool, source: uuid.UUID, at_least: int) -> bool:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM source_runs WHERE source_id = $1", source
    )
    return count >= at_least
