"""The event hub: committed readings and alerts in, per-connection buffers out.

- The writer calls `on_commit` after every commit (any source). It only puts the batch on a
  bounded queue; when the queue is full the batch is dropped *for the live view* and counted
  (`dropped_batches`) — the readings are in the database either way, and ingest never waits.
- A hub task turns batches into `reading` events and `publish`es them; a process with no
  subscribed connection and no Redis skips them, and builds no per-connection events for
  machines nobody here subscribed to.
- `publish` delivers to this process's connections at once and, with Redis, sends the events
  to the other processes on `<prefix>events`; each process delivers what it receives to its own
  connections and skips what it sent itself, so nobody gets an event twice.
- Machine connectivity changes committed by MQTT ingest (`resources.connectivity`) become
  `machine_status` events the same way; the machines API publishes status changes itself,
  after its request committed.
- Delivery never awaits a socket: each connection has a bounded queue drained by its own task.
  A connection whose queue overflows is marked; its handler tells the client and closes it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from typing import Any

from redis.asyncio import Redis

from plantpulse.config import RealtimeSettings
from plantpulse.machines.connectivity import ConnectivityChange
from plantpulse.realtime.broadcast import Broadcast
from plantpulse.realtime.events import Event, dumps, machine_status_event, reading_bodies
from plantpulse.state import Resources
from plantpulse.supervisor import Supervised, Supervisor
from plantpulse.telemetry.writer import CommittedBatch, StoredRow

log = logging.getLogger(__name__)

EXTRA = "hub"


class Subscriber:
    """One connection's subscriptions, permissions and bounded outgoing buffer."""

    def __init__(
        self, hub: Hub, *, include_invalid: bool, include_alerts: bool, buffer: int
    ) -> None:
        self._hub = hub
        self.include_invalid = include_invalid
        self.include_alerts = include_alerts
        self.machine_ids: set[uuid.UUID] = set()
        self.all = False
        # Event types this connection wants (None: all); replies are not filtered.
        self.types: frozenset[str] | None = None
        # (event type, JSON text): WebSocket sends the text, SSE also names the event.
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=buffer)
        self.overflowed = asyncio.Event()
        self.delivered = 0

    def subscribe(self, machine_ids: Iterable[uuid.UUID]) -> None:
        added = set(machine_ids) - self.machine_ids
        self.machine_ids |= added
        self._hub._index_add(self, added)

    def subscribe_all(self, types: Iterable[str] | None = None) -> None:
        self.all = True
        self.types = None if types is None else frozenset(types)
        self._hub._all.add(self)

    def unsubscribe(self, machine_ids: Iterable[uuid.UUID] | None = None) -> None:
        """Stop receiving the given machines; None = everything (including subscribe_all)."""
        removed = set(self.machine_ids) if machine_ids is None else set(machine_ids)
        removed &= self.machine_ids
        self.machine_ids -= removed
        self._hub._index_remove(self, removed)
        if machine_ids is None:
            self.all = False
            self.types = None
            self._hub._all.discard(self)

    def offer(self, event: Event) -> None:
        if event.type == "alert" and not self.include_alerts:
            return
        if self.types is not None and event.type not in self.types:
            return
        if self.overflowed.is_set():
            return
        text = event.text(include_invalid=self.include_invalid)
        if text is not None and self.put(event.type, text):
            self.delivered += 1

    def put(self, kind: str, text: str) -> bool:
        """Queue a message for the client (events and replies alike, so they stay in order)."""
        try:
            self.queue.put_nowait((kind, text))
        except asyncio.QueueFull:
            self.overflowed.set()
            return False
        return True

    def close(self) -> None:
        self.unsubscribe()
        self._hub._subscribers.discard(self)


