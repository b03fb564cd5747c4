"""The one batch writer behind HTTP and MQTT ingest.

Inside the caller's transaction (`write_in`): store the rows, register metrics seen for the
first time, and touch `last_seen_at` at most every few seconds per machine. Once the caller
has committed, `committed` tells the listeners, once per batch; a batch that did not commit is
never announced. `telemetry.service.store_batch` is the transaction of an ingest batch.

Rows are stored optimistically: a plain COPY straight into the hypertable, the cheapest write
PostgreSQL has (~1.7x the staged path, docs/ingest.md). Fresh data, the normal case, never
collides with the unique key `(machine_id, metric, time)`; when a batch does (a redelivery, a
re-sent request), the COPY fails as a whole, its savepoint rolls back and the batch goes the
idempotent way: COPY into a per-connection staging table, then `INSERT ... SELECT ... ON
CONFLICT DO NOTHING`. After such a batch the next one is staged directly (redeliveries come in
runs, e.g. after a restart) until a staged batch turns out free of duplicates.

A connection on which an operation failed for any reason but an error reported by a healthy
server session (an outage, a terminated backend, a protocol state broken mid-COPY) is closed,
never returned to the pool: the next attempt gets a fresh one (`connection`).

Compressed chunks (Community edition): a COPY decompresses the batch (up to 1,000 rows) of
each compressed series it writes into before it checks the unique key, and TimescaleDB stops
a transaction past `timescaledb.max_tuples_decompressed_per_dml_transaction` (100,000 rows)
with SQLSTATE 53400: a re-sent batch across ~100 compressed series fails that way before any
unique violation. So 53400 takes the staged path too, whose `ON CONFLICT DO NOTHING` checks
compressed rows without decompressing them (TimescaleDB 2.19: 597 duplicates across 597
compressed series pass with the limit at 1; tests/community/test_compressed_writes.py).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from plantpulse.db_errors import is_transient
from plantpulse.machines.catalog import MachineCatalog
from plantpulse.telemetry.payloads import Row

log = logging.getLogger(__name__)

# (time, machine_id, metric, value, valid)
StoredRow = tuple[datetime, uuid.UUID, str, float, bool]
# (time, machine_id, metric) of rows to store as invalid whatever their value.
Invalid = Collection[tuple[datetime, uuid.UUID, str]]

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
class Written:
    """Rows written in a transaction that has not committed yet (`BatchWriter.write_in`)."""

    rows: list[StoredRow]
    inserted: int
    new_metrics: set[tuple[uuid.UUID, str]]
    last_seen: list[uuid.UUID]

    @property
    def result(self) -> WriteResult:
        return WriteResult(received=len(self.rows), inserted=self.inserted)


NOTHING_WRITTEN = Written(rows=[], inserted=0, new_metrics=set(), last_seen=[])


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

    def _validate(
        self, rows: Sequence[Row], forced_invalid: Invalid
    ) -> tuple[list[StoredRow], set[tuple[uuid.UUID, str]]]:
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
            if forced_invalid and (t, machine_id, metric) in forced_invalid:
                valid = False
            stored.append((t, machine_id, metric, value, valid))
        return stored, new_metrics

    def _due_last_seen(self, rows: Sequence[Row]) -> list[uuid.UUID]:
        now = time.monotonic()
        due = []
        for machine_id in {r[1] for r in rows}:
            if now - self._last_seen.get(machine_id, 0.0) >= LAST_SEEN_EVERY_SECONDS:
                due.append(machine_id)
        return due

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PoolConnectionProxy]:
        """A pool connection that goes back to the pool only if it is known to be sound."""
        conn = await self._pool.acquire()
        try:
            yield conn
        except BaseException as exc:
            # A server-reported error (a constraint, a bad value) leaves the session usable
            # once its transaction is rolled back; anything else (a terminated backend, a
            # protocol state broken mid-COPY, a cancellation mid-operation) may not: close
            # it rather than count on the pool's reset to notice.
            if not isinstance(exc, asyncpg.PostgresError) or is_transient(exc):
                conn.terminate()
            if isinstance(exc, Exception) and is_transient(exc):
                # The server may have dropped every connection (a restart, a failover,
                # terminated backends): replace the idle ones at their next use rather than
                # fail one request or batch per stale connection.
                await self._pool.expire_connections()
            raise
        finally:
            try:
                await self._pool.release(conn)
            except Exception as exc:
                # The pool resets a connection it takes back; if the server has just dropped
                # it that fails, and the pool closes it. The work on it is over (committed or
                # rolled back): failing now would have the caller write a committed batch again.
                log.info("a pool connection was lost on release: %s: %s", type(exc).__name__, exc)
                await self._pool.expire_connections()

    async def write_in(
        self, conn: PoolConnectionProxy, rows: Sequence[Row], *, forced_invalid: Invalid = ()
    ) -> Written:
        """Store rows of known machines inside the caller's open transaction (once per
        transaction: the staging table empties at commit); nothing is announced until
        `committed`. Raises on database errors (the caller retries the transaction).

        A row whose (time, machine_id, metric) is in `forced_invalid` is stored with
        valid=false even inside its metric's plausible range (a pulled source's bad tags)."""
        if not rows:
            return NOTHING_WRITTEN
        stored, new_metrics = self._validate(rows, forced_invalid)
        due = self._due_last_seen(rows)
        inserted: int | None = None
        if self._optimistic:
            inserted = await self._copy(conn, stored)
        if inserted is None:
            inserted = await self._merge(conn, stored)
            self.staged_batches += 1
            self._optimistic = inserted == len(stored)
        else:
            self.copied_batches += 1
        await _register(conn, new_metrics, due)
        for hook in self.in_transaction:
            await hook(conn, stored)
        return Written(rows=stored, inserted=inserted, new_metrics=new_metrics, last_seen=due)

    def committed(self, written: Written, *, source: str) -> None:
        """After the commit of what `write_in` wrote: remember it, tell the listeners."""
        if not written.rows:
            return
        self._catalog.add_metrics(written.new_metrics)
        stamp = time.monotonic()
        for machine_id in written.last_seen:
            self._last_seen[machine_id] = stamp
        batch = CommittedBatch(rows=written.rows, source=source)
        for listener in self.listeners:
            try:
                listener(batch)
            except Exception:  # a broken listener must not fail a committed write
                log.exception("telemetry listener %r failed", listener)

    async def write(
        self, rows: Sequence[Row], *, source: str, forced_invalid: Invalid = ()
    ) -> WriteResult:
        """Rows of known machines in a transaction of their own (tools and tests; ingest goes
        through `telemetry.service.store_batch`). Raises on database errors."""
        if not rows:
            return WriteResult(0, 0)
        async with self.connection() as conn, conn.transaction():
            written = await self.write_in(conn, rows, forced_invalid=forced_invalid)
        self.committed(written, source=source)
        return written.result

    async def _copy(self, conn: PoolConnectionProxy, stored: list[StoredRow]) -> int | None:
        """All rows straight into the hypertable; None (rolled back) if any was stored before."""
        try:
            # A savepoint: the caller's transaction survives a collision.
            async with conn.transaction():
                await conn.copy_records_to_table("readings", records=stored, columns=_COLUMNS)
        except (asyncpg.UniqueViolationError, asyncpg.ConfigurationLimitExceededError):
            return None  # some were stored before, or 53400 (compressed chunks, see above)
        return len(stored)

    async def _merge(self, conn: PoolConnectionProxy, stored: list[StoredRow]) -> int:
        """The idempotent path: rows already stored are skipped; returns how many were new."""
        await conn.execute(_STAGE)
        await conn.copy_records_to_table("readings_stage", records=stored, columns=_COLUMNS)
        status = await conn.execute(_MERGE)
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
