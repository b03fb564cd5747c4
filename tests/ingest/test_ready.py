"""/ready tells the truth about MQTT ingest (issue 8, item 2): progress, and crashed tasks."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from plantpulse.app import create_app
from plantpulse.config import Settings
from plantpulse.ingest.messages import Pending
from plantpulse.ingest.mqtt import MqttIngest
from tests import support
from tests.conftest import MachineFactory
from tests.ingest.conftest import (
    DatabaseFaults,
    add_machine,
    count_readings,
    dsn,
    eventually,
    ingest_of,
    mosquitto_pub,
    mqtt_settings,
    subscribed,
)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[MqttIngest, AsyncClient]]:
    """The app with MQTT ingest, subscribed, and an HTTP client on it."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        resources = manager._state["resources"]
        await subscribed(resources)
        transport = ASGITransport(app=manager.app)
        async with AsyncClient(transport=transport, base_url="http://test") as client:
            yield ingest_of(resources), client


async def _mqtt(client: AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/ready")).json()
    mqtt: dict[str, Any] = body["mqtt"]
    return mqtt


class TestIngestStalled:
    async def test_a_database_outage_longer_than_the_threshold_degrades_then_recovers(
        self, own_database: str, broker: support.Broker
    ) -> None:
        machine = await add_machine(own_database)
        settings = mqtt_settings(own_database, broker, ingest={"stall_seconds": 1})
        topic = f"{settings.mqtt.topic_prefix}/machines/{machine}/telemetry"
        lines = [json.dumps({"timestamp": 1767607200 + i, "t": i}) for i in range(50)]
        async with DatabaseFaults(own_database) as faults:
            async with serving(settings) as (ingest, client):
                # Idle for longer than the threshold is not a stall.
                await mosquitto_pub(broker, topic, lines[:1])

                async def first_acknowledged() -> bool:
                    return ingest.state.counters.acknowledged == 1

                await eventually(first_acknowledged)
                assert (await _mqtt(client))["status"] == "up"

                await faults.refuse()
                await mosquitto_pub(broker, topic, lines[1:])

                async def degraded() -> bool:
                    return bool((await _mqtt(client))["status"] == "degraded")

                await eventually(degraded, within=30)
                response = await client.get("/ready")
                assert response.status_code == 503  # the database is down too
                mqtt = response.json()["mqtt"]
                assert mqtt["detail"].startswith("49 messages waiting, nothing committed for ")
                assert "database: " in mqtt["detail"]
                assert mqtt["info"]["waiting"] == 49

                await faults.allow()

                async def recovered() -> bool:
                    return ingest.state.counters.acknowledged == 50

                await eventually(recovered, within=30)
                response = await client.get("/ready")
                assert response.json()["mqtt"]["status"] == "up"
                assert response.json()["status"] == "ready"
        pool = await asyncpg.create_pool(dsn(own_database), min_size=1, max_size=1)
        try:
            assert await count_readings(pool, [machine]) == 50
        finally:
            await pool.close()


class TestIngestTaskCrash:
    async def test_a_crashed_writer_is_logged_restarted_and_reported(
        self,
        database_url: str,
        broker: support.Broker,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.ERROR, logger="plantpulse.supervisor")
        machine = await committed_machine()
        settings = mqtt_settings(database_url, broker)
        topic = f"{settings.mqtt.topic_prefix}/machines/{machine}/telemetry"
        lines = [json.dumps({"speed": i}) for i in range(20)]
        async with serving(settings) as (ingest, client):
            crashes = 0

            async def crash_once(batch: list[Pending]) -> None:
                nonlocal crashes
                if crashes == 0:
                    crashes += 1
                    raise RuntimeError("injected writer crash")

            ingest.pipeline.before_write = crash_once
            await mosquitto_pub(broker, topic, lines)

            async def reported() -> bool:
                return bool((await _mqtt(client))["status"] == "error")

            await eventually(reported)
            mqtt = await _mqtt(client)
            assert "mqtt-writer crashed (RuntimeError: injected writer crash)" in mqtt["detail"]

            async def all_acknowledged() -> bool:
                return ingest.state.counters.acknowledged == 20

            await eventually(all_acknowledged)
            writer = next(
                t for t in (await _mqtt(client))["info"]["tasks"] if t["name"] == "mqtt-writer"
            )
            assert writer["restarts"] == 1
            assert writer["last_error"] == "RuntimeError: injected writer crash"
        speeds = await pg_pool.fetch(
            "SELECT value FROM readings WHERE machine_id = $1 AND metric = 'speed'", machine
        )
        assert sorted(r["value"] for r in speeds) == list(range(20))
        crash_logs = [r for r in caplog.records if "mqtt-writer crashed" in r.getMessage()]
        assert len(crash_logs) == 1
        assert crash_logs[0].exc_info is not None

    async def test_a_crashed_connection_task_is_restarted(
        self, database_url: str, broker: support.Broker, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.ERROR, logger="plantpulse.supervisor")
        settings = mqtt_settings(database_url, broker)
        app = create_app(settings)
        original = MqttIngest._load_deliveries
        calls = 0

        async def crash_first_time(self: MqttIngest) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("injected connection crash")
            await original(self)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(MqttIngest, "_load_deliveries", crash_first_time)
            async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
                resources = manager._state["resources"]
                await subscribed(resources)
                tasks = {t.name: t.status() for t in ingest_of(resources).tasks}
                assert tasks["mqtt-connection"].restarts == 1
                assert (
                    tasks["mqtt-connection"].last_error == "RuntimeError: injected connection crash"
                )
                status, detail, _ = ingest_of(resources).status()
                assert status == "error"
                assert detail is not None
                assert "mqtt-connection crashed" in detail
        assert any("mqtt-connection crashed" in r.getMessage() for r in caplog.records)
