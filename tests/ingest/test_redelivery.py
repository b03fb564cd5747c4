"""QoS 1 redeliveries after a crash, with and without device timestamps (issue 8, item 4).

A reading without a device timestamp takes the time it was received, so the unique key cannot
recognise its redelivery: only the record of committed packet ids can (ingest/redelivery.py).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest

from plantpulse.ingest.decoders import json_registry
from plantpulse.ingest.messages import Pending
from plantpulse.ingest.paho_bridge import Publish
from plantpulse.ingest.pipeline import Pipeline
from plantpulse.ingest.redelivery import DeliveryLog
from plantpulse.state import Resources
from tests import support
from tests.conftest import MachineFactory
from tests.ingest.conftest import (
    add_machine,
    count_readings,
    dsn,
    eventually,
    ingest_of,
    mosquitto_pub,
    mqtt_settings,
    running,
    subscribed,
)
from tests.ingest.test_failures import Service

T0_MS = 1767607200000
# Packet ids are 1..65,535; Mosquitto hands them out in sequence per session.
PACKET_IDS = 65_535


def _lines(count: int, *, timestamps: bool) -> list[str]:
    """One message per line. With timestamps `speed` numbers the messages; without, it
    repeats every 65,535 messages (with the broker's packet ids, see the kill test)."""
    if timestamps:
        return [
            json.dumps({"timestamp": T0_MS + i, "temperature": i % 90, "speed": i})
            for i in range(count)
        ]
    return [
        json.dumps({"temperature": i % PACKET_IDS % 90, "speed": i % PACKET_IDS})
        for i in range(count)
    ]


async def _settled(pool: asyncpg.Pool, machine: uuid.UUID, expected: int) -> None:
    """Until the expected rows are in, or nothing has changed for 5 s (then the assertions
    say what is missing); then 1 s more, for a late redelivery to show up as extra rows."""
    last, since = -1, time.monotonic()
    while time.monotonic() - since < 5:
        rows = await count_readings(pool, [machine])
        if rows >= expected:
            break
        if rows != last:
            last, since = rows, time.monotonic()
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)


async def _publish(broker: support.Broker, topic: str, lines: list[str]) -> None:
    """In runs of 5,000: a `mosquitto_pub -l` (2.0.11) fed tens of thousands of QoS 1 lines
    at once disconnects before the broker has acknowledged them all (the broker logs "out of
    memory"), and still exits 0: the rest never reaches the broker."""
    for start in range(0, len(lines), 5_000):
        await mosquitto_pub(broker, topic, lines[start : start + 5_000])


def _expected_speeds(count: int, *, timestamps: bool) -> dict[float, int]:
    expected: dict[float, int] = {}
    for i in range(count):
        value = float(i if timestamps else i % PACKET_IDS)
        expected[value] = expected.get(value, 0) + 1
    return expected


class TestKillNineRedelivery:
    @pytest.mark.parametrize(
        ("timestamps", "messages"),
        [(True, 20_000), (False, PACKET_IDS + 15_000)],
        ids=["device-time", "receive-time"],
    )
    async def test_every_message_is_stored_exactly_once_after_kill_9(
        self,
        own_database: str,
        broker: support.Broker,
        tmp_path: Path,
        timestamps: bool,
        messages: int,
    ) -> None:
        """Without device timestamps the content repeats every 65,535 messages, and the
        service is killed after the broker's packet ids have wrapped around: message i and
        message i + 65,535 have the same id *and* the same content (a device repeating a
        reading), so a record kept past its PUBACK would swallow the second one's
        redelivery."""
        machine = await add_machine(own_database)
        service = Service(own_database, broker, tmp_path / "service.log")
        pool = await asyncpg.create_pool(dsn(own_database), min_size=1, max_size=2)
        kill_at = messages // 2 if timestamps else PACKET_IDS + 3_000
        try:
            await service.start()
            topic = f"{service.prefix}/machines/{machine}/telemetry"
            publisher = asyncio.create_task(
                _publish(broker, topic, _lines(messages, timestamps=timestamps))
            )

            async def under_way() -> bool:
                return await count_readings(pool, [machine]) >= 2 * kill_at

            # Polled gently: count(*) on the growing table competes with the service.
            await eventually(under_way, within=120, every=0.1)
            await service.kill(signal.SIGKILL)
            at_kill = await count_readings(pool, [machine]) // 2
            await publisher
            assert at_kill < messages, "the service was not killed mid-stream"

            await service.start()

            await _settled(pool, machine, 2 * messages)
            counts = await pool.fetch(
                "SELECT value, count(*) AS n FROM readings "
                "WHERE machine_id = $1 AND metric = 'speed' GROUP BY value",
                machine,
            )
            stored = sum(r["n"] for r in counts)
            expected = _expected_speeds(messages, timestamps=timestamps)
            found = {r["value"]: r["n"] for r in counts}
            extra = sum(max(0, n - expected.get(v, 0)) for v, n in found.items())
            lost = sum(max(0, n - found.get(v, 0)) for v, n in expected.items())
            print(
                f"published {messages}, stored at kill {at_kill}, stored {stored}, "
                f"duplicates {extra}, lost {lost}"
            )
            assert (stored, extra, lost) == (messages, 0, 0)
            temperatures = await pool.fetchval(
                "SELECT count(*) FROM readings WHERE machine_id = $1 AND metric = 'temperature'",
                machine,
            )
            assert temperatures == messages
            assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
        finally:
            if service.process is not None and service.process.returncode is None:
                await service.kill()
            await pool.close()


