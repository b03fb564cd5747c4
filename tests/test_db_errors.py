"""db_errors.classify on errors raised by the real server."""

from __future__ import annotations

import asyncpg
import pytest

from plantpulse.db_errors import classify


class TestClassify:
    async def test_a_write_refused_by_a_read_only_server_is_transient(
        self, pg_pool: asyncpg.Pool
    ) -> None:
        # What the old primary answers during a failover: wait for the new one, don't
        # dead-letter the batch.
        async with pg_pool.acquire() as conn:
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError) as raised:
                async with conn.transaction(readonly=True):
                    await conn.execute("CREATE TEMP TABLE t_read_only (x int)")
        assert classify(raised.value) == "transient"

    async def test_a_value_the_server_refuses_is_permanent(self, pg_pool: asyncpg.Pool) -> None:
        with pytest.raises(asyncpg.NumericValueOutOfRangeError) as raised:
            await pg_pool.fetchval("SELECT 2147483647::int + 1")
        assert classify(raised.value) == "permanent"
