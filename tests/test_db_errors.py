"""db_errors.classify on errors raised by the real server."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from plantpulse import db_errors
from tests import support


class TestClassify:
    async def test_a_malformed_connection_option_is_permanent(self) -> None:
        # asyncpg's ClientConfigurationError is an InterfaceError, which otherwise means "the
        # connection broke": it was reported as an outage that no retry could end.
        with pytest.raises(asyncpg.ClientConfigurationError) as caught:
            await asyncpg.connect("postgresql://postgres@127.0.0.1/x?sslmode=bogus")
        assert db_errors.classify(caught.value) == "permanent"

    async def test_a_closed_port_is_transient(self) -> None:
        with pytest.raises(ConnectionRefusedError) as caught:
            await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{support.free_port()}/x")
        assert db_errors.classify(caught.value) == "transient"

    async def test_a_missing_table_is_permanent_through_sqlalchemy(
        self, engine: AsyncEngine
    ) -> None:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as caught:
                await conn.execute(text("SELECT 1 FROM no_such_table"))
        assert db_errors.classify(caught.value) == "permanent"
        assert db_errors.sqlstate(caught.value) == "42P01"

    async def test_a_write_refused_by_a_read_only_server_is_transient(
        self, pg_pool: asyncpg.Pool
    ) -> None:
        # What the old primary answers during a failover: wait for the new one, don't
        # dead-letter the batch.
        async with pg_pool.acquire() as conn:
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError) as raised:
                async with conn.transaction(readonly=True):
                    await conn.execute("CREATE TEMP TABLE t_read_only (x int)")
        assert db_errors.classify(raised.value) == "transient"

    async def test_a_value_the_server_refuses_is_permanent(self, pg_pool: asyncpg.Pool) -> None:
        with pytest.raises(asyncpg.NumericValueOutOfRangeError) as raised:
            await pg_pool.fetchval("SELECT 2147483647::int + 1")
        assert db_errors.classify(raised.value) == "permanent"


class TestUniqueViolation:
    async def test_only_a_unique_key_is_a_unique_violation(self, pg_pool: asyncpg.Pool) -> None:
        async with pg_pool.acquire() as conn, conn.transaction():
            await conn.execute("CREATE TEMP TABLE t (k int UNIQUE CHECK (k > 0))")
            await conn.execute("INSERT INTO t VALUES (1)")
            with pytest.raises(asyncpg.UniqueViolationError) as unique:
                async with conn.transaction():
                    await conn.execute("INSERT INTO t VALUES (1)")
            with pytest.raises(asyncpg.CheckViolationError) as check:
                async with conn.transaction():
                    await conn.execute("INSERT INTO t VALUES (-1)")
        assert db_errors.is_unique_violation(unique.value)
        assert not db_errors.is_unique_violation(check.value)
