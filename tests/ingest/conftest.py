"""MQTT ingest against the private broker: apps with MQTT on, publishers, bounded polls."""

from __future__ import annotations

import asyncio
import contextlib
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


@pytest.fixture
async def own_database() -> AsyncIterator[str]:
    """A migrated database for this test alone (it gets killed, refused, restarted)."""
    url = await support.create_database(f"t{uuid.uuid4().hex[:8]}")
    try:
        await support.migrate(url)
        await support.pause_policies(url)
        yield url
    finally:
        await support.drop_database(url)


# asyncpg's form of a SQLAlchemy URL; the ingest tests import it from here.
dsn = support.dsn


async def add_machine(url: str) -> uuid.UUID:
    machine = uuid.uuid4()
    conn = await asyncpg.connect(dsn(url))
    try:
        await conn.execute("INSERT INTO machines (id, name) VALUES ($1, $2)", machine, "press")
    finally:
        await conn.close()
    return machine


class DatabaseFaults:
    """Cuts a test's own database off, the way an outage or a DBA does: its backends are
    terminated, new connections refused. Never aimed at any other database."""

    def __init__(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        assert name.startswith(f"pptest_{support.RUN_ID}_"), name
        self.name = name
        self._admin: asyncpg.Connection | None = None

    async def __aenter__(self) -> DatabaseFaults:
        self._admin = await asyncpg.connect(dsn(support.SERVER_URL))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._admin is not None
        try:
            await self.allow()
        finally:
            await self._admin.close()

    async def terminate(self) -> int:
        """Terminate every backend of the database; how many there were."""
        assert self._admin is not None
        killed: int = await self._admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.name,
        )
        return killed

    async def refuse(self) -> int:
        """New connections are refused (SQLSTATE 55000) and the open ones terminated."""
        assert self._admin is not None
        await self._admin.execute(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS false')
        return await self.terminate()

    async def allow(self) -> None:
        assert self._admin is not None
        await self._admin.execute(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS true')


class PacedPublisher:
    """`mosquitto_pub -l -q 1` fed at a steady rate, so faults land mid-stream."""

    def __init__(
        self, broker: support.Broker, topic: str, lines: Sequence[str], *, per_second: int
    ) -> None:
        self._broker = broker
        self._topic = topic
        self._lines = lines
        self._per_second = per_second
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        process = await asyncio.create_subprocess_exec(
            "mosquitto_pub", "-h", self._broker.host, "-p", str(self._broker.port),
            "-q", "1", "-t", self._topic, "-l",
            stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdin is not None
        try:
            tick = 0.05
            chunk = max(1, int(self._per_second * tick))
            started = time.monotonic()
            for start in range(0, len(self._lines), chunk):
                lines = self._lines[start : start + chunk]
                process.stdin.write(("\n".join(lines) + "\n").encode())
                await process.stdin.drain()
                self.sent += len(lines)
                # On schedule, not "sleep after each chunk": a slow machine catches up.
                ahead = started + (start + chunk) / self._per_second - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            process.stdin.close()
            _, stderr = await process.communicate()
            assert process.returncode == 0, stderr.decode()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait(self) -> None:
        assert self._task is not None
        await self._task

    async def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


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
