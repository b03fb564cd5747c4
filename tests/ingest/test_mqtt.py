from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import ClassVar

import aiomqtt
import asyncpg
import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from plantpulse.app import create_app
from plantpulse.state import Resources
from tests import support
from tests.conftest import MachineFactory
from tests.ingest.conftest import (
    count_readings,
    eventually,
    ingest_of,
    mosquitto_pub,
    mqtt_settings,
    running,
    subscribed,
)


async def publish(broker: support.Broker, topic: str, payload: str | bytes, qos: int = 1) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, payload, qos=qos)


class TestTelemetryTopic:
    async def test_a_reading_set_is_stored(
        self,
        database_url: str,
        broker: support.Broker,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        settings = mqtt_settings(database_url, broker)
        prefix = settings.mqtt.topic_prefix
        async with running(settings) as resources:
            await subscribed(resources)
            body = {"timestamp": "2026-01-05T10:00:00Z", "temperature": 72.5, "pressure": 3}
            await publish(broker, f"{prefix}/machines/{machine}/telemetry", json.dumps(body))

            async def stored() -> bool:
                return await count_readings(pg_pool, [machine]) == 2

            await eventually(stored)
            stats = ingest_of(resources).snapshot()
        rows = await pg_pool.fetch(
            "SELECT metric, value, time FROM readings WHERE machine_id = $1 ORDER BY metric",
            machine,
        )
        assert [(r["metric"], r["value"]) for r in rows] == [
            ("pressure", 3.0),
            ("temperature", 72.5),
        ]
        assert rows[0]["time"].isoformat() == "2026-01-05T10:00:00+00:00"
        assert stats["accepted"] == 1
        assert stats["acknowledged"] == 1

    async def test_readings_list_and_gateway_batch_are_stored(
        self,
        database_url: str,
        broker: support.Broker,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        first, second = await committed_machine(), await committed_machine()
        settings = mqtt_settings(database_url, broker)
        prefix = settings.mqtt.topic_prefix
        readings = {
            "readings": [
                {"timestamp": 1767607200, "speed": 1200},
                {"timestamp": 1767607201, "speed": 1210},
            ]
        }
        batch = {
            "gateway_id": "gw-1",
            "timestamp": "2026-01-05T10:00:00Z",
            "batch": [
                {"machine_id": str(first), "readings": [{"temperature": 70}]},
                {"machine_id": str(second), "readings": [{"temperature": 71, "pressure": 2}]},
            ],
        }
        async with running(settings) as resources:
            await subscribed(resources)
            await publish(broker, f"{prefix}/machines/{first}/telemetry", json.dumps(readings))
            await publish(broker, f"{prefix}/gateways/gw-1/batch", json.dumps(batch))

            async def stored() -> bool:
                return await count_readings(pg_pool, [first, second]) == 5

            await eventually(stored)
        assert await count_readings(pg_pool, [second]) == 2


class TestPublishPackets:
    """Our PUBLISH handler takes the common packets; the rest (MQTT 5 properties) goes to
    paho's. Either way the message is stored and acknowledged, on both protocol versions."""

    @pytest.mark.parametrize("protocol", ["5", "3.1.1"])
    async def test_qos_0_qos_1_and_packets_with_properties_are_stored(
        self,
        database_url: str,
        broker: support.Broker,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
        protocol: str,
    ) -> None:
        machine = await committed_machine()
        settings = mqtt_settings(database_url, broker, mqtt={"protocol": protocol})
        topic = f"{settings.mqtt.topic_prefix}/machines/{machine}/telemetry"
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = ("site", "plant-7")
        properties.ContentType = "application/json"
        async with running(settings) as resources:
            await subscribed(resources)
            async with aiomqtt.Client(
                broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
            ) as client:
                await client.publish(topic, '{"timestamp": 1767607200, "a": 1}', qos=1)
                await client.publish(topic, '{"timestamp": 1767607201, "a": 2}', qos=0)
                await client.publish(
                    topic, '{"timestamp": 1767607202, "a": 3}', qos=1, properties=properties
                )

            async def stored() -> bool:
                return await count_readings(pg_pool, [machine]) == 3

            await eventually(stored)
            await eventually(lambda: _acknowledged(resources, 2))
            stats = ingest_of(resources).snapshot()
        values = await pg_pool.fetch(
            "SELECT value FROM readings WHERE machine_id = $1 ORDER BY time", machine
        )
        assert [r["value"] for r in values] == [1.0, 2.0, 3.0]
        assert (stats["received"], stats["accepted"], stats["rejected"]) == (3, 3, 0)


async def _acknowledged(resources: Resources, count: int) -> bool:
    return bool(ingest_of(resources).state.counters.acknowledged == count)


class TestStatusTopic:
    async def test_online_and_last_will_offline_update_the_machine(
        self,
        database_url: str,
        broker: support.Broker,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        settings = mqtt_settings(database_url, broker)
        topic = f"{settings.mqtt.topic_prefix}/machines/{machine}/status"
        heard: list[object] = []
        async with running(settings) as resources:
            resources.connectivity.listeners.append(heard.append)
            await subscribed(resources)

            async def connectivity_is(value: str) -> bool:
                row = await pg_pool.fetchrow(
                    "SELECT connectivity::text AS c, last_seen_at FROM machines WHERE id = $1",
                    machine,
                )
                return row is not None and row["c"] == value

            # A device announces itself and leaves a Last-Will of "offline" with the broker...
            device = await asyncio.create_subprocess_exec(
                "mosquitto_sub",
                "-h", broker.host, "-p", str(broker.port), "-t", "pptest/none",
                "--will-topic", topic, "--will-payload", '{"status": "offline"}',
                "--will-qos", "1",
                stdout=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await publish(broker, topic, '{"status": "online"}')
            await eventually(lambda: connectivity_is("online"))
            seen = await pg_pool.fetchval(
                "SELECT last_seen_at FROM machines WHERE id = $1", machine
            )
            assert seen is not None
            # ...then dies without disconnecting: the broker publishes the will.
            device.kill()
            await device.wait()
            await eventually(lambda: connectivity_is("offline"))
        assert [getattr(c, "connectivity", None) for c in heard] == ["online", "offline"]


class TestDeadLetters:
    CASES: ClassVar[list[tuple[str, str, bytes, str]]] = [
        # (name, topic suffix ({m} = a registered machine), payload, reason code)
        ("not_json", "machines/{m}/telemetry", b"temperature=72", "not_json"),
        ("not_object", "machines/{m}/telemetry", b"[1, 2]", "invalid_payload"),
        ("wrong_type", "machines/{m}/telemetry", b'{"temperature": "hot"}', "rejected_values"),
        ("non_finite", "machines/{m}/telemetry", b'{"temperature": NaN}', "rejected_values"),
        ("infinite", "machines/{m}/telemetry", b'{"temperature": 1e999}', "rejected_values"),
        ("unknown", "machines/{u}/telemetry", b'{"temperature": 1}', "unknown_machine"),
        ("bad_id", "machines/not-a-uuid/telemetry", b'{"temperature": 1}', "bad_topic"),
        ("bad_topic", "machines/{m}/telemetry/extra", b'{"temperature": 1}', "bad_topic"),
        ("other_topic", "elsewhere", b'{"temperature": 1}', "bad_topic"),
        ("bad_batch", "gateways/gw/batch", b'{"batch": 3}', "invalid_payload"),
        ("bad_status", "machines/{m}/status", b'{"status": "sleepy"}', "invalid_payload"),
        ("status_unknown", "machines/{u}/status", b'{"status": "online"}', "unknown_machine"),
        ("future", "machines/{m}/telemetry", b'{"timestamp": 4102444800, "t": 1}',
         "rejected_values"),
        ("binary", "machines/{m}/telemetry", b"\x00\xff\xfe", "not_json"),
        ("oversized", "machines/{m}/telemetry", b'{"t": 1, "pad": "' + b"x" * 2000 + b'"}',
         "oversized"),
    ]  # fmt: skip

    async def test_every_malformed_message_is_recorded_and_ingestion_continues(
        self,
        database_url: str,
        broker: support.Broker,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
        dead_letter_cleanup: list[str],
    ) -> None:
        machine = await committed_machine()
        unknown = uuid.uuid4()
        settings = mqtt_settings(database_url, broker, ingest={"max_payload_bytes": 1024})
        prefix = settings.mqtt.topic_prefix
        dead_letter_cleanup.append(prefix)
        async with running(settings) as resources:
            await subscribed(resources)
            async with aiomqtt.Client(broker.host, broker.port) as client:
                for _, suffix, payload, _ in self.CASES:
                    topic = f"{prefix}/{suffix.format(m=machine, u=unknown)}"
                    await client.publish(topic, payload, qos=1)
                good = json.dumps({"timestamp": 1767607200, "temperature": 70})
                await client.publish(f"{prefix}/machines/{machine}/telemetry", good, qos=1)

            async def all_handled() -> bool:
                counters = ingest_of(resources).state.counters
                return counters.accepted + counters.rejected == len(self.CASES) + 1

            await eventually(all_handled)
            counters = ingest_of(resources).state.counters
            assert counters.rejected == len(self.CASES)
            assert counters.accepted == 1
        rows = await pg_pool.fetch(
            "SELECT topic, reason, payload_excerpt, payload_size, source FROM dead_letters "
            "WHERE topic LIKE $1 ORDER BY id",
            f"{prefix}/%",
        )
        # Batches may commit out of publishing order (two writers), so compare as multisets.
        reasons = sorted(r["reason"].split(":")[0] for r in rows)
        assert reasons == sorted(case[3] for case in self.CASES)
        assert {r["source"] for r in rows} == {"mqtt"}
        oversized = next(r for r in rows if r["reason"].startswith("oversized"))
        assert oversized["payload_size"] == len(self.CASES[-1][2])
        assert len(oversized["payload_excerpt"]) == 1024
        # The good message after all of them was stored.
        assert await count_readings(pg_pool, [machine]) == 1


class TestDuplicates:
    async def test_a_republished_message_is_stored_once(
        self,
        database_url: str,
        broker: support.Broker,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        settings = mqtt_settings(database_url, broker)
        topic = f"{settings.mqtt.topic_prefix}/machines/{machine}/telemetry"
        lines = [json.dumps({"timestamp": 1767607200 + i, "t": i, "p": i}) for i in range(500)]
        async with running(settings) as resources:
            await subscribed(resources)
            await mosquitto_pub(broker, topic, lines)
            await mosquitto_pub(broker, topic, lines)
            counters = ingest_of(resources).state.counters

            async def both_rounds_handled() -> bool:
                return counters.accepted == 1000

            await eventually(both_rounds_handled)
        assert await count_readings(pg_pool, [machine]) == 1000
        assert counters.readings_stored == 1000
        assert counters.duplicates == 1000


class TestReadingsAtTheSameTime:
    async def test_timestamp_less_repeats_are_a_dead_letter_and_the_rest_is_stored(
        self,
        database_url: str,
        broker: support.Broker,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
        dead_letter_cleanup: list[str],
    ) -> None:
        """Issue 8, item 5: these collapsed into one row and two silent "duplicates"."""
        machine = await committed_machine()
        settings = mqtt_settings(database_url, broker)
        prefix = settings.mqtt.topic_prefix
        dead_letter_cleanup.append(prefix)
        topic = f"{prefix}/machines/{machine}/telemetry"
        async with running(settings) as resources:
            await subscribed(resources)
            await publish(broker, topic, json.dumps({"readings": [{"vib": 1}, {"vib": 2}]}))
            await publish(broker, topic, json.dumps({"timestamp": 1767607200, "vib": 7}))
            counters = ingest_of(resources).state.counters

            async def both_handled() -> bool:
                return counters.accepted + counters.rejected == 2 and counters.acknowledged == 2

            await eventually(both_handled)
            assert counters.duplicates == 0
        values = await pg_pool.fetch(
            "SELECT value FROM readings WHERE machine_id = $1 ORDER BY value", machine
        )
        assert [r["value"] for r in values] == [1.0, 7.0]
        letters = await pg_pool.fetch(
            "SELECT topic, reason FROM dead_letters WHERE topic LIKE $1", f"{prefix}/%"
        )
        assert [r["topic"] for r in letters] == [topic]
        assert letters[0]["reason"].startswith(
            "rejected_values: 1 of 2 rejected: readings[1].vib: readings[0] already has 'vib' at "
        )


def _lines(start: int, count: int) -> list[str]:
    return [
        json.dumps({"timestamp": 1767607200 + i, "temperature": 60 + i % 7, "speed": i})
        for i in range(start, start + count)
    ]


class TestPersistentSession:
    async def test_messages_published_while_the_service_is_down_are_stored_after_it_starts(
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
        # Down: the broker keeps the session and queues for it.
        await mosquitto_pub(broker, topic, _lines(0, 3000))
        assert await count_readings(pg_pool, [machine]) == 0
        async with running(settings) as resources:

            async def stored() -> bool:
                return await count_readings(pg_pool, [machine]) == 6000

            await eventually(stored, within=30)
            # A clean stop acknowledged everything: nothing is delivered twice.
            assert ingest_of(resources).state.counters.duplicates == 0

    async def test_a_clean_stop_acknowledges_what_it_stored(
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
            await mosquitto_pub(broker, topic, _lines(0, 2000))
            started = time.monotonic()
        # Stopped mid-stream, within the bounded time.
        assert time.monotonic() - started < settings.mqtt.shutdown_timeout_seconds + 3
        async with running(settings) as resources:
            ingest = ingest_of(resources)

            async def stored() -> bool:
                return await count_readings(pg_pool, [machine]) == 4000

            await eventually(stored, within=30)
            await asyncio.sleep(0.5)  # let any redelivery arrive before counting duplicates
            assert ingest.state.counters.duplicates == 0


class TestBrokerRestart:
    async def test_ingestion_recovers_after_a_broker_restart_mid_stream(
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
            await mosquitto_pub(broker, topic, _lines(0, 5000))
            await broker.restart()
            await mosquitto_pub(broker, topic, _lines(5000, 2000))

            async def stored() -> bool:
                return await count_readings(pg_pool, [machine]) == 14000

            await eventually(stored, within=40)
            assert ingest_of(resources).state.counters.reconnects >= 1


class TestBrokerDownAtStart:
    async def test_the_api_serves_ready_says_mqtt_down_and_ingest_starts_with_the_broker(
        self,
        database_url: str,
        tmp_path: Path,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        late = support.Broker(tmp_path)
        settings = mqtt_settings(database_url, late)
        topic = f"{settings.mqtt.topic_prefix}/machines/{machine}/telemetry"
        app = create_app(settings)
        try:
            async with (
                LifespanManager(app) as manager,
                AsyncClient(
                    transport=ASGITransport(app=manager.app), base_url="http://test"
                ) as client,
            ):
                ready = await client.get("/ready")
                assert ready.status_code == 200
                body = ready.json()
                assert body["status"] == "degraded"
                assert body["mqtt"]["status"] == "down"
                assert body["mqtt"]["detail"]
                await late.start()
                resources: Resources = manager._state["resources"]
                await subscribed(resources, within=30)
                assert (await client.get("/ready")).json()["mqtt"]["status"] == "up"
                await mosquitto_pub(late, topic, _lines(0, 10))

                async def stored() -> bool:
                    return await count_readings(pg_pool, [machine]) == 20

                await eventually(stored)
        finally:
            await late.stop()


class TestSharedSubscription:
    async def test_two_instances_split_the_stream_and_store_everything_once(
        self,
        database_url: str,
        broker: support.Broker,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        prefix = f"pptest/{uuid.uuid4().hex[:12]}"
        group = {"shared_group": f"g{uuid.uuid4().hex[:8]}"}
        one = mqtt_settings(database_url, broker, prefix=prefix, mqtt=group)
        two = mqtt_settings(database_url, broker, prefix=prefix, mqtt=group)
        topic = f"{prefix}/machines/{machine}/telemetry"
        async with running(one) as first, running(two) as second:
            await subscribed(first)
            await subscribed(second)
            await mosquitto_pub(broker, topic, _lines(0, 4000))

            async def stored() -> bool:
                return await count_readings(pg_pool, [machine]) == 8000

            await eventually(stored, within=30)
            a = ingest_of(first).state.counters
            b = ingest_of(second).state.counters
        assert a.received > 0
        assert b.received > 0
        assert a.received + b.received == 4000
        assert a.duplicates + b.duplicates == 0


class TestBackpressure:
    async def test_a_full_queue_pauses_reading_and_loses_nothing(
        self,
        database_url: str,
        broker: support.Broker,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        settings = mqtt_settings(
            database_url,
            broker,
            ingest={"queue_max_messages": 50, "batch_max_readings": 20},
        )
        topic = f"{settings.mqtt.topic_prefix}/machines/{machine}/telemetry"
        async with running(settings) as resources:
            await subscribed(resources)
            # QoS 0 as well: not bounded by the in-flight window, only by pausing reads.
            await mosquitto_pub(broker, topic, _lines(0, 1500), qos=0)
            await mosquitto_pub(broker, topic, _lines(1500, 1500), qos=1)

            async def stored() -> bool:
                return await count_readings(pg_pool, [machine]) == 6000

            await eventually(stored, within=60)
            state = ingest_of(resources).state
        assert state.queue_high_water == 50
