from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from plantpulse.machines.catalog import MachineCatalog
from plantpulse.telemetry.writer import BatchWriter, CommittedBatch
from tests import support
from tests.conftest import MachineFactory

T0 = datetime(2024, 1, 15, 10, tzinfo=UTC)


def writer_for(pool: asyncpg.Pool) -> tuple[BatchWriter, MachineCatalog]:
    catalog = MachineCatalog(pool)
    return BatchWriter(pool, catalog), catalog


async def stored(pool: asyncpg.Pool, machine_id: uuid.UUID) -> list[tuple[object, ...]]:
    rows = await pool.fetch(
        "SELECT time, metric, value, valid FROM readings WHERE machine_id = $1 "
        "ORDER BY time, metric",
        machine_id,
    )
    return [tuple(r) for r in rows]


class TestBatchWriter:
    async def test_writes_rows_and_counts_duplicates(
        self, pg_pool: asyncpg.Pool, committed_machine: MachineFactory
    ) -> None:
        machine = await committed_machine()
        writer, catalog = writer_for(pg_pool)
        await catalog.known([machine])
        rows = [(T0 + timedelta(seconds=i), machine, "temp", float(i)) for i in range(100)]
        first = await writer.write(rows, source="test")
        assert (first.received, first.inserted, first.duplicates) == (100, 100, 0)
        # The same readings again, plus duplicates inside one batch: stored once.
        again = await writer.write(rows + rows[:10], source="test")
        assert (again.inserted, again.duplicates) == (0, 110)
        assert len(await stored(pg_pool, machine)) == 100

    async def test_discovers_metrics_and_touches_last_seen(
        self, pg_pool: asyncpg.Pool, committed_machine: MachineFactory
    ) -> None:
        machine = await committed_machine()
        writer, catalog = writer_for(pg_pool)
        await catalog.known([machine])
        await writer.write([(T0, machine, "temp", 1.0), (T0, machine, "rpm", 2.0)], source="t")
        names = await pg_pool.fetch(
            "SELECT name FROM machine_metrics WHERE machine_id = $1 ORDER BY name", machine
        )
        assert [r["name"] for r in names] == ["rpm", "temp"]
        assert await pg_pool.fetchval("SELECT last_seen_at FROM machines WHERE id = $1", machine)

    async def test_values_outside_the_plausible_range_are_stored_invalid(
        self, pg_pool: asyncpg.Pool, committed_machine: MachineFactory
    ) -> None:
        machine = await committed_machine()
        await pg_pool.execute(
            "INSERT INTO machine_metrics (machine_id, name, min_value, max_value) "
            "VALUES ($1, 'temp', 0, 100)",
            machine,
        )
        writer, catalog = writer_for(pg_pool)
        await catalog.known([machine])
        rows = [
            (T0, machine, "temp", -0.5),
            (T0 + timedelta(seconds=1), machine, "temp", 0.0),
            (T0 + timedelta(seconds=2), machine, "temp", 100.0),
            (T0 + timedelta(seconds=3), machine, "temp", 100.5),
        ]
        await writer.write(rows, source="test")
        assert [r[3] for r in await stored(pg_pool, machine)] == [False, True, True, False]

    async def test_rows_the_sender_marked_invalid_are_stored_invalid_on_both_paths(
        self, pg_pool: asyncpg.Pool, committed_machine: MachineFactory
    ) -> None:
        # A pulled source's bad tags (sources/decoders.py): invalid whatever the value.
        machine = await committed_machine()
        writer, catalog = writer_for(pg_pool)
        await catalog.known([machine])
        rows = [(T0 + timedelta(seconds=i), machine, "temp", 1.0) for i in range(3)]
        forced = {(T0 + timedelta(seconds=1), machine, "temp")}
        heard: list[CommittedBatch] = []
        writer.listeners.append(heard.append)
        await writer.write(rows, source="test", forced_invalid=forced)  # copied
        more = [*rows, (T0 + timedelta(seconds=3), machine, "temp", 1.0)]
        forced.add((T0 + timedelta(seconds=3), machine, "temp"))
        await writer.write(more, source="test", forced_invalid=forced)  # staged
        assert [r[3] for r in await stored(pg_pool, machine)] == [True, False, True, False]
        assert [r[4] for r in heard[0].rows] == [True, False, True]

    async def test_listeners_hear_only_committed_batches(
        self, pg_pool: asyncpg.Pool, committed_machine: MachineFactory
    ) -> None:
        machine = await committed_machine()
        writer, catalog = writer_for(pg_pool)
        await catalog.known([machine])
        heard: list[CommittedBatch] = []
        writer.listeners.append(heard.append)
        await writer.write([(T0, machine, "temp", 1.0)], source="mqtt")
        assert len(heard) == 1
        assert heard[0].source == "mqtt"
        assert heard[0].rows == [(T0, machine, "temp", 1.0, True)]


