"""The one batch writer behind HTTP and MQTT ingest.

Per batch, in one transaction: store the rows, register metrics seen for the first time, and
touch `last_seen_at` at most every few seconds per machine. Listeners hear about a batch only
after it committed.

Rows are stored optimistically: a plain COPY straight into the hypertable, the cheapest write
PostgreSQL has (~1.7x the staged path, docs/ingest.md). Fresh data, the normal case, never
collides with the unique key `(machine_id, metric, time)`; when a batch does (a redelivery, a
re-sent request), the COPY fails as a whole, the transaction rolls back and the batch goes
the idempotent way: COPY into a per-connection staging table, then `INSERT ... SELECT ... ON
CONFLICT DO NOTHING`. After such a batch the next one is staged directly (redeliveries come in
runs, e.g. after a restart) until a staged batch turns out free of duplicates.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from plantpulse.machines.catalog import MachineCatalog
from plantpulse.telemetry.payloads import Row

log = logging.getLogger(__name__)

# (time, machine_id, metric, value, valid)
StoredRow = tuple[datetime, uuid.UUID, str, float, bool]

_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS readings_stage (
    time timestamptz NOT NULL, machine_id uuid NOT NULL, metric text NOT NULL,
    value double precision NOT NULL, valid boolean NOT NULL
) ON COMMIT DELETE ROWS
"""
_MERGE = """
INSERT INTO readings (time, machine_id, metric, value, valid)
SELECT time, machine_id, metric, value, valid FROM readings_stage
ON CONFLICT DO NOTHING
"""
_COLUMNS = ("time", "machine_id", "metric", "value", "valid")
LAST_SEEN_EVERY_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class WriteResult:
    received: int
    inserted: int

    @property
    def duplicates(self) -> int:
        return self.received - self.inserted


@dataclass(frozen=True, slots=True)
class CommittedBatch:
    rows: Sequence[StoredRow]
    source: str


Listener = Callable[[CommittedBatch], None]
# Runs inside a batch's transaction, after its rows are stored: what it writes commits or
# rolls back with them (rollups.mark_dirty records the buckets a batch touched).
TransactionHook = Callable[[PoolConnectionProxy, Sequence[StoredRow]], Awaitable[None]]


class BatchWriter:
    def __init__(self, pool: asyncpg.Pool, catalog: MachineCatalog) -> None:
        self._pool = pool
        self._catalog = catalog
        self._last_seen: dict[uuid.UUID, float] = {}
        self._optimistic = True
        # Batches stored by the plain COPY, and by the staged path (after a collision or
        # while duplicates are expected).
        self.copied_batches = 0
        self.staged_batches = 0
        # Called after each commit; must not block (put on a queue, publish, return).
        self.listeners: list[Listener] = []
        self.in_transaction: list[TransactionHook] = []

    def _validate(self, rows: Sequence[Row]) -> tuple[list[StoredRow], set[tuple[uuid.UUID, str]]]:
        stored: list[StoredRow] = []
        new_metrics: set[tuple[uuid.UUID, str]] = set()
        metrics_of = self._catalog.metrics
        for t, machine_id, metric, value in rows:
            known = metrics_of(machine_id)
            limits = known.get(metric)
            if limits is None:
                new_metrics.add((machine_id, metric))
                limits = (None, None)
            low, high = limits
            valid = (low is None or value >= low) and (high is None or value <= high)
            stored.append((t, machine_id, metric, value, valid))
        return stored, new_metrics

    def _due_last_seen(self, rows: Sequence[Row]) -> list[uuid.UUID]:
        now = time.monotonic()
        due = []
        for machine_id in {r[1] for r in rows}:
            if now - self._last_seen.get(machine_id, 0.0) >= LAST_SEEN_EVERY_SECONDS:
                due.append(machine_id)
        return due

    async def write(self, rows: Sequence[Row], *, source: str) -> WriteResult:
        """Store rows of known machines; returns how many were new. Raises on database errors
        (the caller keeps the batch and retries; nothing is acknowledged meanwhile)."""
        if not rows:
            return WriteResult(0, 0)
        stored, new_metrics = self._validate(rows)
        due = self._due_last_seen(rows)
        inserted: int | None = None
        async with self._pool.acquire() as conn:
            if self._optimistic:
                inserted = await self._copy(conn, stored, new_metrics, due)
            if inserted is None:
                inserted = await self._merge(conn, stored, new_metrics, due)
                self.staged_batches += 1
                self._optimistic = inserted == len(stored)
            else:
                self.copied_batches += 1
        self._catalog.add_metrics(new_metrics)
        stamp = time.monotonic()
        for machine_id in due:
            self._last_seen[machine_id] = stamp
        batch = CommittedBatch(rows=stored, source=source)
        for listener in self.listeners:
            try:
                listener(batch)
            except Exception:  # a broken listener must not fail a committed write
                log.exception("telemetry listener %r failed", listener)
        return WriteResult(received=len(rows), inserted=inserted)

    async def _hooks(self, conn: PoolConnectionProxy, stored: list[StoredRow]) -> None:
        for hook in self.in_transaction:
            await hook(conn, stored)

    async def _copy(
        self,
        conn: PoolConnectionProxy,
        stored: list[StoredRow],
        new_metrics: set[tuple[uuid.UUID, str]],
        due: list[uuid.UUID],
    ) -> int | None:
        """All rows straight into the hypertable; None (rolled back) if any was stored before."""
        try:
            async with conn.transaction():
                await conn.copy_records_to_table("readings", records=stored, columns=_COLUMNS)
                await _register(conn, new_metrics, due)
                await self._hooks(conn, stored)
        except asyncpg.UniqueViolationError:
            return None
        return len(stored)

    async def _merge(
        self,
        conn: PoolConnectionProxy,
        stored: list[StoredRow],
        new_metrics: set[tuple[uuid.UUID, str]],
        due: list[uuid.UUID],
    ) -> int:
        """The idempotent path: rows already stored are skipped; returns how many were new."""
        async with conn.transaction():
            await conn.execute(_STAGE)
            await conn.copy_records_to_table("readings_stage", records=stored, columns=_COLUMNS)
            status = await conn.execute(_MERGE)
            await _register(conn, new_metrics, due)
            await self._hooks(conn, stored)
        return int(status.rsplit(" ", 1)[-1])


async def _register(
    conn: PoolConnectionProxy, new_metrics: set[tuple[uuid.UUID, str]], due: list[uuid.UUID]
) -> None:
    """Metrics seen for the first time, and machines whose `last_seen_at` is due."""
    if new_metrics:
        await conn.executemany(
            "INSERT INTO machine_metrics (machine_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            sorted(new_metrics),
        )
    if due:
        await conn.execute(
            "UPDATE machines SET last_seen_at = now() WHERE id = ANY($1::uuid[])", due
        )
