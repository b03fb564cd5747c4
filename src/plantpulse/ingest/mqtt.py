"""MQTT ingest: the connection to the broker, its status, and the pipeline's lifecycle.

The batching pipeline (queue, backpressure, commit, ordered acks) is `pipeline.py`; everything
that reaches under aiomqtt/paho is `paho_bridge.py`. This module connects with a persistent
session (never a clean start: the session holds our subscription and every message we have not
acknowledged), subscribes at QoS 1, reconnects with backoff, and reports status.

The in-flight window (unacknowledged QoS 1 messages the broker sends us) is the MQTT 5 Receive
Maximum we announce; the broker queues everything beyond it. Measurements: docs/ingest.md.

The writer and the connection loop run under the lifespan's `Supervisor`: a crash (a bug:
database and broker failures are retried inside them) is logged with its traceback and the
task restarted with backoff, and `/ready` reports it (in `mqtt` and in `tasks`). Restart
rather than exit: the queue and the delivery log survive in this process, the writer's
unacknowledged batches go back to the queue (pipeline.py), and the API keeps serving; exiting
would drop all that for the broker to redeliver, and a deterministic bug would only crash
again after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from plantpulse.db_errors import is_database_error
from plantpulse.ingest.decoders import DecoderRegistry, json_registry
from plantpulse.ingest.paho_bridge import Link, check_compatible
from plantpulse.ingest.pipeline import Pipeline
from plantpulse.ingest.stats import IngestState, percentiles
from plantpulse.state import Resources
from plantpulse.supervisor import Supervised

log = logging.getLogger(__name__)

Status = Literal["up", "down", "degraded", "error"]


class MqttIngest:
    """The MQTT ingest of one process; `running()` is entered by the lifespan."""

    def __init__(self, resources: Resources, registry: DecoderRegistry | None = None) -> None:
        check_compatible()
        self._resources = resources
        self._settings = resources.settings
        self._registry = registry or json_registry(resources.settings.mqtt.topic_prefix)
        self.pipeline = Pipeline(resources, self._registry)
        self._connect_attempt = 0
        self._next_attempt_at: float | None = None
        # The writer and the connection loop, once running.
        self.tasks: list[Supervised] = []
        # Set when the connection loop has returned (stopping).
        self._disconnected = asyncio.Event()

    @property
    def state(self) -> IngestState:
        return self.pipeline.state

    # -- the connection ---------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        mqtt = self._settings.mqtt
        session: dict[str, Any]
        if mqtt.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = mqtt.session_expiry_seconds
            properties.ReceiveMaximum = mqtt.receive_maximum
            # Never a clean start: the session holds our subscription and every message we
            # have not acknowledged, across restarts of this process.
            session = {
                "protocol": aiomqtt.ProtocolVersion.V5,
                "clean_start": False,
                "properties": properties,
            }
        else:
            session = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
        return aiomqtt.Client(
            mqtt.host,
            mqtt.port,
            username=mqtt.username,
            password=mqtt.password.get_secret_value() if mqtt.password else None,
            identifier=mqtt.client_id,
            keepalive=mqtt.keepalive_seconds,
            timeout=10,
            **session,
        )

    @property
    def topic_filter(self) -> str:
        group = self._settings.mqtt.shared_group
        topic = self._registry.subscription
        return f"$share/{group}/{topic}" if group else topic

    async def _load_deliveries(self) -> None:
        """Before the first connection: the delivery log (redelivery.py) must be known before
        the broker redelivers anything. Waits out a database outage."""
        deliveries = self.pipeline.deliveries
        attempt = 0
        while not deliveries.loaded and not self.pipeline.stopping.is_set():
            try:
                await deliveries.load(self._resources.pg)
            except Exception as exc:
                if not is_database_error(exc):
                    raise
                self.pipeline.state.error(
                    f"database: delivery log not loaded: {type(exc).__name__}: {exc}"
                )
                if attempt == 0:
                    log.warning("MQTT delivery log not loaded (%s); retrying", exc)
                delay = min(self._settings.mqtt.reconnect_max_seconds, 0.5 * 2**attempt)
                attempt += 1
                self._next_attempt_at = time.time() + delay
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.pipeline.stopping.wait()
                self._next_attempt_at = None
            else:
                log.info("MQTT delivery log: %d packet ids recorded", len(deliveries))

    async def _connection_loop(self) -> None:
        mqtt = self._settings.mqtt
        await self._load_deliveries()
        while not self.pipeline.stopping.is_set():
            # Connecting while our queue is full would only fill the in-flight window again.
            await self.pipeline.resumed.wait()
            if self.pipeline.stopping.is_set():
                return
            client = self._client()
            connection = Link(client, self.pipeline)
            # Set before connecting: a resumed session delivers right after CONNACK.
            self.pipeline.generation += 1
            self.pipeline.link = connection
            try:
                async with client:
                    self._connected(connection)
                    await client.subscribe(self.topic_filter, qos=1)
                    self.pipeline.state.subscribed = True
                    log.info("MQTT subscribed to %s", self.topic_filter)
                    await self._until_stopped_or_lost(connection)
            except aiomqtt.MqttError as exc:
                self.pipeline.state.error(f"broker {mqtt.host}:{mqtt.port}: {exc}")
                if self.pipeline.state.connected or self._connect_attempt == 0:
                    log.warning("MQTT broker %s:%s: %s", mqtt.host, mqtt.port, exc)
            finally:
                self.pipeline.link = None
                self.pipeline.generation += 1
                was_connected = self.pipeline.state.connected
                self.pipeline.state.connected = False
                self.pipeline.state.subscribed = False
                self.pipeline.state.connected_since = None
            if self.pipeline.stopping.is_set():
                return
            if was_connected:
                self._connect_attempt = 0
                self.pipeline.state.counters.reconnects += 1
            delay = min(mqtt.reconnect_max_seconds, 0.5 * 2**self._connect_attempt)
            delay *= 0.8 + 0.4 * random.random()  # noqa: S311 - jitter, not cryptography
            self._connect_attempt += 1
            self._next_attempt_at = time.time() + delay
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.pipeline.stopping.wait()
            self._next_attempt_at = None

    async def _confirm_acknowledgements(self, connection: Link) -> None:
        """After PUBACKs for recorded messages went out: a round trip proves the broker
        processed them, and their records are retired (redelivery.py)."""
        pipeline = self.pipeline
        generation = pipeline.generation
        while True:
            await pipeline.acked.wait()
            pipeline.acked.clear()
            entries = pipeline.deliveries.take_acknowledged()
            # Only what went out on this connection: an earlier one's PUBACKs may be lost.
            entries = [entry for entry in entries if entry.generation == generation]
            if not entries:
                continue
            await connection.round_trip()
            pipeline.deliveries.confirmed(entries)
            await pipeline.write_retirements()

    def _connected(self, connection: Link) -> None:
        mqtt = self._settings.mqtt
        self.pipeline.state.connected = True
        self.pipeline.state.connected_since = datetime.now(UTC)
        self._connect_attempt = 0
        log.info("MQTT connected to %s:%s as %s", mqtt.host, mqtt.port, mqtt.client_id)

    async def _until_stopped_or_lost(self, connection: Link) -> None:
        lost = asyncio.ensure_future(connection.until_disconnected())
        stop = asyncio.ensure_future(self.pipeline.stopping.wait())
        confirm = asyncio.ensure_future(self._confirm_acknowledgements(connection))
        try:
            await asyncio.wait({lost, stop, confirm}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            confirm.cancel()
            if not lost.done():
                lost.cancel()
        if confirm.done() and not confirm.cancelled() and (error := confirm.exception()):
            raise error
        if lost.done() and not lost.cancelled() and lost.exception() is not None:
            raise aiomqtt.MqttError(f"connection lost: {lost.exception()}")
        # Stopping: the writer flushes and acknowledges before we disconnect.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.mqtt.shutdown_timeout_seconds):
                await self.pipeline.drained.wait()

    # -- lifecycle --------------------------------------------------------------------------

    def status(self) -> tuple[Status, str | None, dict[str, Any]]:
        """For /ready: (status, detail, info). `error`: a task crashed (restarting, or not
        yet running for the supervisor's `healthy_after` again); `down`: no broker
        connection; `degraded`: messages waiting and nothing committed for `stall_seconds`."""
        mqtt = self._settings.mqtt
        state = self.pipeline.state
        tasks = [task.status() for task in self.tasks]
        info: dict[str, Any] = {
            "broker": f"{mqtt.host}:{mqtt.port}",
            "client_id": mqtt.client_id,
            "subscription": self.topic_filter,
            "queue_depth": self.pipeline.queue_depth,
            "waiting": self.pipeline.waiting,
            "paused": self.pipeline.paused,
            "last_commit_at": datetime.fromtimestamp(state.committed_at, UTC).isoformat(),
            "tasks": [
                {
                    "name": task.name,
                    "state": task.state,
                    "restarts": task.restarts,
                    "last_error": task.last_error,
                    "last_error_at": task.last_error_at.isoformat() if task.last_error_at else None,
                }
                for task in tasks
            ],
        }
        status: Status = "up"
        problems: list[str] = []
        crashed = [task for task in tasks if not task.healthy]
        if crashed:
            status = "error"
            problems += [
                f"{task.name} crashed ({task.last_error}); "
                + ("restarting" if task.state == "restarting" else "restarted")
                + f" ({task.restarts} restarts)"
                for task in crashed
            ]
        if not state.connected:
            status = "down" if status == "up" else status
            detail = state.last_error or "connecting"
            if self._next_attempt_at is not None:
                wait = max(0.0, self._next_attempt_at - time.time())
                detail = f"{detail} (next attempt in {wait:.1f} s)"
            problems.append(detail)
        if (stalled := self.pipeline.stalled()) is not None:
            status = "degraded" if status == "up" else status
            problems.append(stalled)
        return status, "; ".join(problems) or None, info

    def snapshot(self) -> dict[str, Any]:
        """Counters and gauges for `GET /api/v1/ingest/stats`."""
        counters = self.pipeline.state.counters
        return {
            "enabled": True,
            "connected": self.pipeline.state.connected,
            "connected_since": self.pipeline.state.connected_since,
            "broker": f"{self._settings.mqtt.host}:{self._settings.mqtt.port}",
            "subscription": self.topic_filter,
            "received": counters.received,
            "accepted": counters.accepted,
            "rejected": counters.rejected,
            "duplicates": counters.duplicates,
            "readings_received": counters.readings_received,
            "readings_stored": counters.readings_stored,
            "status_updates": counters.status_updates,
            "acknowledged": counters.acknowledged,
            "batches": counters.batches,
            "write_retries": counters.write_retries,
            "reconnects": counters.reconnects,
            "redelivered": counters.redelivered,
            "queue_depth": self.pipeline.queue_depth,
            "queue_readings": self.pipeline.queued_readings,
            "queue_capacity": self.pipeline.max_messages,
            "queue_high_water": self.pipeline.state.queue_high_water,
            "paused": self.pipeline.paused,
            "flush_latency": percentiles(self.pipeline.state.flush_seconds),
            "commit_lag": percentiles(self.pipeline.state.commit_lag_seconds),
            "last_error": self.pipeline.state.last_error,
            "last_error_at": self.pipeline.state.last_error_at,
        }

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MqttIngest]:
        supervisor = self._resources.supervisor
        writer = supervisor.spawn("mqtt-writer", self._write)
        connection = supervisor.spawn("mqtt-connection", self._connect)
        self.tasks = [writer, connection]
        self._resources.extras["mqtt_status"] = self.status
        self._resources.extras["mqtt_ingest"] = self
        try:
            yield self
        finally:
            await self._stop(writer, connection)
            self._resources.extras.pop("mqtt_status", None)
            self._resources.extras.pop("mqtt_ingest", None)

    async def _write(self) -> None:
        await self.pipeline.write_loop()
        # Returned: stopping, everything flushed and acknowledged (otherwise the supervisor
        # takes the return for a crash and restarts it).
        self.pipeline.drained.set()
        if self.pipeline.stopping.is_set():
            await _until_cancelled()

    async def _connect(self) -> None:
        await self._connection_loop()
        self._disconnected.set()
        if self.pipeline.stopping.is_set():
            await _until_cancelled()

    async def _stop(self, writer: Supervised, connection: Supervised) -> None:
        """Stop taking messages, flush and acknowledge what we hold, disconnect; bounded."""
        self.pipeline.stop_taking()
        timeout = self._settings.mqtt.shutdown_timeout_seconds
        done = asyncio.gather(self.pipeline.drained.wait(), self._disconnected.wait())
        try:
            async with asyncio.timeout(timeout + 2):
                await done
        except TimeoutError:
            log.warning(
                "MQTT ingest did not stop within %.0f s; %d unacknowledged messages will be "
                "redelivered",
                timeout,
                self.pipeline.waiting,
            )
        await connection.stop()
        await writer.stop()


async def _until_cancelled() -> None:
    await asyncio.get_running_loop().create_future()
