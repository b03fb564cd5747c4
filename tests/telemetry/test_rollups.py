"""Rollups (telemetry/rollups.py): answers from the 1-minute/1-hour rollups equal answers from
the raw readings, on TimescaleDB and on plain PostgreSQL, for random data and random ranges
(ranges that cut buckets, late readings, deleted ranges)."""

from __future__ import annotations

import itertools
import math
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse.machines import service as machines
from plantpulse.machines.catalog import MachineCatalog
from plantpulse.state import Resources
from plantpulse.sysconfig.live import LiveConfig
from plantpulse.telemetry import queries, rollups, service
from plantpulse.telemetry.writer import BatchWriter, StoredRow
from tests import support
from tests.conftest import MachineFactory
from tests.live import eventually
from tests.telemetry.support import seed, store

T0 = datetime(2024, 3, 4, 0, 0, tzinfo=UTC)
SPAN = timedelta(days=2)
METRICS = ("a", "b", "c")
AGGREGATES = ("avg", "min", "max", "sum", "count", "first", "last")
INTERVALS = [timedelta(minutes=1), timedelta(minutes=5), timedelta(hours=1), timedelta(hours=3)]
INTERVALS.append(timedelta(days=1))
EXACT = ("count", "min", "max", "first", "last", "invalid")


@pytest.fixture(scope="module")
async def plain_pool() -> AsyncIterator[asyncpg.Pool]:
    """A database without TimescaleDB: migrated to 0001 (which creates the extension where
    the server has it), extension dropped, then migrated to head as on a plain server."""
    url = await support.create_database("plain")
    try:
        await support.migrate(url, "0001")
        conn = await asyncpg.connect(support.dsn(url))
        try:
            await conn.execute("DROP EXTENSION IF EXISTS timescaledb")
        finally:
            await conn.close()
        await support.migrate(url)
        pool = await asyncpg.create_pool(support.dsn(url), min_size=1, max_size=4)
        try:
            assert not await pool.fetchval(
                "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
            )
            yield pool
        finally:
            await pool.close()
    finally:
        await support.drop_database(url)


@pytest.fixture(params=["timescaledb", "plain"])
def edition(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pool(edition: str, pg_pool: asyncpg.Pool, plain_pool: asyncpg.Pool) -> asyncpg.Pool:
    return plain_pool if edition == "plain" else pg_pool


async def test_the_main_test_database_has_timescaledb(pg_pool: asyncpg.Pool) -> None:
    assert await pg_pool.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")


@pytest.fixture
async def machine(pool: asyncpg.Pool) -> AsyncIterator[uuid.UUID]:
    machine_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO machines (id, name) VALUES ($1, $2)", machine_id, f"r-{machine_id.hex[:8]}"
    )
    await pool.executemany(
        "INSERT INTO machine_metrics (machine_id, name) VALUES ($1, $2)",
        [(machine_id, m) for m in METRICS],
    )
    yield machine_id
    for table in ("readings", "readings_1m", "readings_1h"):
        await pool.execute(f"DELETE FROM {table} WHERE machine_id = $1", machine_id)  # noqa: S608
    await pool.execute("DELETE FROM machines WHERE id = $1", machine_id)


def random_rows(
    rng: random.Random, machine_id: uuid.UUID, start: datetime, span: timedelta
) -> list[StoredRow]:
    """Irregular series: gaps of 1-90 s with a few long ones, 10% invalid, and often small
    integers so that minima and maxima tie."""
    rows: list[StoredRow] = []
    for metric in METRICS:
        moment = start + timedelta(microseconds=rng.randrange(10_000_000))
        while moment < start + span:
            value = float(rng.randrange(20)) if rng.random() < 0.3 else rng.gauss(50, 20)
            rows.append((moment, machine_id, metric, value, rng.random() > 0.1))
            gap = rng.randrange(1_000_000, 90_000_000)
            if rng.random() < 0.002:
                gap = rng.randrange(600_000_000, 7_200_000_000)
            moment += timedelta(microseconds=gap)
    return rows


def late_rows(
    rng: random.Random, machine_id: uuid.UUID, taken: set[tuple[str, datetime]], count: int
) -> list[StoredRow]:
    rows: list[StoredRow] = []
    while len(rows) < count:
        metric = rng.choice(METRICS)
        moment = T0 + timedelta(microseconds=rng.randrange(int(SPAN / timedelta(microseconds=1))))
        if (metric, moment) in taken:
            continue
        taken.add((metric, moment))
        rows.append((moment, machine_id, metric, rng.uniform(-200, 200), rng.random() > 0.5))
    return rows