class Hub:
    def __init__(
        self,
        settings: RealtimeSettings,
        *,
        redis: Redis | None,
        prefix: str,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._settings = settings
        self._supervisor = supervisor or Supervisor()
        self._redis = redis
        self._channel = f"{prefix}events"
        self._batches: asyncio.Queue[CommittedBatch] = asyncio.Queue(
            maxsize=settings.hub_queue_batches
        )
        self._subscribers: set[Subscriber] = set()
        self._by_machine: dict[uuid.UUID, set[Subscriber]] = {}
        self._all: set[Subscriber] = set()
        self._broadcast: Broadcast | None = None
        self._task: Supervised | None = None
        self.dropped_batches = 0
        self.published = 0

    @property
    def connections(self) -> int:
        return len(self._subscribers)

    @property
    def fanout(self) -> str:
        return "redis" if self._broadcast is not None else "in-process"

    def subscriber(self, *, include_invalid: bool, include_alerts: bool) -> Subscriber:
        sub = Subscriber(
            self,
            include_invalid=include_invalid,
            include_alerts=include_alerts,
            buffer=self._settings.client_buffer_events,
        )
        self._subscribers.add(sub)
        return sub

    def _index_add(self, sub: Subscriber, machine_ids: Iterable[uuid.UUID]) -> None:
        for machine_id in machine_ids:
            self._by_machine.setdefault(machine_id, set()).add(sub)

    def _index_remove(self, sub: Subscriber, machine_ids: Iterable[uuid.UUID]) -> None:
        for machine_id in machine_ids:
            subs = self._by_machine.get(machine_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_machine[machine_id]

    def on_commit(self, batch: CommittedBatch) -> None:
        """Writer listener: never blocks, never raises."""
        try:
            self._batches.put_nowait(batch)
        except asyncio.QueueFull:
            self.dropped_batches += 1
            if self.dropped_batches == 1 or self.dropped_batches % 100 == 0:
                log.warning(
                    "live events falling behind ingest: %d batches not streamed (they are stored)",
                    self.dropped_batches,
                )

    def on_connectivity(self, change: ConnectivityChange) -> None:
        """ConnectivityFeed listener (called after the commit): never blocks."""
        self.publish(
            [
                machine_status_event(
                    change.machine_id,
                    status=change.status,
                    connectivity=change.connectivity,
                    last_seen_at=change.last_seen_at,
                )
            ]
        )

    def publish(self, events: list[Event]) -> None:
        """Deliver committed events here and in every other process."""
        if not events:
            return
        self.published += len(events)
        self._deliver(events)
        if self._broadcast is not None:
            # The same JSON the local clients got (cached on the event), not a second encoding.
            self._broadcast.publish_json("[" + ",".join(e.full_text() for e in events) + "]")

    def publish_readings(self, rows: Sequence[StoredRow]) -> None:
        """`publish` for committed readings, without per-event work that nobody would see: the
        Redis fan-out gets the whole batch in one encoding, and `Event`s (encoded per event) are
        only made for machines that a connection of this process subscribed to."""
        if self._broadcast is None and not self._all and not self._by_machine:
            return
        bodies = reading_bodies(rows)
        if not bodies:
            return
        self.published += len(bodies)
        if self._all:
            self._deliver([Event(body, machine_id=body["machine_id"]) for body in bodies])
        elif self._by_machine:
            wanted = self._by_machine
            self._deliver(
                [
                    Event(body, machine_id=body["machine_id"])
                    for body in bodies
                    if body["machine_id"] in wanted
                ]
            )
        if self._broadcast is not None:
            self._broadcast.publish_json(dumps(bodies))

    def _deliver(self, events: Iterable[Event]) -> None:
        every = self._all
        for event in events:
            targets = self._by_machine.get(event.machine_id) if event.machine_id else None
            for sub in every:
                sub.offer(event)
            if targets:
                for sub in targets:
                    if not sub.all:
                        sub.offer(event)

    def _remote(self, payload: Any) -> None:
        # Another process's batch: only the events someone here may receive become `Event`s.
        if self._all:
            self._deliver([Event(body) for body in payload])
        elif self._by_machine:
            wanted = {str(machine_id) for machine_id in self._by_machine}
            self._deliver([Event(body) for body in payload if body.get("machine_id") in wanted])

    async def _run(self) -> None:
        while True:
            batch = await self._batches.get()
            try:
                self.publish_readings(batch.rows)
            except Exception:  # a bad batch must not stop the live view
                log.exception("could not publish a committed batch")

    async def start(self) -> None:
        if self._redis is not None:
            self._broadcast = Broadcast(
                self._redis,
                self._channel,
                on_message=self._remote,
                supervisor=self._supervisor,
            )
            await self._broadcast.start()
        self._task = self._supervisor.spawn("realtime-hub", self._run)

    async def stop(self) -> None:
        if self._task is not None:
            await self._task.stop()
        if self._broadcast is not None:
            await self._broadcast.stop()


async def start_hub(resources: Resources, stack: AsyncExitStack) -> Hub:
    settings = resources.settings
    hub = Hub(
        settings.realtime,
        redis=resources.redis,
        prefix=settings.redis.key_prefix,
        supervisor=resources.supervisor,
    )
    await hub.start()
    stack.push_async_callback(hub.stop)
    resources.writer.listeners.append(hub.on_commit)
    stack.callback(resources.writer.listeners.remove, hub.on_commit)
    resources.connectivity.listeners.append(hub.on_connectivity)
    stack.callback(resources.connectivity.listeners.remove, hub.on_connectivity)
    resources.extras[EXTRA] = hub
    return hub


def hub_of(resources: Resources) -> Hub:
    hub: Hub = resources.extras[EXTRA]
    return hub
