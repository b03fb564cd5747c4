"""`plantpulse bench rollups`: what the rollup marker costs the batch writer.

Two BatchWriters on one throwaway database, one with `rollups.mark_dirty` as its in-transaction
hook and one without, write alternating batches (interleaved, so load from other processes
hits both alike). Each batch holds 5,000 readings of 3,000 series (1,000 machines x 3 metrics,
two timestamps): nearly one marker key per reading, the worst case for the hook.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from plantpulse.bench.harness import create_db, drop_db, dsn


async def _measure(dsn: str, batches: int) -> dict[str, list[float]]:
    from plantpulse.machines.catalog import MachineCatalog
    from plantpulse.telemetry import rollups
    from plantpulse.telemetry.writer import BatchWriter

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None  # noqa: S101
    try:
        machines = [uuid.uuid4() for _ in range(1000)]
        await pool.executemany(
            "INSERT INTO machines (id, name) VALUES ($1, $2)",
            [(m, f"bench-{i:04d}") for i, m in enumerate(machines)],
        )
        plain = BatchWriter(pool, MachineCatalog(pool))
        hooked = BatchWriter(pool, MachineCatalog(pool))
        hooked.in_transaction.append(rollups.mark_dirty)
        moment = datetime(2024, 1, 1, tzinfo=UTC)
        samples: dict[str, list[float]] = {"without marker": [], "with marker": []}
        for i in range(batches + 5):
            pair = [("without marker", plain), ("with marker", hooked)]
            for name, writer in pair if i % 2 else reversed(pair):
                moment += timedelta(seconds=1)
                later = moment + timedelta(milliseconds=500)
                rows = [(moment, m, metric, 1.0) for m in machines for metric in "abc"][:3000]
                rows += [(later, m, metric, 1.0) for m in machines[:1000] for metric in "ab"][:2000]
                started = time.perf_counter()
                await writer.write(rows, source="bench")
                if i >= 5:  # warm-up
                    samples[name].append((time.perf_counter() - started) * 1000)
        return samples
    finally:
        await pool.close()


def run(args: argparse.Namespace) -> int:
    from alembic import command

    from plantpulse.cli import _alembic_config
    from plantpulse.config import database_settings

    base = make_url(database_settings().url)
    name = f"plantpulse_bench_rollups_{secrets.token_hex(4)}"
    url = base.set(database=name).render_as_string(hide_password=False)
    server_dsn = dsn(base.set(database="postgres").render_as_string(hide_password=False))
    asyncio.run(create_db(server_dsn, name))
    try:
        command.upgrade(_alembic_config(url), "head")  # type: ignore[arg-type]
        samples = asyncio.run(_measure(dsn(url), args.batches))
    finally:
        asyncio.run(drop_db(server_dsn, name))
    print("| batch of 5,000 readings (3,000 series) | batches | p50 ms | p95 ms |")
    print("|---|---|---|---|")
    for label, values in samples.items():
        ordered = sorted(values)
        p95 = ordered[round(0.95 * (len(ordered) - 1))]
        print(f"| {label} | {len(values)} | {statistics.median(values):.1f} | {p95:.1f} |")
    base_p50 = statistics.median(samples["without marker"])
    ratio = statistics.median(samples["with marker"]) / base_p50
    print(f"\nwith / without (p50): {ratio:.3f}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rollups", help="cost of the rollup marker per ingest batch (interleaved A/B)"
    )
    parser.add_argument("--batches", type=int, default=100, help="per writer")
    parser.set_defaults(func=run)