def random_window(rng: random.Random) -> tuple[datetime, datetime]:
    start = T0 - timedelta(hours=1) + timedelta(seconds=rng.uniform(0, 50 * 3600))
    length = timedelta(seconds=rng.choice([90, 3000, 4 * 3600, 30 * 3600, 60 * 3600]))
    return start, start + length * rng.uniform(0.5, 1.0)


def by_key(records: Sequence[Any]) -> dict[tuple[datetime, str], dict[str, Any]]:
    return {(r["bucket"], r["metric"]): dict(r) for r in records}


def assert_same(raw: Sequence[Any], rolled: Sequence[Any], context: str) -> None:
    expected, actual = by_key(raw), by_key(rolled)
    assert expected.keys() == actual.keys(), context
    for key, row in expected.items():
        for column, value in row.items():
            if column in ("bucket", "metric"):
                continue
            got = actual[key][column]
            if column in EXACT:
                assert got == value, (context, key, column)
            else:
                assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-9), (context, key, column)


async def compare(
    pool: asyncpg.Pool,
    machine_id: uuid.UUID,
    *,
    edition: str,
    start: datetime,
    end: datetime,
    interval: timedelta,
    include_invalid: bool,
) -> str:
    """Raw answer vs rollup answer for one query; returns the rollup used."""
    plan = rollups.plan(start, end, width=interval, now=datetime.now(UTC))
    common: dict[str, Any] = {
        "machine_id": machine_id,
        "metrics": list(METRICS),
        "interval": interval,
        "aggregates": AGGREGATES,
        "include_invalid": include_invalid,
    }
    raw = await queries.buckets(
        pool, start=start, end=end, timescale=edition == "timescaledb", **common
    )
    rolled = await queries.rollup_buckets(pool, plan=plan, **common)
    assert_same(raw, rolled, f"{start} {end} {interval} invalid={include_invalid} {plan}")
    return plan.source


class TestRollupsEqualRaw:
    async def test_random_ranges_late_readings_and_deletes(
        self, pool: asyncpg.Pool, machine: uuid.UUID, edition: str
    ) -> None:
        rng = random.Random(f"rollups-{edition}")
        rows = random_rows(rng, machine, T0, SPAN)
        for i in range(0, len(rows), 2_000):
            await store(pool, rows[i : i + 2_000])
        await rollups.refresh_all(pool)
        sources: set[str] = set()

        async def check_all(rounds: int) -> None:
            for _ in range(rounds):
                start, end = random_window(rng)
                for interval in INTERVALS:
                    if (end - start) / interval > service.MAX_BUCKETS:
                        continue
                    for include_invalid in (False, True):
                        sources.add(
                            await compare(
                                pool,
                                machine,
                                edition=edition,
                                start=start,
                                end=end,
                                interval=interval,
                                include_invalid=include_invalid,
                            )
                        )

        await check_all(8)
        # Ranges that cut hours and minutes in half, exactly.
        for start, end in [
            (T0 + timedelta(hours=5, minutes=30), T0 + timedelta(hours=30, minutes=15)),
            (T0 + timedelta(minutes=7, seconds=30), T0 + timedelta(hours=2, seconds=30)),
        ]:
            for interval in INTERVALS:
                await compare(
                    pool,
                    machine,
                    edition=edition,
                    start=start,
                    end=end,
                    interval=interval,
                    include_invalid=True,
                )
        assert {"1m", "1h"} <= sources

        # Late readings, a day and more after their time, into buckets already rolled up.
        taken = {(r[2], r[0]) for r in rows}
        await store(pool, late_rows(rng, machine, taken, 300))
        await rollups.refresh_all(pool)
        await check_all(4)

        # A delete that cuts minutes and hours.
        cut_start = T0 + timedelta(hours=7, minutes=12, seconds=rng.uniform(0, 60))
        cut_end = T0 + timedelta(hours=20, minutes=40, seconds=rng.uniform(0, 60))
        deleted = await queries.delete_range(pool, machine_id=machine, start=cut_start, end=cut_end)
        assert deleted > 0
        for interval in INTERVALS:
            await compare(
                pool,
                machine,
                edition=edition,
                start=T0,
                end=T0 + SPAN,
                interval=interval,
                include_invalid=True,
            )
        await check_all(3)

    async def test_m4_from_rollups_equals_m4_from_readings(
        self, pool: asyncpg.Pool, machine: uuid.UUID, edition: str
    ) -> None:
        rng = random.Random(f"m4-{edition}")
        rows = random_rows(rng, machine, T0, SPAN)
        await store(pool, rows)
        await rollups.refresh_all(pool)
        now = datetime.now(UTC)
        used: set[str] = set()
        for points, (start, end) in [
            (1000, (T0 - timedelta(hours=2), T0 + SPAN + timedelta(hours=1))),
            (200, (T0 + timedelta(hours=3, minutes=7, seconds=13), T0 + timedelta(hours=40))),
            (80, (T0 + timedelta(minutes=3, seconds=20), T0 + timedelta(hours=5))),
            (40, (T0 + timedelta(minutes=59, seconds=1), T0 + SPAN - timedelta(seconds=1))),
            (40, random_window(rng)),
        ]:
            chart = service.chart_plan(service.TimeRange(start, end), points, now=now)
            used.add(chart.plan.source)
            raw_plan = rollups.Plan("raw", start, end, end, end)
            common: dict[str, Any] = {
                "machine_id": machine,
                "metrics": list(METRICS),
                "width": chart.width,
                "origin": chart.origin,
                "include_invalid": False,
            }
            rolled = await queries.m4(pool, plan=chart.plan, **common)
            raw = await queries.m4(pool, plan=raw_plan, **common)
            assert sorted(tuple(r) for r in rolled) == sorted(tuple(r) for r in raw)
            wide = service.wide_points(rolled)
            for metric in METRICS:
                assert sum(metric in row for _, row in wide) <= points
            # And the SQL's M4 is M4: checked against the readings in Python.
            expected = m4_reference(rows, start, end, chart.width, chart.origin)
            assert {(r["cb"], r["metric"]): tuple(r)[2:] for r in raw} == expected
        assert {"1m", "1h"} <= used


