"""`plantpulse bench query`: P3 (one machine, 24 h at 1-minute buckets, avg/min/max) and the
fleet-latest query for 1,000 machines, on a throwaway database of >= 10M readings.

The store is loaded with COPY (the same hypertable, indexes and migrations as production),
then each query is EXPLAINed (ANALYZE, BUFFERS) and timed, through the same functions the
API uses and through the API itself (in-process ASGI, cache off: the database path).
Reference in the same run: the COPY rate of the load and a `SELECT 1` round trip.
The database is dropped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import secrets
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from plantpulse.bench.harness import create_db, drop_db, dsn

BATCH_ROWS = 50_000
MARK_BEGIN = "<!-- bench:query -->"
MARK_END = "<!-- /bench:query -->"


@dataclass
class Timing:
    name: str
    samples_ms: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def line(self) -> str:
        return (
            f"| {self.name} | {len(self.samples_ms)} | {statistics.median(self.samples_ms):.2f} "
            f"| {self.pct(0.99):.2f} | {min(self.samples_ms):.2f} | {max(self.samples_ms):.2f} |"
        )


async def _time(name: str, runs: int, call: Callable[[], Awaitable[Any]]) -> Timing:
    for _ in range(min(10, runs)):
        await call()
    timing = Timing(name)
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        timing.samples_ms.append((time.perf_counter() - started) * 1000)
    return timing


def _rows(
    machines: list[uuid.UUID], metrics: list[str], times: list[datetime]
) -> Iterator[list[tuple[datetime, uuid.UUID, str, float, bool]]]:
    """Readings in arrival order (time by time across the fleet), in COPY-sized batches."""
    rng = random.Random(7)  # noqa: S311 (test data)
    batch: list[tuple[datetime, uuid.UUID, str, float, bool]] = []
    for t in times:
        for machine in machines:
            for metric in metrics:
                batch.append((t, machine, metric, rng.uniform(0, 100), True))
            if len(batch) >= BATCH_ROWS:
                yield batch
                batch = []
    if batch:
        yield batch


async def _load(
    dsn: str, machines: list[uuid.UUID], metrics: list[str], times: list[datetime], workers: int
) -> tuple[int, float]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO machines (id, name, location) VALUES ($1, $2, $3)",
            [(m, f"bench-{i:04d}", f"Hall {i % 5}") for i, m in enumerate(machines)],
        )
        await conn.executemany(
            "INSERT INTO machine_metrics (machine_id, name) VALUES ($1, $2)",
            [(m, name) for m in machines for name in metrics],
        )
    finally:
        await conn.close()
    queue: asyncio.Queue[list[tuple[datetime, uuid.UUID, str, float, bool]] | None]
    queue = asyncio.Queue(maxsize=workers * 2)
    loaded = 0

    async def worker() -> None:
        nonlocal loaded
        conn = await asyncpg.connect(dsn)
        try:
            while (batch := await queue.get()) is not None:
                await conn.copy_records_to_table(
                    "readings",
                    records=batch,
                    columns=("time", "machine_id", "metric", "value", "valid"),
                )
                loaded += len(batch)
        finally:
            await conn.close()

    started = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    total = len(machines) * len(metrics) * len(times)
    next_report = 1_000_000
    for batch in _rows(machines, metrics, times):
        await queue.put(batch)
        if loaded >= next_report:
            rate = loaded / (time.perf_counter() - started)
            print(f"    {loaded:>11,} / {total:,} readings ({rate:,.0f}/s)", flush=True)
            next_report += 1_000_000
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)
    return loaded, time.perf_counter() - started


async def _explain(pool: asyncpg.Pool, sql: str, *args: object) -> str:
    rows = await pool.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
    return "\n".join(r[0] for r in rows)


async def _bench(args: argparse.Namespace, url: str) -> str:
    from plantpulse.telemetry import queries, rollups, service

    pg_dsn = dsn(url)
    rng = random.Random(11)  # noqa: S311
    machines = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(args.machines)]
    metrics = ["pressure", "speed", "temperature"][: args.metrics]
    end = datetime.now(UTC).replace(microsecond=0)
    step = timedelta(seconds=args.every)
    times = [end - step * i for i in range(args.timestamps, 0, -1)]
    total = len(machines) * len(metrics) * len(times)
    print(f"==> loading {total:,} readings with COPY ({args.workers} connections)", flush=True)
    loaded, seconds = await _load(pg_dsn, machines, metrics, times, args.workers)
    copy_rate = loaded / seconds
    print(f"    {loaded:,} readings in {seconds:.1f} s ({copy_rate:,.0f} readings/s)")

    pool = await asyncpg.create_pool(pg_dsn, min_size=2, max_size=4)
    assert pool is not None  # noqa: S101
    try:
        await pool.execute("VACUUM ANALYZE readings")
        stored = await pool.fetchval("SELECT count(*) FROM readings")
        chunks = await pool.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'readings'"
        )
        size = await pool.fetchval("SELECT pg_size_pretty(hypertable_size('readings'))")
        timescale = bool(chunks is not None)
        print(f"    stored {stored:,} readings in {chunks} chunks ({size})")
        # COPY above bypassed the writer (and its rollup markers): roll up everything once.
        started = time.perf_counter()
        await rollups.rebuild(pool)
        args.rollup_seconds = time.perf_counter() - started
        await pool.execute("VACUUM ANALYZE readings_1m")
        await pool.execute("VACUUM ANALYZE readings_1h")
        args.rollup_sizes = {
            table: (
                await pool.fetchval(f"SELECT pg_size_pretty(pg_total_relation_size('{table}'))"),
                await pool.fetchval(f"SELECT count(*) FROM {table}"),  # noqa: S608
            )
            for table in ("readings_1m", "readings_1h")
        }
        print(f"    rolled up in {args.rollup_seconds:.1f} s: {args.rollup_sizes}")

        window_end = end + timedelta(seconds=1)
        window_start = window_end - timedelta(hours=24)
        aggregates = ["avg", "min", "max"]
        bucket_sql = queries.bucket_sql(
            aggregates=aggregates, include_invalid=False, timescale=timescale
        )
        latest_sql = queries.LATEST_SQL.format(valid="AND valid")
        one = machines[len(machines) // 2]

        plans = {
            "bucketed (1 machine, 24 h, 1-minute buckets, avg/min/max)": await _explain(
                pool, bucket_sql, one, metrics, window_start, window_end, timedelta(minutes=1)
            ),
            f"fleet latest ({len(machines)} machines x {len(metrics)} metrics)": await _explain(
                pool, latest_sql, machines
            ),
            # The oldest hour of the store: the planner keeps only the chunk holding it.
            "bucketed, 1 h at the start of the store (chunk exclusion)": await _explain(
                pool,
                bucket_sql,
                one,
                metrics,
                times[0],
                times[0] + timedelta(hours=1),
                timedelta(minutes=1),
            ),
        }

        async def bucketed() -> None:
            rows = await queries.buckets(
                pool,
                machine_id=rng.choice(machines),
                metrics=metrics,
                start=window_start,
                end=window_end,
                interval=timedelta(minutes=1),
                aggregates=aggregates,
                include_invalid=False,
                timescale=timescale,
            )
            assert len(rows) >= 1440 * len(metrics) - len(metrics)  # noqa: S101

        now = datetime.now(UTC)
        store_start = times[0]

        async def from_rollups(width: timedelta, start: datetime, source: str) -> None:
            plan = rollups.plan(start, window_end, width=width, now=now)
            assert plan.source == source, plan  # noqa: S101
            await queries.rollup_buckets(
                pool,
                machine_id=rng.choice(machines),
                metrics=metrics,
                plan=plan,
                interval=width,
                aggregates=aggregates,
                include_invalid=False,
            )

        async def p3_rollup() -> None:
            await from_rollups(timedelta(minutes=1), window_start, "1m")

        async def hourly_rollup() -> None:
            await from_rollups(timedelta(hours=1), store_start, "1h")

        async def hourly_raw() -> None:
            await queries.buckets(
                pool,
                machine_id=rng.choice(machines),
                metrics=metrics,
                start=store_start,
                end=window_end,
                interval=timedelta(hours=1),
                aggregates=aggregates,
                include_invalid=False,
                timescale=timescale,
            )

        async def chart(source: str) -> None:
            window = service.TimeRange(store_start, window_end)
            plan = service.chart_plan(window, 1000, now=now)
            if source == "raw":
                plan = service.ChartPlan(
                    plan.width,
                    plan.origin,
                    rollups.Plan("raw", window.start, window.end, window.end, window.end),
                )
            assert plan.plan.source == source, plan  # noqa: S101
            await queries.m4(
                pool,
                machine_id=rng.choice(machines),
                metrics=metrics[:1],
                plan=plan.plan,
                width=plan.width,
                origin=plan.origin,
                include_invalid=False,
            )

        async def chart_rollup() -> None:
            await chart("1m")

        async def chart_raw() -> None:
            await chart("raw")

        async def fleet() -> None:
            rows = await queries.latest(pool, machine_ids=machines, include_invalid=False)
            assert len(rows) == len(machines) * len(metrics)  # noqa: S101

        async def ping() -> None:
            await pool.fetchval("SELECT 1")

        # As the service does after start-up (plantpulse.app.tune_gc).
        from plantpulse.app import tune_gc

        tune_gc()
        print(f"==> timing ({args.runs} runs each)", flush=True)
        load_before = os.getloadavg()[0]
        timings = [
            await _time("reference: `SELECT 1` round trip", args.runs, ping),
            await _time("P3 bucketed query (SQL, random machine)", args.runs, bucketed),
            await _time("P3 from the 1-minute rollup (SQL)", args.runs, p3_rollup),
            await _time("whole store at 1 h, 3 metrics, from raw (SQL)", args.runs, hourly_raw),
            await _time("whole store at 1 h, 3 metrics, 1-hour rollup", args.runs, hourly_rollup),
            await _time("whole store, points=1000, 1 metric, M4 from raw", args.runs, chart_raw),
            await _time("whole store, points=1000, 1 metric, M4 rollups", args.runs, chart_rollup),
            await _time("fleet latest (SQL)", args.runs, fleet),
        ]
        timings += await _api_timings(args, url, machines, window_start, window_end)
        # Other work on the machine shows in the tails; say how busy it was.
        args.load = (load_before, os.getloadavg()[0])
    finally:
        await pool.close()

    return _report(args, stored, chunks, size, copy_rate, timings, plans)


async def _api_timings(
    args: argparse.Namespace,
    url: str,
    machines: list[uuid.UUID],
    start: datetime,
    end: datetime,
) -> list[Timing]:
    """The same queries through the HTTP API in-process: auth, FastAPI, JSON (cache off)."""
    from httpx import ASGITransport, AsyncClient

    from plantpulse.app import create_app, lifespan_resources
    from plantpulse.auth import service as auth
    from plantpulse.auth.permissions import Role
    from plantpulse.auth.schemas import UserCreate
    from plantpulse.config import AuthSettings, DatabaseSettings, MqttSettings, RedisSettings
    from plantpulse.config import Settings as AppSettings

    settings = AppSettings(
        _env_file=None,
        env="test",
        database=DatabaseSettings(url=url),
        redis=RedisSettings(url=None),
        auth=AuthSettings(jwt_secret=SecretStr(secrets.token_urlsafe(32))),
        mqtt=MqttSettings(enabled=False),
    )
    app = create_app(settings)
    rng = random.Random(5)  # noqa: S311
    async with lifespan_resources(settings) as resources:

        async def with_resources(scope: Any, receive: Any, send: Any) -> None:
            # What the lifespan hands every request, without a lifespan round (no server).
            scope["state"] = {"resources": resources}
            await app(scope, receive, send)

        async with resources.sessionmaker() as session, session.begin():
            user = await auth.create_user(
                session,
                data=UserCreate(
                    username="bench", email="bench@example.com", password=secrets.token_hex(12)
                ),
                role=Role.operator,
            )
        token = auth.issue_tokens(settings.auth, user=user).access_token
        headers = {"Authorization": f"Bearer {token}"}
        transport = ASGITransport(app=with_resources)
        params = {
            "start_time": start.isoformat(),
            "end_time": end.isoformat(),
            "interval": "1m",
            "agg": "avg,min,max",
        }
        async with AsyncClient(transport=transport, base_url="http://bench") as client:

            async def bucketed() -> None:
                machine = rng.choice(machines)
                response = await client.get(
                    f"/api/v1/machines/{machine}/telemetry", params=params, headers=headers
                )
                assert response.status_code == 200, response.text  # noqa: S101

            async def fleet() -> None:
                response = await client.get("/api/v1/telemetry/latest", headers=headers)
                assert response.status_code == 200  # noqa: S101
                assert len(response.json()["items"]) == len(machines)  # noqa: S101

            async def one_latest() -> None:
                machine = rng.choice(machines)
                response = await client.get(
                    f"/api/v1/machines/{machine}/telemetry/latest", headers=headers
                )
                assert response.status_code == 200  # noqa: S101

            return [
                await _time("P3 via the API (in-process, 1-minute rollup)", args.runs, bucketed),
                await _time("latest of 1 machine via the API", args.runs, one_latest),
                await _time("fleet latest via the API", max(20, args.runs // 4), fleet),
            ]


def _report(
    args: argparse.Namespace,
    stored: int,
    chunks: int | None,
    size: str,
    copy_rate: float,
    timings: list[Timing],
    plans: dict[str, str],
) -> str:
    versions = f"Python {platform.python_version()}, {os.cpu_count()} cores"
    lines = [
        MARK_BEGIN,
        "### P3 — time-series queries over a store of "
        f"{stored / 1e6:.1f}M readings (`plantpulse bench query`)",
        "",
        f"Command: `plantpulse bench query --machines {args.machines} --timestamps "
        f"{args.timestamps} --every {args.every} --runs {args.runs}` "
        f"({datetime.now(UTC):%Y-%m-%d}, {versions}, {args.server_version}).",
        "",
        f"Store: {stored:,} readings ({args.machines} machines x {args.metrics} metrics x "
        f"{args.timestamps} timestamps {args.every} s apart), {chunks} chunks, {size}; loaded "
        f"with COPY at {copy_rate:,.0f} readings/s ({args.workers} connections, same run).",
        "",
        "Rollups (built from the loaded readings by `rollups.rebuild` in "
        f"{args.rollup_seconds:.1f} s): "
        + ", ".join(f"`{t}` {rows:,} rows, {size}" for t, (size, rows) in args.rollup_sizes.items())
        + ".",
        "",
        "| query | runs | p50 ms | p99 ms | min ms | max ms |",
        "|---|---|---|---|---|---|",
        *[t.line() for t in timings],
        "",
        f"1-minute load average when timing started / ended: {args.load[0]:.2f} / "
        f"{args.load[1]:.2f} (2 cores shared with other work: compare with the `SELECT 1` "
        "reference of the same run).",
        "",
        "Target P3: p99 <= 20 ms. Plans: docs/queries.md.",
        MARK_END,
    ]
    report = "\n".join(lines)
    if args.plans:
        out = [f"## {name}\n\n```\n{plan}\n```\n" for name, plan in plans.items()]
        Path(args.plans).write_text("\n".join(out))
        print(f"    plans written to {args.plans}")
    return report


async def _server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        pg = await conn.fetchval("SHOW server_version")
        ts = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        )
    finally:
        await conn.close()
    return f"PostgreSQL {pg}, TimescaleDB {ts or 'not installed'}"


def _write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if MARK_BEGIN in text and MARK_END in text:
        before, rest = text.split(MARK_BEGIN, 1)
        after = rest.split(MARK_END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def run(args: argparse.Namespace) -> int:
    from alembic import command

    from plantpulse.cli import _alembic_config
    from plantpulse.config import database_settings

    base = make_url(database_settings().url)
    name = f"plantpulse_bench_query_{secrets.token_hex(4)}"
    url = base.set(database=name).render_as_string(hide_password=False)
    server_dsn = dsn(base.set(database="postgres").render_as_string(hide_password=False))
    print(f"==> throwaway database {name}")
    asyncio.run(create_db(server_dsn, name))
    try:
        command.upgrade(_alembic_config(url), "head")  # type: ignore[arg-type]
        args.server_version = asyncio.run(_server_version(dsn(url)))
        report = asyncio.run(_bench(args, url))
    finally:
        if args.keep:
            print(f"==> kept database {name}")
        else:
            asyncio.run(drop_db(server_dsn, name))
            print(f"==> dropped database {name}")
    print(report)
    if args.write:
        _write_section(Path(args.write), report)
        print(f"==> wrote {args.write}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "query", help="P3: bucketed and fleet-latest queries over >= 10M readings"
    )
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=3, choices=[1, 2, 3])
    parser.add_argument("--timestamps", type=int, default=3456, help="per machine")
    parser.add_argument("--every", type=int, default=30, help="seconds between timestamps")
    parser.add_argument("--workers", type=int, default=2, help="COPY connections")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--write", metavar="FILE", help="update the section in this markdown")
    parser.add_argument("--plans", metavar="FILE", help="write the EXPLAIN output here")
    parser.set_defaults(func=run)
