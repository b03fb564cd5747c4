"""Microbenchmark of what the delivery log (ingest/redelivery.py) adds to MQTT ingest.

Usage: .venv/bin/python scripts/bench_redelivery.py [--database-url URL] [--runs 7]

1. Event loop: CPU time of the message callback (`Pipeline.on_publish`: decode, validate,
   queue) for P1-shaped QoS 1 messages (3 metrics), with and without a device timestamp, and
   of the acknowledgement bookkeeping per batch. Run it with PYTHONPATH pointing at another
   checkout to compare (the script only uses names that existed before the delivery log).
2. Database: wall time of one batch's record row (its packet ids and digests; written in the
   batch's transaction) and of its retirement (delete), for the messages of a 5,000-reading
   batch, next to the batch's own COPY of its readings into the hypertable, on a scratch
   database (each in its own transaction here).
Medians of `--runs`, each over many messages/batches; the machine's load moves absolute
figures, so compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import types
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from plantpulse.config import MqttSettings, Settings
from plantpulse.ingest.decoders import json_registry
from plantpulse.ingest.paho_bridge import Publish
from plantpulse.ingest.pipeline import Pipeline

MESSAGES = 20_000
BATCH_MESSAGES = 1_667  # a 5,000-reading batch of P1 messages (3 metrics each)


def _pipeline() -> Pipeline:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, env="development", mqtt=MqttSettings(client_id="bench")
    )
    resources: Any = types.SimpleNamespace(
        settings=settings, live=types.SimpleNamespace(future_skew_seconds=300.0)
    )
    pipeline = Pipeline(resources, json_registry("bench"))
    pipeline.generation = 1
    return pipeline


def callback_seconds(timestamps: bool) -> float:
    """CPU seconds per message of the message callback."""
    machine = uuid.uuid4()
    topic = f"bench/machines/{machine}/telemetry".encode()
    payloads = [
        json.dumps(
            {
                **({"timestamp": 1767607200000 + i} if timestamps else {}),
                "temperature": 60 + i % 100 / 10,
                "pressure": 3 + i % 7 / 100,
                "speed": 1500 + i % 50,
            }
        ).encode()
        for i in range(MESSAGES)
    ]
    pipeline = _pipeline()
    messages = [Publish(i % 65_535 + 1, 1, False, topic, p) for i, p in enumerate(payloads)]
    started = time.process_time()
    for start in range(0, MESSAGES, BATCH_MESSAGES):
        for message in messages[start : start + BATCH_MESSAGES]:
            pipeline.on_publish(message)
        # What the writer does with a batch around its commit, minus the I/O.
        batch = list(pipeline._queue)
        pipeline._queue.clear()
        pipeline._queued_readings = 0
        changes = getattr(pipeline, "delivery_changes", None)
        if changes is not None:
            changes(batch)
        pipeline.link = types.SimpleNamespace(ack=lambda mid, qos: None)  # type: ignore[assignment]
        pipeline._acknowledge(batch)
        pipeline.link = None
        deliveries = getattr(pipeline, "deliveries", None)
        if deliveries is not None:
            deliveries.confirmed(deliveries.take_acknowledged())
            deliveries.take_retired()
    return (time.process_time() - started) / MESSAGES


async def database_seconds(url: str, runs: int) -> dict[str, float]:
    from plantpulse.ingest import redelivery

    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    name = f"plantpulse_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(make_url(dsn).set(database="postgres").render_as_string(False))
    await admin.execute(f'CREATE DATABASE "{name}"')
    target = make_url(url).set(database=name).render_as_string(hide_password=False)
    try:
        from alembic import command

        from plantpulse.cli import _alembic_config

        await asyncio.to_thread(command.upgrade, _alembic_config(target), "head")  # type: ignore[arg-type]
        conn = await asyncpg.connect(target.replace("postgresql+asyncpg://", "postgresql://", 1))
        machine = uuid.uuid4()
        await conn.execute("INSERT INTO machines (id, name) VALUES ($1, 'bench')", machine)
        times: dict[str, list[float]] = {"copy": [], "record": [], "retire": []}
        base = datetime.now(UTC)
        packet_id = 0
        for run in range(runs * 10):
            rows = [
                (base + timedelta(microseconds=run * 10_000 + i), machine, metric, 1.0, True)
                for i in range(BATCH_MESSAGES)
                for metric in ("temperature", "pressure", "speed")
            ]
            changes = redelivery.Changes(run + 1)
            for i in range(BATCH_MESSAGES):
                packet_id = packet_id % 65_535 + 1
                content = redelivery.digest(b"bench/topic", str(run * 10_000 + i).encode())
                changes.entries.append(redelivery.Entry(packet_id, content, 1))
            started = time.perf_counter()
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "readings",
                    records=rows,
                    columns=("time", "machine_id", "metric", "value", "valid"),
                )
            times["copy"].append(time.perf_counter() - started)
            started = time.perf_counter()
            async with conn.transaction():
                await redelivery.persist(conn, "bench", changes)
            times["record"].append(time.perf_counter() - started)
            started = time.perf_counter()
            async with conn.transaction():
                await redelivery.persist(conn, "bench", redelivery.Changes(0, retired=[run + 1]))
            times["retire"].append(time.perf_counter() - started)
        await conn.close()
        return {key: statistics.median(values) for key, values in times.items()}
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--database-url", help="PostgreSQL (asyncpg URL); omit to skip part 2")
    args = parser.parse_args()
    for timestamps in (True, False):
        samples = [callback_seconds(timestamps) for _ in range(args.runs)]
        print(
            f"callback per message, {'device' if timestamps else 'receive'} time: "
            f"median {statistics.median(samples) * 1e6:.2f} us "
            f"(min {min(samples) * 1e6:.2f}, max {max(samples) * 1e6:.2f}, {args.runs} runs of "
            f"{MESSAGES:,})"
        )
    if args.database_url:
        result = asyncio.run(database_seconds(args.database_url, args.runs))
        print(
            f"per batch of {BATCH_MESSAGES:,} messages ({BATCH_MESSAGES * 3:,} readings), "
            f"medians: COPY of the readings {result['copy'] * 1e3:.1f} ms; record row "
            f"{result['record'] * 1e3:.1f} ms; its retirement {result['retire'] * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