def m4_reference(
    rows: Sequence[StoredRow],
    start: datetime,
    end: datetime,
    width: timedelta,
    origin: datetime,
) -> dict[tuple[datetime, str], tuple[Any, ...]]:
    groups: dict[tuple[datetime, str], list[StoredRow]] = {}
    for row in rows:
        if start <= row[0] < end and row[4]:
            bucket = origin + ((row[0] - origin) // width) * width
            groups.setdefault((bucket, row[2]), []).append(row)
    result = {}
    for key, group in groups.items():
        first = min(group, key=lambda r: r[0])
        last = max(group, key=lambda r: r[0])
        low = min(group, key=lambda r: (r[3], r[0]))
        high = min(group, key=lambda r: (-r[3], r[0]))
        result[key] = (
            first[0],
            first[3],
            last[0],
            last[3],
            low[3],
            low[0],
            high[3],
            high[0],
        )
    return result


class TestRefresher:
    async def test_one_refresher_at_a_time_and_markers_wait_for_it(
        self, pg_pool: asyncpg.Pool, committed_machine: MachineFactory
    ) -> None:
        m = await committed_machine()
        holder = await pg_pool.acquire()
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", rollups.LOCK_ID)
            await store(pg_pool, [(T0 + timedelta(seconds=5), m, "v", 1.0, True)])
            assert (await rollups.refresh(pg_pool)).markers == 0
            pending = await pg_pool.fetchval(
                "SELECT count(*) FROM rollup_dirty WHERE $1 = ANY(machine_ids)", m
            )
            assert pending == 1
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", rollups.LOCK_ID)
            await pg_pool.release(holder)
        await rollups.refresh_all(pg_pool)
        assert await pg_pool.fetchval("SELECT count FROM readings_1h WHERE machine_id = $1", m) == 1

    async def test_a_round_recomputes_idempotently(
        self, pg_pool: asyncpg.Pool, committed_machine: MachineFactory
    ) -> None:
        m = await committed_machine()
        writer = BatchWriter(pg_pool, MachineCatalog(pg_pool))
        writer.in_transaction.append(rollups.mark_dirty)
        rows = [(T0 + timedelta(seconds=10 * i), m, "v", float(i)) for i in range(30)]
        assert (await writer.write(rows, source="test")).inserted == 30
        # Re-sent: the staged path stores nothing new but marks the buckets again.
        assert (await writer.write(rows[:3], source="test")).duplicates == 3
        await rollups.refresh_all(pg_pool)
        async with pg_pool.acquire() as conn, conn.transaction():
            await rollups.recompute(conn, [(m, "v", T0), (m, "v", T0 + timedelta(minutes=4))])
        minutes = await pg_pool.fetch(
            "SELECT bucket, count, sum FROM readings_1m WHERE machine_id = $1 ORDER BY 1", m
        )
        assert [(r["count"], r["sum"]) for r in minutes] == [
            (6, 15.0),
            (6, 51.0),
            (6, 87.0),
            (6, 123.0),
            (6, 159.0),
        ]


def url(machine_id: uuid.UUID) -> str:
    return f"/api/v1/machines/{machine_id}/telemetry"


class TestApi:
    async def test_ingested_readings_reach_the_rollups_through_the_lifespan_refresher(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        key = await support_key(pg_pool, m)
        readings = [
            {"timestamp": (T0 + timedelta(seconds=20 * i)).isoformat(), "temperature": float(i)}
            for i in range(360)
        ]
        response = await client.post(
            f"{url(m)}", json={"readings": readings}, headers={"X-API-Key": key}
        )
        assert response.status_code == 200, response.text

        async def rolled_up() -> bool:
            return bool(
                await pg_pool.fetchval("SELECT count(*) FROM readings_1h WHERE machine_id = $1", m)
            )

        await eventually(rolled_up, seconds=15)
        params = {
            "start_time": T0.isoformat(),
            "end_time": (T0 + timedelta(hours=3)).isoformat(),
            "interval": "1h",
            "agg": "count,min,max,first,last,avg",
            "order": "asc",
        }
        body = (await client.get(url(m), params=params, headers=operator)).json()
        assert body["source"] == "1h"
        assert body["items"] == [
            {
                "timestamp": "2024-03-04T00:00:00Z",
                "temperature_count": 180,
                "temperature_min": 0.0,
                "temperature_max": 179.0,
                "temperature_first": 0.0,
                "temperature_last": 179.0,
                "temperature_avg": 89.5,
            },
            {
                "timestamp": "2024-03-04T01:00:00Z",
                "temperature_count": 180,
                "temperature_min": 180.0,
                "temperature_max": 359.0,
                "temperature_first": 180.0,
                "temperature_last": 359.0,
                "temperature_avg": 269.5,
            },
        ]

    async def test_unrefreshed_backfill_is_answered_from_the_readings(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        await seed(pg_pool, m, [(T0 + timedelta(minutes=i), "v", 1.0) for i in range(120)])
        holder = await pg_pool.acquire()
        try:
            # The refresher is held off: the backfilled reading is only a marker so far.
            await holder.execute("SELECT pg_advisory_lock($1)", rollups.LOCK_ID)
            await store(pg_pool, [(T0 + timedelta(seconds=30), m, "v", 100.0, True)])
            params = {
                "start_time": T0.isoformat(),
                "end_time": (T0 + timedelta(hours=2)).isoformat(),
                "interval": "1h",
                "agg": "count,max",
                "order": "asc",
            }
            body = (await client.get(url(m), params=params, headers=operator)).json()
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", rollups.LOCK_ID)
            await pg_pool.release(holder)
        assert body["source"] == "raw"
        assert body["items"][0] == {
            "timestamp": "2024-03-04T00:00:00Z",
            "v_count": 61,
            "v_max": 100.0,
        }

    async def test_points_keep_spikes_and_never_exceed_n(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        readings = [(T0 + timedelta(seconds=30 * i), "v", 10.0 + (i % 7)) for i in range(8_640)]
        spike = T0 + timedelta(hours=33, seconds=30)
        readings[33 * 120 + 1] = (spike, "v", 1e6)
        await seed(pg_pool, m, readings)
        params = {
            "start_time": T0.isoformat(),
            "end_time": (T0 + timedelta(days=3)).isoformat(),
            "points": "100",
            "order": "asc",
        }
        body = (await client.get(url(m), params=params, headers=operator)).json()
        assert body["source"] == "1h"
        assert body["points"] == 100
        assert 4 < len(body["items"]) <= 100
        assert {"timestamp": "2024-03-05T09:00:30Z", "v": 1e6} in body["items"]
        assert body["items"][0] == {"timestamp": "2024-03-04T00:00:00Z", "v": 10.0}
        times = [row["timestamp"] for row in body["items"]]
        assert times == sorted(times)

    @pytest.mark.parametrize(
        "extra",
        [{"interval": "1h"}, {"limit": "10"}, {"offset": "1"}, {"points": "3"}],
    )
    async def test_points_refuses_what_does_not_apply(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        extra: dict[str, str],
    ) -> None:
        m = await committed_machine()
        response = await client.get(url(m), params={"points": "100", **extra}, headers=operator)
        assert response.status_code == 422, response.text
        assert {"error", "detail", "status"} <= set(response.json())

    async def test_delete_corrects_the_rollups(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        manager: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        await seed(pg_pool, m, [(T0 + timedelta(seconds=10 * i), "v", 1.0) for i in range(1080)])
        window = {
            "start_time": (T0 + timedelta(minutes=30, seconds=5)).isoformat(),
            "end_time": (T0 + timedelta(hours=2, minutes=15)).isoformat(),
        }
        deleted = await client.delete(url(m), params=window, headers=manager)
        assert deleted.json()["deleted"] == 6 * 105 - 1
        params = {
            "start_time": T0.isoformat(),
            "end_time": (T0 + timedelta(hours=3)).isoformat(),
            "interval": "1h",
            "agg": "count",
            "order": "asc",
        }
        body = (await client.get(url(m), params=params, headers=operator)).json()
        assert body["source"] == "1h"
        assert [row["v_count"] for row in body["items"]] == [181, 270]

    async def test_deleting_a_machine_deletes_its_rollups(
        self, committed_machine: MachineFactory, pg_pool: asyncpg.Pool, db: AsyncSession
    ) -> None:
        # `db` last: its transaction (which deleted rows) ends before the machine's clean-up.
        m = await committed_machine()
        await seed(pg_pool, m, [(T0, "v", 1.0)])
        assert await machines.delete_machine(db, machine_id=m) == 1
        for table in ("readings_1m", "readings_1h"):
            count = await db.scalar(
                text(f"SELECT count(*) FROM {table} WHERE machine_id = :m"),  # noqa: S608
                {"m": m},
            )
            assert count == 0, table


async def support_key(pool: asyncpg.Pool, machine_id: uuid.UUID) -> str:
    from tests.telemetry.support import give_api_key

    return await give_api_key(pool, machine_id)


class TestRetention:
    async def test_each_resolution_has_its_own_retention(
        self, pg_pool: asyncpg.Pool, committed_machine: MachineFactory
    ) -> None:
        m = await committed_machine()
        now = datetime.now(UTC)
        old, recent = now - timedelta(days=400), now - timedelta(days=10)
        await seed(pg_pool, m, [(old, "v", 1.0), (recent, "v", 2.0)])
        live = LiveConfig(
            future_skew_seconds=300,
            auto_register_machines=False,
            rollup_1m_retention_days=30,
            rollup_1h_retention_days=None,
        )
        assert await rollups.purge(pg_pool, live=live) >= 1

        async def buckets(table: str) -> int:
            return int(
                await pg_pool.fetchval(
                    f"SELECT count(*) FROM {table} WHERE machine_id = $1",  # noqa: S608
                    m,
                )
            )

        assert (await buckets("readings_1m"), await buckets("readings_1h")) == (1, 2)

    async def test_buckets_whose_readings_retention_removed_are_not_recomputed(
        self, pg_pool: asyncpg.Pool, committed_machine: MachineFactory
    ) -> None:
        m = await committed_machine()
        now = datetime.now(UTC)
        minute = rollups.floor(now - timedelta(days=40), rollups.MINUTE)
        await seed(pg_pool, m, [(minute + timedelta(seconds=10 * i), "v", 1.0) for i in range(6)])
        # Raw retention at 30 days dropped them; the rollups keep them.
        await pg_pool.execute("DELETE FROM readings WHERE machine_id = $1", m)
        horizons = rollups.Horizons(raw=now - timedelta(days=30))
        async with pg_pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", rollups.LOCK_ID)
            # A late reading for that minute: recomputing it would leave a count of 1.
            await rollups.recompute(conn, [(m, "v", minute)], horizons=horizons)
        counts = await pg_pool.fetch(
            "SELECT count FROM readings_1m WHERE machine_id = $1 "
            "UNION ALL SELECT count FROM readings_1h WHERE machine_id = $1",
            m,
        )
        assert [r["count"] for r in counts] == [6, 6]


class TestLocalDays:
    async def test_local_days_from_rollups_equal_raw_across_dst(
        self, pool: asyncpg.Pool, machine: uuid.UUID, edition: str
    ) -> None:
        rng = random.Random(f"tz-{edition}")
        begin = datetime(2024, 3, 29, tzinfo=UTC)
        rows = random_rows(rng, machine, begin, timedelta(days=4))
        await store(pool, rows)
        await rollups.refresh_all(pool)
        window = service.TimeRange(
            begin + timedelta(hours=7, minutes=13), begin + timedelta(days=4)
        )
        now = datetime.now(UTC)
        for name, step in (("Europe/Berlin", rollups.HOUR), ("Asia/Kolkata", rollups.MINUTE)):
            zone = ZoneInfo(name)
            days = service.local_days(window, zone)
            assert service.day_rollup_step(days) == step
            plan = rollups.plan(window.start, window.end, width=step, now=now)
            assert plan.source == ("1h" if step == rollups.HOUR else "1m")
            raw_plan = rollups.Plan("raw", window.start, window.end, window.end, window.end)
            for include_invalid in (False, True):
                common: dict[str, Any] = {
                    "machine_id": machine,
                    "metrics": list(METRICS),
                    "interval": timedelta(days=1),
                    "aggregates": AGGREGATES,
                    "include_invalid": include_invalid,
                    "zone": name,
                }
                rolled = await queries.rollup_buckets(pool, plan=plan, **common)
                raw = await queries.rollup_buckets(pool, plan=raw_plan, **common)
                assert_same(raw, rolled, f"{name} invalid={include_invalid}")
            # Days are the plant's: counted in Python from the readings by local date
            # (`rolled` includes the invalid ones).
            expected: dict[tuple[datetime, str], int] = {}
            for moment, _, metric, _, _ in rows:
                if window.start <= moment < window.end:
                    local = moment.astimezone(zone).date()
                    day = datetime.combine(local, time(0), tzinfo=zone).astimezone(UTC)
                    expected[(day, metric)] = expected.get((day, metric), 0) + 1
            counted = {key: row["count"] for key, row in by_key(rolled).items()}
            assert counted == expected
            assert {day for day, _ in counted} <= set(days)
        berlin = service.local_days(window, ZoneInfo("Europe/Berlin"))
        # 2024-03-31 had 23 hours in Berlin.
        assert [b - a for a, b in itertools.pairwise(berlin)] == [
            timedelta(hours=24),
            timedelta(hours=24),
            timedelta(hours=23),
            timedelta(hours=24),
        ]

    async def test_tz_needs_day_buckets_and_a_real_zone(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        await seed(pg_pool, m, [(datetime(2024, 3, 30, 23, 30, tzinfo=UTC), "v", 1.0)])
        base = {"start_time": "2024-03-29T00:00:00Z", "end_time": "2024-04-02T00:00:00Z"}
        for params in (
            {"interval": "1h", "tz": "Europe/Berlin"},
            {"interval": "1d", "tz": "Mars/Olympus"},
        ):
            response = await client.get(url(m), params={**base, **params}, headers=operator)
            assert response.status_code == 422, response.text
        response = await client.get(
            url(m),
            params={
                **base,
                "interval": "1d",
                "tz": "Europe/Berlin",
                "agg": "count",
                "order": "asc",
            },
            headers=operator,
        )
        body = response.json()
        assert body["source"] == "1h"
        # 23:30 UTC on the 30th is 00:30 on the 31st in Berlin (still CET, +01:00).
        assert body["items"] == [{"timestamp": "2024-03-30T23:00:00Z", "v_count": 1}]
        filled = await client.get(
            url(m),
            params={
                **base,
                "interval": "1d",
                "tz": "Europe/Berlin",
                "agg": "count",
                "order": "asc",
                "fill": "null",
            },
            headers=operator,
        )
        assert [r["timestamp"] for r in filled.json()["items"]] == [
            "2024-03-28T23:00:00Z",
            "2024-03-29T23:00:00Z",
            "2024-03-30T23:00:00Z",
            "2024-03-31T22:00:00Z",
            "2024-04-01T22:00:00Z",
        ]


class TestRetainedSince:
    async def test_answers_say_how_far_back_each_resolution_is_kept(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        resources: Resources,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        m = await committed_machine()
        monkeypatch.setattr(resources.live, "retention_days", 30)
        monkeypatch.setattr(resources.live, "rollup_1m_retention_days", 365)
        before = datetime.now(UTC)
        for params in ({}, {"interval": "1h"}, {"points": "100"}):
            body = (await client.get(url(m), params=params, headers=operator)).json()
            kept = body["retained_since"]
            assert kept["1h"] is None
            raw = datetime.fromisoformat(kept["raw"])
            assert raw.tzinfo is not None
            assert abs(raw - (before - timedelta(days=30))) < timedelta(minutes=1)
            minutes = datetime.fromisoformat(kept["1m"])
            assert abs(minutes - (before - timedelta(days=365))) < timedelta(minutes=1)
