"""MQTT ingest against the private broker: apps with MQTT on, publishers, bounded polls."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from asgi_lifespan import LifespanManager

from plantpulse.app import create_app
from plantpulse.config import IngestSettings, MqttSettings, Settings
from plantpulse.ingest.mqtt import MqttIngest
from plantpulse.state import Resources
from tests import support
from tests.conftest import make_settings


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float = 20.0, every: float = 0.05
) -> None:
    """Poll until `check()` is true; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(every)


def mqtt_settings(
    database_url: str,
    broker: support.Broker,
    *,
    prefix: str | None = None,
    client_id: str | None = None,
    mqtt: dict[str, Any] | None = None,
    ingest: dict[str, Any] | None = None,
) -> Settings:
    return make_settings(
        database_url,
        mqtt=MqttSettings(
            enabled=True,
            host=broker.host,
            port=broker.port,
            client_id=client_id or f"pptest-{uuid.uuid4().hex[:12]}",
            topic_prefix=prefix or f"pptest/{uuid.uuid4().hex[:12]}",
            reconnect_max_seconds=1.0,
            **(mqtt or {}),
        ),
        ingest=IngestSettings(**{"batch_max_delay_ms": 20, **(ingest or {})}),
    )


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Resources]:
    """An app with MQTT ingest, lifespan entered; yields its resources once subscribed."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        resources: Resources = manager._state["resources"]
        yield resources


def ingest_of(resources: Resources) -> MqttIngest:
    ingest: MqttIngest = resources.extras["mqtt_ingest"]
    return ingest


async def subscribed(resources: Resources, within: float = 20.0) -> None:
    ingest = ingest_of(resources)

    async def connected() -> bool:
        return ingest.state.connected and ingest.state.subscribed

    await eventually(connected, within=within)


async def mosquitto_pub(
    broker: support.Broker, topic: str, lines: Sequence[str], *, qos: int = 1
) -> None:
    """Publish one message per line with the C client (fast, QoS 1 acknowledged)."""
    process = await asyncio.create_subprocess_exec(
        "mosquitto_pub",
        "-h",
        broker.host,
        "-p",
        str(broker.port),
        "-q",
        str(qos),
        "-t",
        topic,
        "-l",
        stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate(("\n".join(lines) + "\n").encode())
    assert process.returncode == 0, stderr.decode()


async def count_readings(pool: asyncpg.Pool, machine_ids: Sequence[uuid.UUID]) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM readings WHERE machine_id = ANY($1::uuid[])", list(machine_ids)
    )
    return count


@pytest.fixture
async def dead_letter_cleanup(pg_pool: asyncpg.Pool) -> AsyncIterator[list[str]]:
    """Topic prefixes whose dead letters are deleted after the test."""
    prefixes: list[str] = []
    yield prefixes
    for prefix in prefixes:
        await pg_pool.execute("DELETE FROM dead_letters WHERE topic LIKE $1", f"{prefix}/%")
