"""The MQTT writer's flush policy: "idle" writes what finds the writer idle at once; "delay"
waits up to batch_max_delay_ms for a fuller batch."""

from __future__ import annotations

import json

import aiomqtt
import asyncpg

from tests import support
from tests.conftest import MachineFactory
from tests.ingest.conftest import (
    count_readings,
    eventually,
    ingest_of,
    mqtt_settings,
    running,
    subscribed,
)

# Far longer than the polls below: only the "idle" policy can store within them.
LONG_DELAY_MS = 30_000


class TestIdleFlush:
    async def test_a_message_finding_the_writer_idle_is_stored_without_the_batch_delay(
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
            ingest={"flush_policy": "idle", "batch_max_delay_ms": LONG_DELAY_MS},
        )
        topic = f"{settings.mqtt.topic_prefix}/machines/{machine}/telemetry"
        async with running(settings) as resources:
            await subscribed(resources)
            async with aiomqtt.Client(broker.host, broker.port) as device:
                await device.publish(topic, json.dumps({"temperature": 70}), qos=1)

            async def stored() -> bool:
                return await count_readings(pg_pool, [machine]) == 1

            await eventually(stored, within=5)


class TestDelayedFlush:
    async def test_the_delay_policy_waits_for_a_fuller_batch(
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
            ingest={
                "flush_policy": "delay",
                "batch_max_delay_ms": LONG_DELAY_MS,
                "batch_max_readings": 10,
            },
        )
        topic = f"{settings.mqtt.topic_prefix}/machines/{machine}/telemetry"
        async with running(settings) as resources:
            await subscribed(resources)
            async with aiomqtt.Client(broker.host, broker.port) as device:
                await device.publish(topic, json.dumps({"temperature": 70}), qos=1)

                async def received() -> bool:
                    return ingest_of(resources).state.counters.received == 1

                await eventually(received, within=5)
                # Received but not written: the writer waits for a fuller batch.
                assert await count_readings(pg_pool, [machine]) == 0
                # Ten readings fill the batch, which is then written at once.
                await device.publish(
                    topic,
                    json.dumps(
                        {"readings": [{"timestamp": 1767607200 + i, "v": i} for i in range(9)]}
                    ),
                    qos=1,
                )

            async def stored() -> bool:
                return await count_readings(pg_pool, [machine]) == 10

            await eventually(stored, within=5)
