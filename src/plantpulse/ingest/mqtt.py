"""MQTT ingest: subscribe, decode, batch, commit, and only then acknowledge.

    broker --PUBLISH--> paho read (our callback: decode + validate, no I/O) --> bounded queue
    queue --> writer task: COPY batch (+ dead letters, status) --> commit --> PUBACK each message

aiomqtt owns the connection (connect, subscribe, keepalive, socket <-> event loop), as the user
asked; four things are done underneath it, on its paho client, because aiomqtt 2.5 has no API
for them (all in `_Connection`, the only place that touches private attributes):

- manual acknowledgement (`manual_ack_set(True)` + `ack(mid, 1)` after the commit), so a
  `kill -9` at any moment loses nothing: the broker redelivers whatever we never acknowledged
  and the readings' unique key drops the copies we had already stored;
- our own `on_message` instead of aiomqtt's queue and `client.messages` iterator, which cost an
  asyncio task and a queue hop per message and, if bounded, silently drop on overflow;
- a read-buffered socket (paho reads each packet with 3+ `recv` calls of 1-2 bytes) and a
  reader callback that drains every buffered packet, and that stops reading while our queue is
  full (backpressure: TCP and the broker hold the rest, nothing is dropped).
- our own handler for the PUBLISH packets we get (QoS 0/1 without MQTT 5 properties), which
  skips paho's per-message `Properties` and `MQTTMessage` objects; the rest goes to paho's.

The in-flight window (unacknowledged QoS 1 messages the broker sends us) is the MQTT 5 Receive
Maximum we announce; the broker queues everything beyond it. Measurements: docs/ingest.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import asyncpg
import paho.mqtt.client as paho_mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from plantpulse.ingest import dead_letters
from plantpulse.ingest.decoders import (
    DecodeError,
    DecoderRegistry,
    Reason,
    StatusChange,
    Telemetry,
    json_registry,
)
from plantpulse.machines import connectivity
from plantpulse.state import Resources
from plantpulse.telemetry.payloads import Clock, Parsed, Row
from plantpulse.telemetry.service import keep_known_machines

log = logging.getLogger(__name__)

SOURCE = "mqtt"
# Readings (not messages) the queue may hold before we stop reading; messages are bounded by
# settings.ingest.queue_max_messages.
QUEUE_READINGS_FACTOR = 8
# Resume reading once the queue has drained below this fraction of its bounds.
RESUME_FRACTION = 0.5
RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
# A database error that is not a lost connection is retried this often before the batch is
# split to find (and dead-letter) the message that causes it.
PERMANENT_ERROR_ATTEMPTS = 3
LATENCY_SAMPLES = 2048
SOCKET_READ_BYTES = 65536
# Packets handled per reader callback before yielding to the event loop: a full 64 KiB buffer
# is hundreds of messages (tens of ms), which the writer's database round trips and the
# WebSocket sends would otherwise wait behind.
READ_SLICE_PACKETS = 64

# Errors that mean "the database is unreachable right now": retry the same batch forever.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.ObjectNotInPrerequisiteStateError,  # "database ... is not currently accepting..."
    # Deadlock or serialization failure: two batches being written at once collided on the
    # same readings (a redelivery next to its original); the one rolled back simply retries.
    asyncpg.TransactionRollbackError,
)


@dataclass(slots=True)
class _Pending:
    """One received message between the callback and its acknowledgement."""

    mid: int
    qos: int
    generation: int
    topic: str
    payload: bytes
    arrived: float
    rows: list[Row]
    status: StatusChange | None
    # "<reason code>: <detail>" when the message (or part of it) is a dead letter.
    dead: str | None


@dataclass
class IngestCounters:
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    readings_received: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    status_updates: int = 0
    batches: int = 0
    acknowledged: int = 0
    write_retries: int = 0
    reconnects: int = 0


@dataclass
class IngestState:
    counters: IngestCounters = field(default_factory=IngestCounters)
    flush_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    # Time from a message's arrival to its commit, per batch (its oldest message).
    commit_lag_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    last_error: str | None = None
    last_error_at: datetime | None = None
    connected: bool = False
    subscribed: bool = False
    # The most messages the queue has held (it never exceeds queue_max_messages).
    queue_high_water: int = 0
    connected_since: datetime | None = None

    def error(self, message: str) -> None:
        self.last_error = message[:500]
        self.last_error_at = datetime.now(UTC)


def percentiles(samples: Sequence[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"p50_ms": at(0.5), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": at(1.0)}


class _BufferedSocket:
    """Serves paho's small reads (1 byte of packet type, 1-4 of length, then the rest) from a
    64 KiB buffer: one `recv` per many messages instead of three or more per message."""

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(SOCKET_READ_BYTES)
            if not data:
                return data
            self._buf, self._pos = data, 0
        chunk = self._buf[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk

    def pending(self) -> int:
        return len(self._buf) - self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Publish:
    """What our callback reads of a PUBLISH (paho's MQTTMessage also creates a lock each)."""

    __slots__ = ("_topic", "mid", "payload", "qos")

    def __init__(self, mid: int, qos: int, topic: bytes, payload: bytes) -> None:
        self.mid = mid
        self.qos = qos
        self._topic = topic
        self.payload = payload

    @property
    def topic(self) -> str:
        return self._topic.decode("utf-8")


class _Connection:
    """One aiomqtt client with our message path underneath (see the module docstring)."""

    def __init__(self, ingest: MqttIngest, client: aiomqtt.Client) -> None:
        self.client = client
        self.paho: paho_mqtt.Client = client._client
        self._ingest = ingest
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = None
        self._buffer: _BufferedSocket | None = None
        self.paho.manual_ack_set(True)
        self.paho.on_message = ingest._on_message
        self._paho_handle_publish = self.paho._handle_publish
        self.paho._handle_publish = self._handle_publish  # type: ignore[method-assign]
        self._aiomqtt_socket_open = self.paho.on_socket_open
        self.paho.on_socket_open = self._on_socket_open

    def _on_socket_open(self, client: paho_mqtt.Client, userdata: Any, sock: Any) -> None:
        # Runs in aiomqtt's connect thread, before CONNECT is sent.
        if self._aiomqtt_socket_open is not None:
            self._aiomqtt_socket_open(client, userdata, sock)
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer = _BufferedSocket(sock)
            client._sock = self._buffer
        self._fd = sock.fileno()
        # After aiomqtt's own add_reader (scheduled just before), so ours replaces it.
        self._loop.call_soon_threadsafe(self._install_reader)

    def _install_reader(self) -> None:
        if self._ingest.paused:
            self.pause()
        else:
            self.resume()

    def _on_readable(self) -> None:
        if self._ingest.paused or self.paho.socket() is None:
            return
        try:
            for _ in range(READ_SLICE_PACKETS):
                self.paho.loop_read()
                if self._ingest.paused or self._buffer is None or not self._buffer.pending():
                    return
            # Packets already buffered would not make the socket readable again.
            self._loop.call_soon(self._on_readable)
        except Exception as exc:
            # As aiomqtt does: a read failure means the connection is gone.
            disconnected = self.client._disconnected
            if not disconnected.done():
                disconnected.set_exception(exc)

    def pause(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)

    def resume(self) -> None:
        if self._fd is None or self.paho.socket() is None or self._ingest.paused:
            return
        self._loop.add_reader(self._fd, self._on_readable)
        if self._buffer is not None and self._buffer.pending():
            # Packets already buffered would not make the socket readable again.
            self._loop.call_soon(self._on_readable)

    def ack(self, mid: int, qos: int) -> None:
        self.paho.ack(mid, qos)

    def _handle_publish(self) -> MQTTErrorCode:
        """paho's PUBLISH handling for the packets we get (QoS 0/1, no MQTT 5 properties),
        without what we never use: for MQTT 5, paho builds and parses a `Properties` object
        per message, ~20 % of our message path (docs/ingest.md). Anything else goes to paho."""
        packet = self.paho._in_packet
        header: int = packet["command"]
        body: bytes | bytearray = packet["packet"]
        qos = (header & 0x06) >> 1
        topic_end = 2 + (body[0] << 8 | body[1]) if len(body) >= 2 else 0
        mid_end = topic_end + 2 if qos else topic_end
        # MQTT 5 puts the properties' length (a variable byte integer) before the payload.
        properties = 1 if self.paho._protocol == paho_mqtt.MQTTv5 else 0
        if (
            qos > 1
            or topic_end <= 2
            or mid_end + properties > len(body)
            or (properties and body[mid_end] != 0)
        ):
            return self._paho_handle_publish()
        message = _Publish(
            body[mid_end - 2] << 8 | body[mid_end - 1] if qos else 0,
            qos,
            bytes(body[2:topic_end]),
            bytes(body[mid_end + properties :]),
        )
        self._ingest._on_message(self.paho, None, message)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    async def until_disconnected(self) -> None:
        # Nothing enters aiomqtt's queue (our on_message replaced its callback), so this
        # public iterator only ends by raising MqttError when the connection is lost.
        async for _ in self.client.messages:
            pass


class MqttIngest:
    """The MQTT ingest pipeline of one process; `running()` is entered by the lifespan."""

    def __init__(self, resources: Resources, registry: DecoderRegistry | None = None) -> None:
        self._resources = resources
        self._settings = resources.settings
        self._registry = registry or json_registry(resources.settings.mqtt.topic_prefix)
        self.state = IngestState()
        self._queue: deque[_Pending] = deque()
        self._queued_readings = 0
        ingest = self._settings.ingest
        self._max_messages = ingest.queue_max_messages
        self._max_readings = max(ingest.batch_max_readings * QUEUE_READINGS_FACTOR, 1000)
        self._batch_readings = ingest.batch_max_readings
        self._batch_delay = ingest.batch_max_delay_ms / 1000
        self._wait_for_batch = ingest.flush_policy == "delay"
        self._max_payload = ingest.max_payload_bytes
        self.paused = False
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._stopping = asyncio.Event()
        self._drained = asyncio.Event()
        self._generation = 0
        self._connection: _Connection | None = None
        self._connect_attempt = 0
        self._next_attempt_at: float | None = None

    # -- the message path (runs inside paho's read, on the event loop) ----------------------

    def _on_message(
        self, client: Any, userdata: Any, message: paho_mqtt.MQTTMessage | _Publish
    ) -> None:
        try:
            self._take(message)
        except Exception:  # never unwind into paho's read loop
            log.exception("MQTT message handling failed")

    def _take(self, message: paho_mqtt.MQTTMessage | _Publish) -> None:
        counters = self.state.counters
        counters.received += 1
        arrived = time.time()
        payload = bytes(message.payload)
        rows: list[Row] = []
        status: StatusChange | None = None
        dead: str | None = None
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = repr(message._topic)[:200]
            dead = f"{Reason.bad_topic}: the topic is not UTF-8"
        if dead is None and len(payload) > self._max_payload:
            dead = f"{Reason.oversized}: {len(payload)} bytes > {self._max_payload}"
        if dead is None:
            now = datetime.fromtimestamp(arrived, UTC)
            clock = Clock(now, timedelta(seconds=self._resources.live.future_skew_seconds))
            try:
                decoded = self._registry.decode(topic, payload, clock)
            except DecodeError as exc:
                dead = str(exc)
            except Exception as exc:  # a decoder bug must not stall the stream
                log.exception("decoder failed on topic %s", topic)
                dead = f"{Reason.invalid_payload}: decoder error {type(exc).__name__}"
            else:
                if isinstance(decoded, Telemetry):
                    rows = decoded.parsed.rows
                    if decoded.parsed.rejected:
                        dead = _rejections(decoded.parsed)
                else:
                    status = decoded
        self._queue.append(
            _Pending(
                message.mid,
                message.qos,
                self._generation,
                topic,
                payload,
                arrived,
                rows,
                status,
                dead,
            )
        )
        self._queued_readings += len(rows)
        depth = len(self._queue)
        if depth > self.state.queue_high_water:
            self.state.queue_high_water = depth
        if depth == 1:
            self._wake.set()
        if self._queued_readings >= self._batch_readings:
            self._full.set()
        if len(self._queue) >= self._max_messages or self._queued_readings >= self._max_readings:
            self._pause()

    def _pause(self) -> None:
        if not self.paused:
            self.paused = True
            self._resumed.clear()
            if self._connection is not None:
                self._connection.pause()

    def _maybe_resume(self) -> None:
        if (
            self.paused
            and not self._stopping.is_set()
            and len(self._queue) <= self._max_messages * RESUME_FRACTION
            and self._queued_readings <= self._max_readings * RESUME_FRACTION
        ):
            self.paused = False
            self._resumed.set()
            if self._connection is not None:
                self._connection.resume()

    # -- the writer -------------------------------------------------------------------------

    async def _next_batch(self) -> list[_Pending] | None:
        while not self._queue:
            if self._stopping.is_set():
                return None
            self._wake.clear()
            await self._wake.wait()
        if (
            self._wait_for_batch
            and self._queued_readings < self._batch_readings
            and not self._stopping.is_set()
        ):
            wait = self._queue[0].arrived + self._batch_delay - time.time()
            if wait > 0:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._full.wait()
        batch: list[_Pending] = []
        readings = 0
        while self._queue and (readings < self._batch_readings or not batch):
            item = self._queue.popleft()
            batch.append(item)
            readings += len(item.rows)
        self._queued_readings -= readings
        self._maybe_resume()
        return batch

    async def _write_loop(self) -> None:
        # Up to `writer_connections` batches are written at once, each in its own transaction
        # and acknowledged after its own commit, but acknowledgements go out in the order the
        # messages came in: MQTT wants PUBACKs in the order of the PUBLISHes (section 4.6).
        # A slot is taken before a batch leaves the queue, so at most that many batches are
        # held outside it (the backpressure bound stays the queue's).
        slots = asyncio.Semaphore(self._settings.ingest.writer_connections)
        previous: asyncio.Task[None] | None = None
        flushes: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()
                if previous is not None and previous.done() and (error := previous.exception()):
                    raise error
                batch = await self._next_batch()
                if batch is None:
                    break
                previous = asyncio.create_task(self._flush(batch, previous, slots))
                flushes.add(previous)
                previous.add_done_callback(flushes.discard)
            if previous is not None:
                await previous  # the last one acknowledges after all the others
        finally:
            for task in list(flushes):
                task.cancel()

    async def _flush(
        self, batch: list[_Pending], previous: asyncio.Task[None] | None, slots: asyncio.Semaphore
    ) -> None:
        try:
            started = time.monotonic()
            await self._commit(batch)
            self.state.flush_seconds.append(time.monotonic() - started)
            if previous is not None:
                await previous
            self.state.commit_lag_seconds.append(time.time() - batch[0].arrived)
            self._acknowledge(batch)
        finally:
            slots.release()

    async def _commit(self, batch: list[_Pending]) -> None:
        """Store a batch, retrying until it is committed; nothing is acknowledged meanwhile."""
        attempt = 0
        permanent = 0
        stored = False
        while True:
            try:
                stored = await self._store(batch, rows_stored=stored)
                return
            except _TRANSIENT as exc:
                self._retrying(exc, attempt)
            except asyncpg.PostgresError as exc:
                permanent += 1
                self._retrying(exc, attempt)
                if permanent >= PERMANENT_ERROR_ATTEMPTS:
                    await self._isolate(batch, exc)
                    return
            await asyncio.sleep(min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2**attempt))
            attempt += 1

    def _retrying(self, exc: BaseException, attempt: int) -> None:
        self.state.counters.write_retries += 1
        self.state.error(f"database: {type(exc).__name__}: {exc}")
        if attempt == 0:
            log.warning("MQTT batch not stored (%s: %s); retrying", type(exc).__name__, exc)

    async def _isolate(self, batch: list[_Pending], exc: BaseException) -> None:
        """Split a batch the database keeps refusing, so one bad message can't stall the rest."""
        if len(batch) == 1:
            item = batch[0]
            item.rows = []
            item.dead = f"{Reason.storage_error}: {type(exc).__name__}: {exc}"[:1000]
            await self._commit(batch)
            return
        half = len(batch) // 2
        await self._commit(batch[:half])
        await self._commit(batch[half:])

    async def _store(self, batch: list[_Pending], *, rows_stored: bool) -> bool:
        resources = self._resources
        counters = self.state.counters
        rows = [row for item in batch for row in item.rows]
        unknown: set[uuid.UUID] = set()
        if rows and not rows_stored:
            parsed = Parsed(rows=rows)
            kept = await keep_known_machines(
                resources.catalog, parsed, auto_register=resources.live.auto_register_machines
            )
            if kept is not parsed:
                unknown = {r[1] for r in rows} - {r[1] for r in kept.rows}
            result = await resources.writer.write(kept.rows, source=SOURCE)
            counters.readings_received += result.received
            counters.readings_stored += result.inserted
            counters.duplicates += result.duplicates
        letters: list[dead_letters.DeadLetter] = []
        statuses = [
            (item.status.machine_id, item.status.connectivity) for item in batch if item.status
        ]
        if not statuses and not unknown and not any(item.dead for item in batch):
            # The common case: readings only, all stored; no second transaction to wait for.
            counters.accepted += len(batch)
            counters.batches += 1
            return True
        async with resources.pg.acquire() as conn, conn.transaction():
            applied = await connectivity.record(conn, statuses) if statuses else []
            updated = {change.machine_id for change in applied}
            for item in batch:
                reasons = [item.dead] if item.dead else []
                if unknown and item.rows:
                    missing = sorted({str(r[1]) for r in item.rows if r[1] in unknown})
                    if missing:
                        reasons.append(
                            f"{Reason.unknown_machine}: not registered: {', '.join(missing[:5])}"
                        )
                if item.status and item.status.machine_id not in updated:
                    reasons.append(
                        f"{Reason.unknown_machine}: machine {item.status.machine_id} "
                        "is not registered"
                    )
                if reasons:
                    letters.append(
                        dead_letters.DeadLetter(
                            received_at=datetime.fromtimestamp(item.arrived, UTC),
                            source=SOURCE,
                            topic=item.topic,
                            reason="; ".join(reasons),
                            payload=item.payload,
                        )
                    )
            await dead_letters.record(conn, letters)
        resources.connectivity.publish(applied)
        counters.status_updates += len(applied)
        counters.rejected += len(letters)
        counters.accepted += len(batch) - len(letters)
        counters.batches += 1
        return True

    def _acknowledge(self, batch: list[_Pending]) -> None:
        connection = self._connection
        if connection is None:
            return
        generation = self._generation
        acked = 0
        for item in batch:
            # Messages of an earlier connection are redelivered by the broker: their mids
            # may already name other messages, so they are never acknowledged here.
            if item.qos and item.generation == generation:
                connection.ack(item.mid, item.qos)
                acked += 1
        self.state.counters.acknowledged += acked

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
        while not self._stopping.is_set():
            # Connecting while our queue is full would only fill the in-flight window again.
            await self._resumed.wait()
            if self._stopping.is_set():
                return
            client = self._client()
            connection = _Connection(self, client)
            # Set before connecting: a resumed session delivers right after CONNACK.
            self._generation += 1
            self._connection = connection
            try:
                async with client:
                    self._connected(connection)
                    await client.subscribe(self.topic_filter, qos=1)
                    self.state.subscribed = True
                    log.info("MQTT subscribed to %s", self.topic_filter)
                    await self._until_stopped_or_lost(connection)
            except aiomqtt.MqttError as exc:
                self.state.error(f"broker {mqtt.host}:{mqtt.port}: {exc}")
                if self.state.connected or self._connect_attempt == 0:
                    log.warning("MQTT broker %s:%s: %s", mqtt.host, mqtt.port, exc)
            finally:
                self._connection = None
                self._generation += 1
                was_connected = self.state.connected
                self.state.connected = False
                self.state.subscribed = False
                self.state.connected_since = None
            if self._stopping.is_set():
                return
            if was_connected:
                self._connect_attempt = 0
                self.state.counters.reconnects += 1
            delay = min(mqtt.reconnect_max_seconds, 0.5 * 2**self._connect_attempt)
            delay *= 0.8 + 0.4 * random.random()  # noqa: S311 - jitter, not cryptography
            self._connect_attempt += 1
            self._next_attempt_at = time.time() + delay
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            self._next_attempt_at = None

    def _connected(self, connection: _Connection) -> None:
        mqtt = self._settings.mqtt
        self.state.connected = True
        self.state.connected_since = datetime.now(UTC)
        self._connect_attempt = 0
        log.info("MQTT connected to %s:%s as %s", mqtt.host, mqtt.port, mqtt.client_id)

    async def _until_stopped_or_lost(self, connection: _Connection) -> None:
        lost = asyncio.ensure_future(connection.until_disconnected())
        stop = asyncio.ensure_future(self._stopping.wait())
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
                await self._drained.wait()

    # -- lifecycle --------------------------------------------------------------------------

    def status(self) -> tuple[bool, str | None, dict[str, Any] | None]:
        """For /ready: (up, detail, info)."""
        mqtt = self._settings.mqtt
        info: dict[str, Any] = {
            "broker": f"{mqtt.host}:{mqtt.port}",
            "client_id": mqtt.client_id,
            "subscription": self.topic_filter,
            "queue_depth": len(self._queue),
            "paused": self.paused,
        }
        if self.state.connected:
            return True, None, info
        detail = self.state.last_error or "connecting"
        if self._next_attempt_at is not None:
            wait = max(0.0, self._next_attempt_at - time.time())
            detail = f"{detail} (next attempt in {wait:.1f} s)"
        return False, detail, info

    def snapshot(self) -> dict[str, Any]:
        """Counters and gauges for `GET /api/v1/ingest/stats`."""
        counters = self.state.counters
        return {
            "enabled": True,
            "connected": self.state.connected,
            "connected_since": self.state.connected_since,
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
            "queue_depth": len(self._queue),
            "queue_readings": self._queued_readings,
            "queue_capacity": self._max_messages,
            "queue_high_water": self.state.queue_high_water,
            "paused": self.paused,
            "flush_latency": percentiles(self.state.flush_seconds),
            "commit_lag": percentiles(self.state.commit_lag_seconds),
            "last_error": self.state.last_error,
            "last_error_at": self.state.last_error_at,
        }

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MqttIngest]:
        writer = asyncio.create_task(self._write_loop(), name="mqtt-writer")
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
        self._drained.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("MQTT writer stopped", exc_info=task.exception())

    async def _stop(self, writer: asyncio.Task[None], connection: asyncio.Task[None]) -> None:
        """Stop taking messages, flush and acknowledge what we hold, disconnect; bounded."""
        self._pause()
        self._stopping.set()
        self._wake.set()
        self._full.set()
        self._resumed.set()
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
                len(self._queue),
            )


def _rejections(parsed: Parsed) -> str:
    shown = "; ".join(f"{r.where}: {r.reason}" for r in parsed.rejected[:5])
    more = f" (+{len(parsed.rejected) - 5} more)" if len(parsed.rejected) > 5 else ""
    total = len(parsed.rows) + len(parsed.rejected)
    return f"{Reason.rejected_values}: {len(parsed.rejected)} of {total} rejected: {shown}{more}"
