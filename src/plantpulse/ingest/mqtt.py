"""MQTT ingest: the connection to the broker, its status, and the pipeline's lifecycle.

The batching pipeline (queue, backpressure, commit, ordered acks) is `pipeline.py`; everything
that reaches under aiomqtt/paho is `paho_bridge.py`. This module connects with a persistent
session (never a clean start: the session holds our subscription and every message we have not
acknowledged), subscribes at QoS 1, reconnects with backoff, and reports status.

The in-flight window (unacknowledged QoS 1 messages the broker sends us) is the MQTT 5 Receive
Maximum we announce; the broker queues everything beyond it. Measurements: docs/ingest.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from plantpulse.ingest.decoders import DecoderRegistry, json_registry
from plantpulse.ingest.paho_bridge import Link, check_compatible
from plantpulse.ingest.pipeline import Pipeline
from plantpulse.ingest.stats import IngestState, percentiles
from plantpulse.state import Resources

log = logging.getLogger(__name__)


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
        # Why the writer task ended, if it ended before we asked it to (a bug: /ready says so).
        self._writer_failure: str | None = None

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

    async def _connection_loop(self) -> None:
        mqtt = self._settings.mqtt
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

    def _connected(self, connection: Link) -> None:
        mqtt = self._settings.mqtt
        self.pipeline.state.connected = True
        self.pipeline.state.connected_since = datetime.now(UTC)
        self._connect_attempt = 0
        log.info("MQTT connected to %s:%s as %s", mqtt.host, mqtt.port, mqtt.client_id)

    async def _until_stopped_or_lost(self, connection: Link) -> None:
        lost = asyncio.ensure_future(connection.until_disconnected())
        stop = asyncio.ensure_future(self.pipeline.stopping.wait())
        try:
            await asyncio.wait({lost, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not lost.done():
                lost.cancel()
        if lost.done() and not lost.cancelled() and lost.exception() is not None:
            raise aiomqtt.MqttError(f"connection lost: {lost.exception()}")
        # Stopping: the writer flushes and acknowledges before we disconnect.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.mqtt.shutdown_timeout_seconds):
                await self.pipeline.drained.wait()

    # -- lifecycle --------------------------------------------------------------------------

    def status(self) -> tuple[bool, str | None, dict[str, Any] | None]:
        """For /ready: (up, detail, info)."""
        mqtt = self._settings.mqtt
        info: dict[str, Any] = {
            "broker": f"{mqtt.host}:{mqtt.port}",
            "client_id": mqtt.client_id,
            "subscription": self.topic_filter,
            "queue_depth": self.pipeline.queue_depth,
            "paused": self.pipeline.paused,
        }
        if self._writer_failure is not None:
            return False, self._writer_failure, info
        if self.pipeline.state.connected:
            return True, None, info
        detail = self.pipeline.state.last_error or "connecting"
        if self._next_attempt_at is not None:
            wait = max(0.0, self._next_attempt_at - time.time())
            detail = f"{detail} (next attempt in {wait:.1f} s)"
        return False, detail, info

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
        writer = asyncio.create_task(self.pipeline.write_loop(), name="mqtt-writer")
        connection = asyncio.create_task(self._connection_loop(), name="mqtt-connection")
        writer.add_done_callback(self._drained_callback)
        self._resources.extras["mqtt_status"] = self.status
        self._resources.extras["mqtt_ingest"] = self
        try:
            yield self
        finally:
            await self._stop(writer, connection)
            self._resources.extras.pop("mqtt_status", None)
            self._resources.extras.pop("mqtt_ingest", None)

    def _drained_callback(self, task: asyncio.Task[None]) -> None:
        self.pipeline.drained.set()
        error = None if task.cancelled() else task.exception()
        if error is not None or not self.pipeline.stopping.is_set():
            # Nothing more is stored or acknowledged; the broker keeps the messages for the
            # next start. /ready reports MQTT down from now on.
            why = f"{type(error).__name__}: {error}" if error is not None else "it returned"
            self._writer_failure = f"the writer stopped: {why}"[:500]
            self.pipeline.state.error(self._writer_failure)
            log.error("MQTT writer stopped; restart the process", exc_info=error)

    async def _stop(self, writer: asyncio.Task[None], connection: asyncio.Task[None]) -> None:
        """Stop taking messages, flush and acknowledge what we hold, disconnect; bounded."""
        self.pipeline.stop_taking()
        timeout = self._settings.mqtt.shutdown_timeout_seconds
        _, pending = await asyncio.wait({writer, connection}, timeout=timeout + 2)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if pending:
            log.warning(
                "MQTT ingest did not stop within %.0f s; %d unacknowledged messages will be "
                "redelivered",
                timeout,
                self.pipeline.queue_depth,
            )
