"""Loss and duplication under failure: kill -9 of the service, the database going away."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import uuid
from pathlib import Path

import asyncpg
import httpx

from tests import support
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

MESSAGES = 30_000


class Service:
    """`plantpulse serve` as a child process, MQTT on, against the given database."""

    def __init__(self, url: str, broker: support.Broker, logs: Path) -> None:
        self.port = support.free_port()
        self.prefix = f"pptest/{uuid.uuid4().hex[:12]}"
        self.logs = logs
        self.env = {
            **os.environ,
            "PLANTPULSE_ENV": "test",
            "PLANTPULSE_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "PLANTPULSE_DATABASE__URL": url,
            "PLANTPULSE_REDIS__URL": support.REDIS_URL,
            "PLANTPULSE_REDIS__KEY_PREFIX": f"pptest:{support.RUN_ID}:",
            "PLANTPULSE_MQTT__ENABLED": "true",
            "PLANTPULSE_MQTT__HOST": broker.host,
            "PLANTPULSE_MQTT__PORT": str(broker.port),
            "PLANTPULSE_MQTT__CLIENT_ID": f"pptest-{uuid.uuid4().hex[:12]}",
            "PLANTPULSE_MQTT__TOPIC_PREFIX": self.prefix,
            "PLANTPULSE_MQTT__RECONNECT_MAX_SECONDS": "1",
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.logs.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "plantpulse.cli", "serve", "--port", str(self.port),
                env=self.env, cwd=self.logs.parent, stdout=log, stderr=log,
            )  # fmt: skip
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as client:

            async def mqtt_up() -> bool:
                try:
                    ready = await client.get("/ready")
                except httpx.TransportError:
                    return False
                return bool(ready.json()["mqtt"]["status"] == "up")

            await eventually(mqtt_up, within=30, every=0.1)

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        await self.process.wait()


class TestKillNine:
    async def test_kill_9_mid_stream_then_restart_stores_every_message_exactly_once(
        self, own_database: str, broker: support.Broker, tmp_path: Path
    ) -> None:
        machine = await add_machine(own_database)
        service = Service(own_database, broker, tmp_path / "service.log")
        pool = await asyncpg.create_pool(dsn(own_database), min_size=1, max_size=2)
        try:
            await service.start()
            topic = f"{service.prefix}/machines/{machine}/telemetry"
            lines = [
                json.dumps({"timestamp": 1767607200000 + i, "temperature": i % 90, "speed": i})
                for i in range(MESSAGES)
            ]
            publisher = asyncio.create_task(mosquitto_pub(broker, topic, lines))

            async def under_way() -> bool:
                return await count_readings(pool, [machine]) >= MESSAGES // 5

            await eventually(under_way, within=60, every=0.01)
            await service.kill(signal.SIGKILL)
            at_kill = await count_readings(pool, [machine])
            await publisher
            assert at_kill < 2 * MESSAGES, "the service was not killed mid-stream"

            await service.start()

            async def all_stored() -> bool:
                return await count_readings(pool, [machine]) >= 2 * MESSAGES

            await eventually(all_stored, within=90, every=0.1)
            await asyncio.sleep(1.0)  # any late redelivery would show up as extra rows
            per_metric = await pool.fetch(
                "SELECT metric, count(*) AS n, count(DISTINCT time) AS times FROM readings "
                "WHERE machine_id = $1 GROUP BY metric ORDER BY metric",
                machine,
            )
            assert [(r["metric"], r["n"], r["times"]) for r in per_metric] == [
                ("speed", MESSAGES, MESSAGES),
                ("temperature", MESSAGES, MESSAGES),
            ]
            assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
            await service.kill(signal.SIGTERM)
            # uvicorn re-raises the signal after its graceful shutdown.
            assert "Application shutdown complete" in service.logs.read_text()
        finally:
            if service.process is not None and service.process.returncode is None:
                await service.kill()
            await pool.close()


class TestDatabaseDown:
    async def test_the_writer_retries_without_acknowledging_and_resumes(
        self, own_database: str, broker: support.Broker
    ) -> None:
        machine = await add_machine(own_database)
        name = own_database.rsplit("/", 1)[1]
        settings = mqtt_settings(own_database, broker)
        topic = f"{settings.mqtt.topic_prefix}/machines/{machine}/telemetry"
        lines = [json.dumps({"timestamp": 1767607200 + i, "t": i}) for i in range(300)]
        admin = await asyncpg.connect(dsn(support.SERVER_URL))
        try:
            async with running(settings) as resources:
                await subscribed(resources)
                counters = ingest_of(resources).state.counters
                await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    name,
                )
                await mosquitto_pub(broker, topic, lines)

                async def retrying() -> bool:
                    return counters.write_retries >= 3

                await eventually(retrying)
                assert counters.readings_stored == 0
                assert counters.acknowledged == 0
                await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')

                async def acknowledged() -> bool:
                    return counters.acknowledged == 300

                await eventually(acknowledged, within=30)
            pool = await asyncpg.create_pool(dsn(own_database), min_size=1, max_size=1)
            try:
                assert await count_readings(pool, [machine]) == 300
            finally:
                await pool.close()
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            await admin.close()
