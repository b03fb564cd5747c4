"""Re-sent readings that meet compressed chunks: the new readings of the batch are stored,
the old ones counted as duplicates, over the writer, HTTP and MQTT (issue 8, B1)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from httpx import AsyncClient

from plantpulse.machines.catalog import MachineCatalog
from plantpulse.telemetry.writer import BatchWriter
from tests import support
from tests.community.conftest import METRICS, Fleet, is_compressed
from tests.ingest.conftest import (
    eventually,
    ingest_of,
    mosquitto_pub,
    mqtt_settings,
    running,
    subscribed,
)

INGEST = "/api/v1/telemetry/ingest"


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def old_and_new(fleet: Fleet) -> tuple[datetime, datetime, dict[str, Any]]:
    """A gateway batch re-sending one stored reading per series (compressed) plus a new one."""
    old = fleet.day + timedelta(minutes=100)
    new = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    body = {
        "gateway_id": "gw-compressed",
        "batch": [
            {
                "machine_id": str(m),
                "readings": [
                    {"timestamp": _iso(t), **dict.fromkeys(METRICS, 1.5)} for t in (old, new)
                ],
            }
            for m in fleet.machines
        ],
    }
    return old, new, body


async def count_at(pool: asyncpg.Pool, machines: list[uuid.UUID], moment: datetime) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM readings WHERE machine_id = ANY($1::uuid[]) AND time = $2",
        machines,
        moment,
    )
    return count


class TestWriterOverCompressedChunks:
    async def test_resent_batch_stores_its_new_readings(
        self, pg_pool: asyncpg.Pool, compressed_fleet: Fleet
    ) -> None:
        fleet = compressed_fleet
        assert await is_compressed(pg_pool, fleet.day)
        old = fleet.day + timedelta(minutes=100)
        # New readings both in the compressed day (a backfilled gap) and now. The re-sent
        # ones first, as a gateway replays its buffer: the COPY meets 597 compressed series
        # before any unique violation.
        gap = old + timedelta(seconds=30)
        now = datetime.now(UTC)
        rows = [
            (moment, m, metric, 2.5)
            for moment in (old, gap, now)
            for m in fleet.machines
            for metric in METRICS
        ]
        catalog = MachineCatalog(pg_pool)
        await catalog.known(fleet.machines)
        writer = BatchWriter(pg_pool, catalog)
        result = await writer.write(rows, source="test")
        series = len(fleet.machines) * len(METRICS)
        assert (result.received, result.inserted, result.duplicates) == (
            3 * series,
            2 * series,
            series,
        )
        assert writer.staged_batches == 1
        for moment in (gap, now):
            assert await count_at(pg_pool, fleet.machines, moment) == series
        # The old readings kept their values: a re-send never overwrites.
        kept = await pg_pool.fetchval(
            "SELECT count(*) FROM readings WHERE machine_id = ANY($1::uuid[]) AND time = $2 "
            "AND value = 100",
            fleet.machines,
            old,
        )
        assert kept == series

    async def test_the_staged_path_decompresses_nothing(
        self, database_url: str, pg_pool: asyncpg.Pool, compressed_fleet: Fleet
    ) -> None:
        """What the writer relies on (TimescaleDB 2.19): `ON CONFLICT DO NOTHING` checks
        compressed rows without decompressing them, so it needs no raised limit."""
        fleet = compressed_fleet
        machines = fleet.machines[:5]
        old = fleet.day + timedelta(minutes=7)
        rows = [
            (moment, m, metric, 2.5)
            for moment in (old, old + timedelta(seconds=1))
            for m in machines
            for metric in METRICS
        ]
        strict = await asyncpg.create_pool(
            support.dsn(database_url),
            min_size=1,
            max_size=1,
            server_settings={"timescaledb.max_tuples_decompressed_per_dml_transaction": "1"},
        )
        try:
            catalog = MachineCatalog(strict)
            await catalog.known(machines)
            writer = BatchWriter(strict, catalog)
            result = await writer.write(rows, source="test")
        finally:
            await strict.close()
        assert (result.inserted, result.duplicates) == (15, 15)
        assert writer.staged_batches == 1
        assert await is_compressed(pg_pool, fleet.day)


class TestHttpOverCompressedChunks:
    async def test_resent_gateway_batch_is_stored_not_503(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        pg_pool: asyncpg.Pool,
        compressed_fleet: Fleet,
    ) -> None:
        old, new, body = old_and_new(compressed_fleet)
        series = len(compressed_fleet.machines) * len(METRICS)
        response = await client.post(INGEST, json=body, headers=supervisor)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["accepted"], answer["stored"], answer["duplicates"]) == (
            2 * series,
            series,
            series,
        )
        assert await count_at(pg_pool, compressed_fleet.machines, new) == series
        assert await count_at(pg_pool, compressed_fleet.machines, old) == series


class TestMqttOverCompressedChunks:
    async def test_gateway_message_stores_new_readings_without_dead_letter(
        self,
        database_url: str,
        broker: support.Broker,
        pg_pool: asyncpg.Pool,
        compressed_fleet: Fleet,
    ) -> None:
        _, new, body = old_and_new(compressed_fleet)
        series = len(compressed_fleet.machines) * len(METRICS)
        settings = mqtt_settings(database_url, broker)
        prefix = settings.mqtt.topic_prefix
        try:
            async with running(settings) as resources:
                await subscribed(resources)
                ingest = ingest_of(resources)
                await mosquitto_pub(broker, f"{prefix}/gateways/gw-1/batch", [json.dumps(body)])

                async def handled() -> bool:
                    counters = ingest.state.counters
                    return counters.accepted + counters.rejected >= 1

                # Before the fix: three failed attempts, then the message was dead-lettered.
                await eventually(handled, within=60)
                counters = ingest.state.counters
                assert (counters.accepted, counters.rejected) == (1, 0)
                assert (counters.readings_stored, counters.duplicates) == (series, series)
            assert await count_at(pg_pool, compressed_fleet.machines, new) == series
            letters = await pg_pool.fetch(
                "SELECT reason FROM dead_letters WHERE topic LIKE $1", f"{prefix}/%"
            )
            assert [r["reason"] for r in letters] == []
        finally:
            await pg_pool.execute("DELETE FROM dead_letters WHERE topic LIKE $1", f"{prefix}/%")
