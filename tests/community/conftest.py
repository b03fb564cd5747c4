"""Tests of the Community (TSL) edition of TimescaleDB: compression, policies, jobs.

They run against the cluster `../shared/timescaledb-tsl/install.sh` starts (127.0.0.1:5433,
`PLANTPULSE_TEST_COMMUNITY_URL`), whatever server the rest of the suite uses, and skip with one
line of reason where that cluster does not exist (a clone without the shared folder).

The session fixtures of tests/conftest.py that depend on the database are redefined here,
so `client`, `db`, `resources`, `committed_machine` ... work unchanged on the Community
database (session fixtures are cached per definition: overriding `database_url` alone would
hand these tests the ones already built on the main server).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from plantpulse.app import create_app
from plantpulse.config import Settings
from plantpulse.db import make_engine
from tests import support
from tests.conftest import make_settings


@pytest.fixture(scope="session", autouse=True)
def community_server() -> str:
    if support.COMMUNITY_SERVER_URL is None:
        pytest.skip(support.COMMUNITY_SKIP_REASON)
    return support.COMMUNITY_SERVER_URL


async def community_database(server: str, suffix: str) -> str:
    """A migrated database on the Community cluster, policies off the scheduler."""
    url = await support.create_database(suffix, server=server)
    try:
        conn = await asyncpg.connect(support.dsn(url))
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            license_ = await conn.fetchval("SELECT current_setting('timescaledb.license')")
        finally:
            await conn.close()
        if license_ != "timescale":
            pytest.fail(f"{server} runs TimescaleDB with license {license_!r}, not 'timescale'")
        await support.migrate(url)
        await support.pause_policies(url)
    except BaseException:
        await support.drop_database(url)
        raise
    return url


@pytest.fixture(scope="session")
async def database_url(community_server: str) -> AsyncIterator[str]:
    url = await community_database(community_server, "community")
    try:
        yield url
    finally:
        await support.drop_database(url)


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings.database)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, LifespanManager]]:
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        yield app, manager
    redis = Redis.from_url(support.REDIS_URL)
    async for key in redis.scan_iter(match=f"pptest:{support.RUN_ID}:*"):
        await redis.delete(key)
    await redis.aclose()


@pytest.fixture(scope="session")
async def pg_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(support.dsn(database_url), min_size=1, max_size=4)
    yield pool
    await pool.close()


# ---------------------------------------------------------------------------------------------
# Compressed readings

METRICS = ("temperature", "pressure", "speed")
# 199 machines x 3 metrics x 200 readings in one day: re-sending one reading of each series
# decompresses 597 batches of 200 rows, 119,400 rows, past TimescaleDB's default limit of
# 100,000 per transaction (`timescaledb.max_tuples_decompressed_per_dml_transaction`).
FLEET = 199
PER_SERIES = 200
_days_used = 0


def fresh_day() -> datetime:
    """A day of its own for each test (older than the compression policy's 7 days), so one
    test's decompressed or dropped chunk is never another's data."""
    global _days_used
    _days_used += 1
    return datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=_days_used)


async def seed_compressed(
    pool: asyncpg.Pool,
    machines: Sequence[uuid.UUID],
    day: datetime,
    *,
    per_series: int,
    step: timedelta,
) -> int:
    """`per_series` readings per machine and metric from `day` on, `step` apart, written on
    the server and compressed; returns how many."""
    status = await pool.execute(
        """
        INSERT INTO readings (time, machine_id, metric, value)
        SELECT $2::timestamptz + i * $4::interval, m, metric, i
        FROM unnest($1::uuid[]) AS m, unnest($5::text[]) AS metric, generate_series(0, $3 - 1) i
        """,
        list(machines),
        day,
        per_series,
        step,
        list(METRICS),
    )
    await pool.executemany(
        "INSERT INTO machine_metrics (machine_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        [(m, metric) for m in machines for metric in METRICS],
    )
    compressed = await pool.fetchval(
        """
        SELECT count(compress_chunk(c, if_not_compressed => true))
        FROM show_chunks('readings', newer_than => $1::timestamptz,
                         older_than => $1::timestamptz + interval '1 day') c
        """,
        day,
    )
    assert compressed == 1
    return int(status.rsplit(" ", 1)[-1])


async def drop_day(pool: asyncpg.Pool, day: datetime) -> None:
    """Cleanup without DML on compressed rows: the day's chunk goes as a whole."""
    await pool.execute(
        "SELECT drop_chunks('readings', newer_than => $1::timestamptz, "
        "older_than => $1::timestamptz + interval '1 day')",
        day,
    )


async def is_compressed(pool: asyncpg.Pool, day: datetime) -> bool:
    compressed: bool = await pool.fetchval(
        """
        SELECT is_compressed FROM timescaledb_information.chunks
        WHERE hypertable_name = 'readings' AND range_start = $1::timestamptz
        """,
        day,
    )
    return compressed


class Fleet:
    """Machines whose readings of one day sit in a compressed chunk."""

    def __init__(self, machines: list[uuid.UUID], day: datetime) -> None:
        self.machines = machines
        self.day = day


@pytest.fixture
async def compressed_fleet(pg_pool: asyncpg.Pool) -> AsyncIterator[Fleet]:
    machines = [uuid.uuid4() for _ in range(FLEET)]
    day = fresh_day()
    await pg_pool.executemany(
        "INSERT INTO machines (id, name) VALUES ($1, $2)",
        [(m, f"fleet-{m.hex[:12]}") for m in machines],
    )
    try:
        await seed_compressed(
            pg_pool, machines, day, per_series=PER_SERIES, step=timedelta(minutes=1)
        )
        yield Fleet(machines, day)
    finally:
        await drop_day(pg_pool, day)
        await pg_pool.execute("DELETE FROM readings WHERE machine_id = ANY($1::uuid[])", machines)
        await pg_pool.execute("DELETE FROM machines WHERE id = ANY($1::uuid[])", machines)


@pytest.fixture
async def own_database(community_server: str) -> AsyncIterator[str]:
    """A migrated Community database for one test (apps started and stopped on it)."""
    url = await community_database(community_server, f"t{uuid.uuid4().hex[:8]}")
    try:
        yield url
    finally:
        await support.drop_database(url)