class TestConnectionLost:
    async def test_redeliveries_of_messages_still_being_written_are_not_stored_twice(
        self,
        database_url: str,
        broker: support.Broker,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        settings = mqtt_settings(database_url, broker, ingest={"batch_max_readings": 1})
        topic = f"{settings.mqtt.topic_prefix}/machines/{machine}/telemetry"
        async with running(settings) as resources:
            await subscribed(resources)
            ingest = ingest_of(resources)
            pipeline = ingest.pipeline
            release = asyncio.Event()

            async def held(batch: list[Pending]) -> None:
                await release.wait()

            pipeline.before_write = held
            await mosquitto_pub(broker, topic, _lines(5, timestamps=False))

            async def all_received() -> bool:
                return ingest.state.counters.received == 5

            await eventually(all_received)
            # The network goes away while the batches are being written: nothing was
            # acknowledged, so the broker sends all five again (DUP) on the next connection.
            link = pipeline.link
            assert link is not None
            cast(Any, link.paho.socket()).shutdown(socket.SHUT_RDWR)

            async def redelivered() -> bool:
                return ingest.state.counters.received == 10 and ingest.state.connected

            await eventually(redelivered)
            release.set()

            async def acknowledged() -> bool:
                return ingest.state.counters.acknowledged == 5

            await eventually(acknowledged)
            rows = await pg_pool.fetch(
                "SELECT value FROM readings WHERE machine_id = $1 AND metric = 'speed' "
                "ORDER BY value",
                machine,
            )
            assert [r["value"] for r in rows] == [0, 1, 2, 3, 4]
            assert ingest.state.counters.redelivered == 5


Pipelines = Callable[..., Awaitable[Pipeline]]


@pytest.fixture
async def pipelines(resources: Resources, pg_pool: asyncpg.Pool) -> AsyncIterator[Pipelines]:
    """Pipelines fed PUBLISH packets directly (no broker: nothing is acknowledged), writing to
    the test database; `await pipelines(client_id)` starts one with that client's records, as
    a process starting with that client id would."""
    started: list[tuple[Pipeline, asyncio.Task[None]]] = []
    clients: set[str] = set()

    async def start(client_id: str) -> Pipeline:
        pipeline = Pipeline(resources, json_registry(PREFIX))
        pipeline.generation = 1  # connected
        pipeline.deliveries = DeliveryLog(client_id, keep_seconds=0)
        await pipeline.deliveries.load(resources.pg)
        started.append((pipeline, asyncio.create_task(pipeline.write_loop())))
        clients.add(client_id)
        return pipeline

    yield start
    for pipeline, task in started:
        pipeline.stop_taking()
        await task
    await pg_pool.execute("DELETE FROM mqtt_deliveries WHERE client_id = ANY($1)", list(clients))


PREFIX = "pptest/deliveries"


def _receive(
    pipeline: Pipeline, packet_id: int, topic: str, payload: str, *, dup: bool = False
) -> None:
    """One QoS 1 PUBLISH as the broker would send it."""
    pipeline.on_publish(Publish(packet_id, 1, dup, f"{PREFIX}/{topic}".encode(), payload.encode()))


async def _deliver(
    pipeline: Pipeline, packet_id: int, topic: str, payload: str, *, dup: bool = False
) -> None:
    """One QoS 1 PUBLISH as the broker would send it; returns once it is committed."""
    _receive(pipeline, packet_id, topic, payload, dup=dup)

    async def committed() -> bool:
        return pipeline.waiting == 0

    await eventually(committed)


async def _records(pg_pool: asyncpg.Pool, client_id: str) -> dict[int, bytes]:
    """packet id -> digest, as a restarted process would read them (later rows win)."""
    rows = await pg_pool.fetch(
        "SELECT packet_ids, digests FROM mqtt_deliveries WHERE client_id = $1 ORDER BY batch",
        client_id,
    )
    records: dict[int, bytes] = {}
    for row in rows:
        for i, packet_id in enumerate(row["packet_ids"]):
            records[packet_id] = bytes(row["digests"][i * 16 : (i + 1) * 16])
    return records


async def _speeds(pg_pool: asyncpg.Pool, machine: uuid.UUID) -> list[float]:
    rows = await pg_pool.fetch(
        "SELECT value FROM readings WHERE machine_id = $1 AND metric = 'speed' ORDER BY time",
        machine,
    )
    return [r["value"] for r in rows]


def _client() -> str:
    return f"pptest-{uuid.uuid4().hex[:12]}"


class TestDeliveryLog:
    """What a DUP delivery is checked against, and why a reused packet id is never taken for
    a copy of another message."""

    async def test_a_dup_copy_of_a_committed_message_is_acknowledged_not_stored(
        self,
        pipelines: Pipelines,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        client = _client()
        pipeline = await pipelines(client)
        topic = f"machines/{machine}/telemetry"
        await _deliver(pipeline, 7, topic, '{"speed": 1}')
        await _deliver(pipeline, 7, topic, '{"speed": 1}', dup=True)
        assert await _speeds(pg_pool, machine) == [1]
        assert pipeline.state.counters.redelivered == 1
        assert pipeline.state.counters.accepted == 1
        assert list(await _records(pg_pool, client)) == [7]

    async def test_the_record_survives_a_restart_of_the_process(
        self,
        pipelines: Pipelines,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        client = _client()
        topic = f"machines/{machine}/telemetry"
        await _deliver(await pipelines(client), 7, topic, '{"speed": 1}')
        restarted = await pipelines(client)
        await _deliver(restarted, 7, topic, '{"speed": 1}', dup=True)
        # A DUP the first process never received: stored.
        await _deliver(restarted, 8, topic, '{"speed": 2}', dup=True)
        assert await _speeds(pg_pool, machine) == [1, 2]
        assert restarted.state.counters.redelivered == 1

    async def test_another_message_under_a_recorded_packet_id_is_stored(
        self,
        pipelines: Pipelines,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        client = _client()
        topic = f"machines/{machine}/telemetry"
        await _deliver(await pipelines(client), 7, topic, '{"speed": 1}')
        pipeline = await pipelines(client)
        # The broker reused id 7 (it had our PUBACK): a DUP with other content is another
        # message, and so is a first delivery with the same content.
        await _deliver(pipeline, 7, topic, '{"speed": 2}', dup=True)
        await _deliver(pipeline, 7, topic, '{"speed": 2}')
        assert await _speeds(pg_pool, machine) == [1, 2, 2]
        assert pipeline.state.counters.redelivered == 0
        # ...and the record follows the latest message under the id.
        restarted = await pipelines(client)
        await _deliver(restarted, 7, topic, '{"speed": 2}', dup=True)
        await _deliver(restarted, 7, topic, '{"speed": 1}', dup=True)
        assert await _speeds(pg_pool, machine) == [1, 2, 2, 1]
        assert restarted.state.counters.redelivered == 1

    async def test_messages_with_device_timestamps_are_not_recorded_and_retire_stale_records(
        self,
        pipelines: Pipelines,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        client = _client()
        topic = f"machines/{machine}/telemetry"
        pipeline = await pipelines(client)
        await _deliver(pipeline, 7, topic, '{"speed": 1}')
        await _deliver(pipeline, 8, topic, '{"timestamp": 1767607200, "speed": 2}')
        assert list(await _records(pg_pool, client)) == [7]
        # Id 7 reused for a message the unique key protects: the old record goes.
        await _deliver(pipeline, 7, topic, '{"timestamp": 1767607201, "speed": 3}')
        assert await _records(pg_pool, client) == {}
        restarted = await pipelines(client)
        await _deliver(restarted, 7, topic, '{"speed": 1}', dup=True)
        await _deliver(restarted, 8, topic, '{"timestamp": 1767607200, "speed": 2}', dup=True)
        assert await _speeds(pg_pool, machine) == [2, 3, 1, 1]

    async def test_status_changes_and_dead_letters_are_recorded_once(
        self,
        pipelines: Pipelines,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        client = _client()
        topic = f"machines/{machine}/telemetry"
        first = await pipelines(client)
        await _deliver(first, 1, topic, "not json")
        await _deliver(first, 2, f"machines/{machine}/status", "online")
        restarted = await pipelines(client)
        await _deliver(restarted, 1, topic, "not json", dup=True)
        await _deliver(restarted, 2, f"machines/{machine}/status", "online", dup=True)
        assert restarted.state.counters.redelivered == 2
        letters = await pg_pool.fetchval(
            "SELECT count(*) FROM dead_letters WHERE topic = $1", f"{PREFIX}/{topic}"
        )
        await pg_pool.execute("DELETE FROM dead_letters WHERE topic LIKE $1", f"{PREFIX}/%")
        assert letters == 1

    async def test_each_client_id_has_its_own_records(
        self,
        pipelines: Pipelines,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        """Processes sharing a subscription have their own client ids and sessions: the same
        packet id in two sessions names two deliveries."""
        machine = await committed_machine()
        first, second = _client(), _client()
        topic = f"machines/{machine}/telemetry"
        await _deliver(await pipelines(first), 7, topic, '{"speed": 1}')
        other = await pipelines(second)
        await _deliver(other, 7, topic, '{"speed": 1}', dup=True)
        assert await _speeds(pg_pool, machine) == [1, 1]
        assert list(await _records(pg_pool, first)) == [7]
        assert list(await _records(pg_pool, second)) == [7]

    async def test_records_older_than_the_session_lifetime_are_pruned_at_start(
        self, pipelines: Pipelines, pg_pool: asyncpg.Pool
    ) -> None:
        client = _client()
        await pg_pool.execute(
            "INSERT INTO mqtt_deliveries (client_id, batch, packet_ids, digests, committed_at) "
            "VALUES ($1, 1, '{1}', $2, now() - interval '8 days'), ($1, 2, '{2}', $2, now())",
            client,
            bytes(16),
        )
        pipeline = await pipelines(client)
        assert len(pipeline.deliveries) == 1
        assert list(await _records(pg_pool, client)) == [2]


class TestRecordRetirement:
    """A record goes as soon as we know the broker has our PUBACK, so a later message with the
    same content under the same id is never taken for a copy (the kill test shows it end to
    end, after the ids wrapped around)."""

    async def test_records_are_retired_once_a_round_trip_confirms_the_pubacks(
        self,
        database_url: str,
        broker: support.Broker,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        settings = mqtt_settings(database_url, broker)
        topic = f"{settings.mqtt.topic_prefix}/machines/{machine}/telemetry"
        async with running(settings) as resources:
            await subscribed(resources)
            pipeline = ingest_of(resources).pipeline
            await mosquitto_pub(broker, topic, _lines(50, timestamps=False))

            async def retired() -> bool:
                records = await pg_pool.fetchval(
                    "SELECT count(*) FROM mqtt_deliveries WHERE client_id = $1",
                    settings.mqtt.client_id,
                )
                return pipeline.state.counters.acknowledged == 50 and records == 0

            await eventually(retired)
            assert len(pipeline.deliveries) == 0
        assert await count_readings(pg_pool, [machine]) == 100

    async def test_records_not_resent_before_the_first_new_message_are_retired(
        self, pipelines: Pipelines, pg_pool: asyncpg.Pool, committed_machine: MachineFactory
    ) -> None:
        machine = await committed_machine()
        client = _client()
        topic = f"machines/{machine}/telemetry"
        first = await pipelines(client)
        await _deliver(first, 1, topic, '{"speed": 1}')
        await _deliver(first, 2, topic, '{"speed": 2}')
        restarted = await pipelines(client)
        # The broker resends what it has unacknowledged first: only id 1 (our PUBACK for 2
        # arrived). At the first new message, the record of 2 is known to be stale.
        await _deliver(restarted, 1, topic, '{"speed": 1}', dup=True)
        assert sorted(await _records(pg_pool, client)) == [1, 2]
        await _deliver(restarted, 3, topic, '{"speed": 3}')
        assert sorted(await _records(pg_pool, client)) == [1, 3]
        assert await _speeds(pg_pool, machine) == [1, 2, 3]
