"""Batches are written concurrently (`writer_connections`), acknowledged in arrival order."""

from __future__ import annotations

import asyncio

import aiomqtt
import asyncpg

from plantpulse.ingest.messages import Pending
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


class TestConcurrentFlushes:
    async def test_a_later_batch_commits_first_but_is_acknowledged_after_the_earlier_one(
        self,
        database_url: str,
        broker: support.Broker,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
    ) -> None:
        first, second = await committed_machine(), await committed_machine()
        # One message per batch, two batches written at once.
        settings = mqtt_settings(
            database_url, broker, ingest={"batch_max_readings": 1, "writer_connections": 2}
        )
        prefix = settings.mqtt.topic_prefix
        async with running(settings) as resources:
            await subscribed(resources)
            ingest = ingest_of(resources).pipeline
            commit, acknowledge = ingest._commit, ingest._acknowledge
            release_first = asyncio.Event()
            acked: list[str] = []

            async def slow_first_commit(
                batch: list[Pending], *, dead_lettered: bool = False
            ) -> None:
                if any(str(first) in item.topic for item in batch):
                    await release_first.wait()
                await commit(batch, dead_lettered=dead_lettered)

            def recording_acknowledge(batch: list[Pending]) -> None:
                acked.extend(item.topic.split("/")[-2] for item in batch)
                acknowledge(batch)

            ingest._commit = slow_first_commit  # type: ignore[method-assign]
            ingest._acknowledge = recording_acknowledge  # type: ignore[method-assign]
            async with aiomqtt.Client(broker.host, broker.port) as client:
                await client.publish(f"{prefix}/machines/{first}/telemetry", '{"a": 1}', qos=1)
                await client.publish(f"{prefix}/machines/{second}/telemetry", '{"a": 2}', qos=1)

            async def second_stored() -> bool:
                return await count_readings(pg_pool, [second]) == 1

            # The second batch commits while the first is still being written...
            await eventually(second_stored)
            assert await count_readings(pg_pool, [first]) == 0
            # ...but its PUBACK waits for the first one's.
            assert acked == []
            assert ingest.state.counters.acknowledged == 0
            release_first.set()

            async def both_acknowledged() -> bool:
                return ingest.state.counters.acknowledged == 2

            await eventually(both_acknowledged)
        assert acked == [str(first), str(second)]
        assert await count_readings(pg_pool, [first, second]) == 2
