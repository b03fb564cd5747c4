"""The MQTT batching pipeline: bounded queue, backpressure, batches, commit, ordered acks.

    paho read (bridge) --> on_publish: decode + validate, no I/O --> bounded queue
    queue --> writer task: store a batch --> commit --> PUBACK each message, in arrival order

Nothing is acknowledged before it is committed, so a `kill -9` at any moment loses nothing:
the broker redelivers whatever we never acknowledged, and what we had already stored is not
stored again — the readings' unique key drops copies of readings with a device timestamp, the
delivery log (redelivery.py) drops DUP copies of everything else. When the writer falls behind
we stop reading the socket (the broker keeps the messages) instead of dropping. A batch the
database keeps refusing is split until the message that causes it is found and dead-lettered.
If the writer itself crashes (a bug), the batches it had taken go back to the front of the
queue for its restart (mqtt.py supervises it). Measurements: docs/ingest.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import operator
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from plantpulse.db_errors import is_database_error, is_transient
from plantpulse.ingest import redelivery
from plantpulse.ingest.decoders import DecodeError, DecoderRegistry, Reason, StatusChange, Telemetry
from plantpulse.ingest.messages import SOURCE, Pending, dead_letters_of, rejections
from plantpulse.ingest.paho_bridge import Link, Publish
from plantpulse.ingest.stats import IngestState
from plantpulse.state import Resources
from plantpulse.telemetry.payloads import Clock, Parsed, Row
from plantpulse.telemetry.service import store_batch

log = logging.getLogger(__name__)

_TIME = operator.itemgetter(0)
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
        mqtt = self._settings.mqtt
        self.deliveries = redelivery.DeliveryLog(
            mqtt.client_id, keep_seconds=mqtt.session_expiry_seconds
        )
        # Set when PUBACKs went out for recorded messages: the connection loop confirms them
        # with a round trip (redelivery.py).
        self.acked = asyncio.Event()
        # Receive times (readings without a device timestamp) strictly increase, in µs: two
        # readings of one machine and metric must never get the same time (the unique key
        # would take the second for a copy).
        self._last_micros = 0
        # Batches taken from the queue and not yet acknowledged, in order (by sequence).
        self._in_flight: dict[int, list[Pending]] = {}
        self._batches_taken = 0
        self._stall_seconds = ingest.stall_seconds
        # Test hook: awaited with each batch before it is written (to hold or crash the writer).
        self.before_write: Callable[[list[Pending]], Awaitable[None]] | None = None
        # The first batch write of this writer run that failed (not a database error: those
        # are retried); the loop stops taking batches and raises it.
        self._failure: BaseException | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def queued_readings(self) -> int:
        return self._queued_readings

    @property
    def waiting(self) -> int:
        """Messages received and not yet acknowledged (queued or being written)."""
        return len(self._queue) + sum(len(batch) for batch in self._in_flight.values())

    def stalled(self) -> str | None:
        """Why ingest is not making progress, or None: messages have been waiting, and nothing
        has been committed, for longer than `stall_seconds` (for /ready)."""
        waiting = self.waiting
        if not waiting:
            return None
        first = next(iter(self._in_flight.values()), None) or self._queue
        since = max(self.state.committed_at, first[0].arrived)
        idle = time.time() - since
        if idle <= self._stall_seconds:
            return None
        reason = f"{waiting} messages waiting, nothing committed for {idle:.0f} s"
        error = self.state.write_error
        return f"{reason}: {error}" if error else reason

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
        content: bytes | None = None
        if message.qos:
            deliveries = self.deliveries
            if message.dup or deliveries.resending or deliveries.generation != self.generation:
                deliveries.arrived(message.dup, self.generation)
            if message.dup:
                content = redelivery.digest(message.raw_topic, payload)
                if (entry := self.deliveries.is_copy(message.mid, content)) is not None:
                    counters.redelivered += 1
                    copy = self._copy_of(message, arrived)
                    copy.entry = entry
                    self._enqueue(copy)
                    return
        now: datetime | None = None
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = repr(message.raw_topic)[:200]
            dead = f"{Reason.bad_topic}: the topic is not UTF-8"
        if dead is None and len(payload) > self._max_payload:
            dead = f"{Reason.oversized}: {len(payload)} bytes > {self._max_payload}"
        if dead is None:
            now = self._receive_time(arrived)
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
        item = Pending(
            message.mid, message.qos, self.generation, topic, payload, arrived, rows, status, dead
        )
        if message.qos:
            self._track(item, message.raw_topic, content, now)
        self._enqueue(item)

    def _copy_of(self, message: Publish, arrived: float) -> Pending:
        return Pending(
            message.mid, message.qos, self.generation, "", b"", arrived, [], None, None, copy=True
        )

    def _receive_time(self, arrived: float) -> datetime:
        micros = int(arrived * 1_000_000)
        if micros <= self._last_micros:
            micros = self._last_micros + 1
        self._last_micros = micros
        # Exact: a float's error at this magnitude (< 0.25 us) is rounded away.
        return datetime.fromtimestamp(micros / 1_000_000, UTC)

    def _track(
        self, item: Pending, raw_topic: bytes, content: bytes | None, now: datetime | None
    ) -> None:
        """Decide whether a QoS 1 message's packet id is recorded with its batch: yes if the
        unique key cannot recognise a copy of it (readings stamped with the receive time, a
        status change, a dead letter). Decoders stamp such readings with `clock.now`; receive
        times are unique per process, so a reading at `now` is one of this message's."""
        if item.dead is not None or item.status is not None or now in map(_TIME, item.rows):
            content = content or redelivery.digest(raw_topic, item.payload)
            item.entry = self.deliveries.note(item.mid, content)
        elif self.deliveries:
            self.deliveries.forget(item.mid)

    def _enqueue(self, item: Pending) -> None:
        self._queue.append(item)
        rows = item.rows
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
            if self.stopping.is_set() or self._failure is not None:
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
        if self._failure is not None:
            return None
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
        self._failure = None
        try:
            while True:
                await slots.acquire()
                batch = await self._next_batch()
                if self._failure is not None:
                    raise self._failure
                if batch is None:
                    break
                if retired := self.deliveries.take_retired():
                    batch[0].retired = retired  # kept with the batch through its retries
                self._batches_taken += 1
                self._in_flight[self._batches_taken] = batch
                previous = asyncio.create_task(
                    self._flush(self._batches_taken, batch, previous, slots)
                )
                flushes.add(previous)
                previous.add_done_callback(self._flush_done)
                previous.add_done_callback(flushes.discard)
            if previous is not None:
                await previous  # the last one acknowledges after all the others
        finally:
            for task in flushes:
                task.cancel()
            if flushes:
                await asyncio.wait(flushes)
            self._requeue_unacknowledged()

    def _flush_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or (error := task.exception()) is None:
            return
        if self._failure is None:
            self._failure = error
        # Wake the loop, wherever it waits for a batch, to raise it.
        self._wake.set()
        self._full.set()

    def _requeue_unacknowledged(self) -> None:
        """After the writer failed: the batches it had taken and not acknowledged go back to
        the front of the queue, in order, for the restarted writer. Some may be committed
        already; writing them again stores nothing twice (their rows and receive times were
        fixed on arrival; their records get a new row and the earlier one is retired)."""
        if not self._in_flight:
            return
        items = [item for batch in self._in_flight.values() for item in batch]
        self._in_flight.clear()
        self._queue.extendleft(reversed(items))
        self._queued_readings += sum(len(item.rows) for item in items)
        log.warning("MQTT writer stopped with %d messages unacknowledged; requeued", len(items))
        self._wake.set()

    async def _flush(
        self,
        sequence: int,
        batch: list[Pending],
        previous: asyncio.Task[None] | None,
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            if self.before_write is not None:
                await self.before_write(batch)
            started = time.monotonic()
            await self._commit(batch)
            self.state.flush_seconds.append(time.monotonic() - started)
            self.state.committed()
            if previous is not None:
                await asyncio.wait([previous])  # its outcome is its own
            self.state.commit_lag_seconds.append(time.time() - batch[0].arrived)
            # Out of the requeue set before the acks: an ack is never sent twice.
            del self._in_flight[sequence]
            try:
                self._acknowledge(batch)
            except Exception as exc:  # committed: the broker redelivers, the key dedupes
                log.exception("MQTT acknowledgements failed")
                self.state.error(f"acknowledgements: {type(exc).__name__}: {exc}")
        finally:
            slots.release()

    def delivery_changes(self, batch: list[Pending]) -> redelivery.Changes:
        """The delivery-log changes to commit with `batch`: a row with its records (copies
        too: they are acknowledged on this connection) and the rows it retires."""
        changes = redelivery.Changes(self.deliveries.next_key())
        for item in batch:
            if item.entry is not None:
                changes.entries.append(item.entry)
            if item.retired:
                changes.retired += item.retired
        return changes

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
        self.state.write_error = self.state.last_error
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
        """One transaction: readings, status changes, dead letters (telemetry.service), and
        the batch's delivery-log changes (redelivery.py)."""
        resources = self._resources
        changes = self.delivery_changes(batch)
        stored = await store_batch(
            Parsed(rows=[row for item in batch for row in item.rows]),
            catalog=resources.catalog,
            writer=resources.writer,
            auto_register=resources.live.auto_register_machines,
            source=SOURCE,
            statuses=[(i.status.machine_id, i.status.connectivity) for i in batch if i.status],
            feed=resources.connectivity,
            dead_letters_of=functools.partial(dead_letters_of, batch),
            extra=functools.partial(
                redelivery.persist, client_id=self.deliveries.client_id, changes=changes
            )
            if changes
            else None,
        )
        if changes.entries:
            self.deliveries.stored(changes)
        # Counted once, after the commit.
        counters = self.state.counters
        result = stored.written.result
        counters.readings_received += result.received
        counters.readings_stored += result.inserted
        counters.duplicates += result.duplicates
        counters.status_updates += len(stored.applied)
        counters.rejected += stored.dead_letters
        copies = sum(1 for item in batch if item.copy)  # counted as redelivered on arrival
        counters.accepted += len(batch) - stored.dead_letters - copies
        counters.batches += 1

    def _acknowledge(self, batch: list[Pending]) -> None:
        connection = self.link
        if connection is None:
            return
        generation = self.generation
        acked = 0
        recorded: list[redelivery.Entry] = []
        for item in batch:
            # Messages of an earlier connection are redelivered by the broker: their mids
            # may already name other messages, so they are never acknowledged here.
            if item.qos and item.generation == generation:
                connection.ack(item.mid, item.qos)
                acked += 1
                if item.entry is not None:
                    recorded.append(item.entry)
        self.state.counters.acknowledged += acked
        if recorded:
            self.deliveries.acknowledged(recorded)
            self.acked.set()

    async def write_retirements(self) -> None:
        """Delete the records known stale now, not with the next batch: the broker may reuse
        their ids at once (redelivery.py). On a database error the next batch takes them."""
        retired = self.deliveries.take_retired()
        if not retired:
            return
        changes = redelivery.Changes(0, retired=retired)
        try:
            async with self._resources.pg.acquire() as conn, conn.transaction():
                await redelivery.persist(conn, self.deliveries.client_id, changes)
        except Exception as exc:
            if not is_database_error(exc):
                raise
            self.deliveries.give_back(retired)
