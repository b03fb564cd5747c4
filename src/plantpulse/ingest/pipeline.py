"""The MQTT batching pipeline: bounded queue, backpressure, batches, commit, ordered acks.

    paho read (bridge) --> on_publish: decode + validate, no I/O --> bounded queue
    queue --> writer task: store a batch --> commit --> PUBACK each message, in arrival order

Nothing is acknowledged before it is committed, so a `kill -9` at any moment loses nothing:
the broker redelivers whatever we never acknowledged and the readings' unique key drops the
copies we had already stored. When the writer falls behind we stop reading the socket (the
broker keeps the messages) instead of dropping. A batch the database keeps refusing is split
until the message that causes it is found and dead-lettered. Measurements: docs/ingest.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from datetime import UTC, datetime, timedelta

from plantpulse.db_errors import is_transient
from plantpulse.ingest.decoders import DecodeError, DecoderRegistry, Reason, StatusChange, Telemetry
from plantpulse.ingest.messages import SOURCE, Pending, dead_letters_of, rejections
from plantpulse.ingest.paho_bridge import Link, Publish
from plantpulse.ingest.stats import IngestState
from plantpulse.state import Resources
from plantpulse.telemetry.payloads import Clock, Parsed, Row
from plantpulse.telemetry.service import store_batch

log = logging.getLogger(__name__)

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


class Pipeline:
    """Queue and writer of one process; the connection loop (mqtt.py) feeds it and sets
    `link` and `generation` for each connection."""

    def __init__(self, resources: Resources, registry: DecoderRegistry) -> None:
        self._resources = resources
        self._settings = resources.settings
        self._registry = registry
        self.state = IngestState()
        self._queue: deque[Pending] = deque()
        self._queued_readings = 0
        ingest = self._settings.ingest
        self.max_messages = ingest.queue_max_messages
        self._max_readings = max(ingest.batch_max_readings * QUEUE_READINGS_FACTOR, 1000)
        self._batch_readings = ingest.batch_max_readings
        self._batch_delay = ingest.batch_max_delay_ms / 1000
        self._wait_for_batch = ingest.flush_policy == "delay"
        self._max_payload = ingest.max_payload_bytes
        self.paused = False
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        # Set while the queue has room: the connection loop waits for it before connecting.
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.stopping = asyncio.Event()
        self.drained = asyncio.Event()
        # Bumped per connection: messages of an earlier one are never acknowledged on a later.
        self.generation = 0
        self.link: Link | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def queued_readings(self) -> int:
        return self._queued_readings

    def stop_taking(self) -> None:
        """Stop reading; the writer flushes what is queued and returns."""
        self._pause()
        self.stopping.set()
        self._wake.set()
        self._full.set()
        self.resumed.set()

    # -- the message path (runs inside paho's read, on the event loop) ----------------------

    def on_publish(self, message: Publish) -> None:
        try:
            self._take(message)
        except Exception:  # never unwind into paho's read loop
            log.exception("MQTT message handling failed")

    def _take(self, message: Publish) -> None:
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
            topic = repr(message.raw_topic)[:200]
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
                        dead = rejections(decoded.parsed)
                else:
                    status = decoded
        self._queue.append(
            Pending(
                message.mid,
                message.qos,
                self.generation,
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
        if len(self._queue) >= self.max_messages or self._queued_readings >= self._max_readings:
            self._pause()

    def _pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.resumed.clear()
            if self.link is not None:
                self.link.pause()

    def _maybe_resume(self) -> None:
        if (
            self.paused
            and not self.stopping.is_set()
            and len(self._queue) <= self.max_messages * RESUME_FRACTION
            and self._queued_readings <= self._max_readings * RESUME_FRACTION
        ):
            self.paused = False
            self.resumed.set()
            if self.link is not None:
                self.link.resume()

    # -- the writer -------------------------------------------------------------------------

    async def _next_batch(self) -> list[Pending] | None:
        while not self._queue:
            if self.stopping.is_set():
                return None
            self._wake.clear()
            await self._wake.wait()
        if (
            self._wait_for_batch
            and self._queued_readings < self._batch_readings
            and not self.stopping.is_set()
        ):
            wait = self._queue[0].arrived + self._batch_delay - time.time()
            if wait > 0:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._full.wait()
        batch: list[Pending] = []
        readings = 0
        while self._queue and (readings < self._batch_readings or not batch):
            item = self._queue.popleft()
            batch.append(item)
            readings += len(item.rows)
        self._queued_readings -= readings
        self._maybe_resume()
        return batch

    async def write_loop(self) -> None:
        # Up to `writer_connections` batches are written at once, each in its own transaction
        # and acknowledged after its own commit, but acknowledgements go out in the order the
        # messages came in: MQTT wants PUBACKs in the order of the PUBLISHes (section 4.6).
        # A slot is taken before a batch leaves the queue, so at most that many batches are
        # held outside it (the backpressure bound stays the queue's). A flush never fails:
        # it retries until its batch is committed.
        slots = asyncio.Semaphore(self._settings.ingest.writer_connections)
        previous: asyncio.Task[None] | None = None
        flushes: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()
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
        self, batch: list[Pending], previous: asyncio.Task[None] | None, slots: asyncio.Semaphore
    ) -> None:
        try:
            started = time.monotonic()
            await self._commit(batch)
            self.state.flush_seconds.append(time.monotonic() - started)
            if previous is not None:
                await asyncio.wait([previous])  # its outcome is its own
            self.state.commit_lag_seconds.append(time.time() - batch[0].arrived)
            try:
                self._acknowledge(batch)
            except Exception as exc:  # committed: the broker redelivers, the key dedupes
                log.exception("MQTT acknowledgements failed")
                self.state.error(f"acknowledgements: {type(exc).__name__}: {exc}")
        finally:
            slots.release()

    async def _commit(self, batch: list[Pending], *, dead_lettered: bool = False) -> None:
        """Store a batch, retrying until it is committed; nothing is acknowledged meanwhile.

        Every failure is retried with backoff. A lost or refused connection (db_errors) is
        retried for as long as it takes, each time on a fresh connection (the writer closes
        one that failed); anything else, a few times, then the batch is split until the
        message the database refuses is found and dead-lettered (`_isolate`)."""
        attempt = 0
        permanent = 0
        while True:
            try:
                await self._store(batch)
                return
            except Exception as exc:
                self._retrying(exc, attempt)
                if not is_transient(exc):
                    permanent += 1
                    # When even the dead letter of one message is refused there is nothing
                    # left to split: the database is at fault, keep retrying.
                    if permanent >= PERMANENT_ERROR_ATTEMPTS and not dead_lettered:
                        await self._isolate(batch, exc)
                        return
            await asyncio.sleep(min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2**attempt))
            attempt += 1

    def _retrying(self, exc: BaseException, attempt: int) -> None:
        self.state.counters.write_retries += 1
        self.state.error(f"database: {type(exc).__name__}: {exc}")
        if attempt == 0:
            log.warning("MQTT batch not stored (%s: %s); retrying", type(exc).__name__, exc)

    async def _isolate(self, batch: list[Pending], exc: BaseException) -> None:
        """Split a batch the database keeps refusing, so one bad message can't stall the rest."""
        if len(batch) == 1:
            item = batch[0]
            item.rows = []
            item.status = None
            item.dead = f"{Reason.storage_error}: {type(exc).__name__}: {exc}"[:1000]
            await self._commit(batch, dead_lettered=True)
            return
        half = len(batch) // 2
        await self._commit(batch[:half])
        await self._commit(batch[half:])

    async def _store(self, batch: list[Pending]) -> None:
        """One transaction: readings, status changes, dead letters (telemetry.service)."""
        resources = self._resources
        stored = await store_batch(
            Parsed(rows=[row for item in batch for row in item.rows]),
            catalog=resources.catalog,
            writer=resources.writer,
            auto_register=resources.live.auto_register_machines,
            source=SOURCE,
            statuses=[(i.status.machine_id, i.status.connectivity) for i in batch if i.status],
            feed=resources.connectivity,
            dead_letters_of=functools.partial(dead_letters_of, batch),
        )
        # Counted once, after the commit.
        counters = self.state.counters
        result = stored.written.result
        counters.readings_received += result.received
        counters.readings_stored += result.inserted
        counters.duplicates += result.duplicates
        counters.status_updates += len(stored.applied)
        counters.rejected += stored.dead_letters
        counters.accepted += len(batch) - stored.dead_letters
        counters.batches += 1

    def _acknowledge(self, batch: list[Pending]) -> None:
        connection = self.link
        if connection is None:
            return
        generation = self.generation
        acked = 0
        for item in batch:
            # Messages of an earlier connection are redelivered by the broker: their mids
            # may already name other messages, so they are never acknowledged here.
            if item.qos and item.generation == generation:
                connection.ack(item.mid, item.qos)
                acked += 1
        self.state.counters.acknowledged += acked