class TestOptimisticCopy:
    async def test_fresh_batches_are_copied_straight_into_the_table(
        self, pg_pool: asyncpg.Pool, committed_machine: MachineFactory
    ) -> None:
        machine = await committed_machine()
        writer, catalog = writer_for(pg_pool)
        await catalog.known([machine])
        for batch in range(3):
            rows = [
                (T0 + timedelta(minutes=batch, seconds=i), machine, "temp", float(i))
                for i in range(50)
            ]
            result = await writer.write(rows, source="test")
            assert (result.inserted, result.duplicates) == (50, 0)
        assert (writer.copied_batches, writer.staged_batches) == (3, 0)
        assert len(await stored(pg_pool, machine)) == 150

    async def test_a_batch_with_one_stored_reading_falls_back_and_stores_the_rest_once(
        self, pg_pool: asyncpg.Pool, committed_machine: MachineFactory
    ) -> None:
        machine = await committed_machine()
        # Stored before, by someone else: the metric is not registered yet either.
        await pg_pool.execute(
            "INSERT INTO readings (time, machine_id, metric, value, valid) "
            "VALUES ($1, $2, 'temp', 5.0, true)",
            T0 + timedelta(seconds=5),
            machine,
        )
        writer, catalog = writer_for(pg_pool)
        await catalog.known([machine])
        rows = [(T0 + timedelta(seconds=i), machine, "temp", float(i)) for i in range(100)]
        result = await writer.write(rows, source="test")
        assert (result.received, result.inserted, result.duplicates) == (100, 99, 1)
        assert (writer.copied_batches, writer.staged_batches) == (0, 1)
        assert [r[0] for r in await stored(pg_pool, machine)] == [r[0] for r in rows]
        # What the rolled-back COPY's transaction also did is done again by the staged one.
        names = await pg_pool.fetch(
            "SELECT name FROM machine_metrics WHERE machine_id = $1", machine
        )
        assert [r["name"] for r in names] == ["temp"]
        assert await pg_pool.fetchval("SELECT last_seen_at FROM machines WHERE id = $1", machine)

    async def test_copy_resumes_after_a_staged_batch_without_duplicates(
        self, pg_pool: asyncpg.Pool, committed_machine: MachineFactory
    ) -> None:
        machine = await committed_machine()
        writer, catalog = writer_for(pg_pool)
        await catalog.known([machine])

        def rows(start: int) -> list[tuple[datetime, uuid.UUID, str, float]]:
            return [(T0 + timedelta(seconds=start + i), machine, "temp", 1.0) for i in range(10)]

        await writer.write(rows(0), source="test")  # copied
        redelivered = await writer.write(rows(5), source="test")  # collides: staged
        assert (redelivered.inserted, redelivered.duplicates) == (5, 5)
        await writer.write(rows(20), source="test")  # staged (duplicates expected), clean
        await writer.write(rows(40), source="test")  # copied again
        assert (writer.copied_batches, writer.staged_batches) == (2, 2)
        assert len(await stored(pg_pool, machine)) == 35


class TestConnection:
    async def test_a_connection_lost_after_the_commit_does_not_fail_the_batch(
        self, database_url: str, pg_pool: asyncpg.Pool, committed_machine: MachineFactory
    ) -> None:
        # Returning a connection to the pool resets it, a query of its own: when the server
        # has just dropped the connection that query fails. The batch committed: failing it
        # would make the caller write it again (and announce it twice). Whether the client
        # notices the loss before the reset is a race, hence several rounds.
        machine = await committed_machine()
        pool = await asyncpg.create_pool(support.dsn(database_url), min_size=1, max_size=1)
        try:
            writer, catalog = writer_for(pool)
            await catalog.known([machine])
            for second in range(10):
                async with writer.connection() as conn:
                    async with conn.transaction():
                        row = (T0 + timedelta(seconds=second), machine, "temp", 1.0)
                        written = await writer.write_in(conn, [row])
                    pid = conn.get_server_pid()
                    await pg_pool.execute("SELECT pg_terminate_backend($1)", pid)
                assert written.inserted == 1
            assert len(await stored(pg_pool, machine)) == 10
            # The pool replaced the dead connection.
            assert await pool.fetchval("SELECT 1") == 1
        finally:
            await pool.close()
