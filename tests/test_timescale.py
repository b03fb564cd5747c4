"""Edition detection and the decompression-limit statement, on whichever server the suite
uses (tests/community/test_timescale.py does the same on the Community cluster)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from plantpulse import timescale
from tests import support

LIMIT = "timescaledb.max_tuples_decompressed_per_dml_transaction"


async def detected_matches_the_server(engine: AsyncEngine) -> timescale.TimescaleInfo:
    async with engine.connect() as conn:
        info = await timescale.detect(conn)
    async with engine.connect() as conn:
        raw = await conn.exec_driver_sql("SHOW timescaledb.license")
        license_ = raw.scalar()
    assert info.installed
    assert info.license == license_
    assert info.edition == ("community" if license_ == "timescale" else "apache")
    return info


async def lifts_the_limit_for_one_transaction(url: str) -> None:
    conn = await asyncpg.connect(support.dsn(url))
    try:
        async with conn.transaction():
            await conn.execute(timescale.NO_DECOMPRESSION_LIMIT)
            assert await conn.fetchval(f"SHOW {LIMIT}") == "0"
        assert await conn.fetchval(f"SHOW {LIMIT}") == "100000"
    finally:
        await conn.close()


@pytest.fixture
async def bare_database() -> AsyncIterator[str]:
    """No migrations: TimescaleDB is preloaded on the server but not created here."""
    url = await support.create_database("bare")
    try:
        yield url
    finally:
        await support.drop_database(url)


class TestTimescale:
    async def test_detects_the_edition_the_server_runs(self, engine: AsyncEngine) -> None:
        await detected_matches_the_server(engine)

    async def test_decompression_limit_lifted_for_one_transaction(self, database_url: str) -> None:
        await lifts_the_limit_for_one_transaction(database_url)

    async def test_decompression_statement_is_harmless_without_timescaledb(
        self, bare_database: str
    ) -> None:
        conn = await asyncpg.connect(support.dsn(bare_database))
        try:
            assert await conn.fetchval(f"SELECT current_setting('{LIMIT}', true)") is None
            async with conn.transaction():
                await conn.execute(timescale.NO_DECOMPRESSION_LIMIT)
        finally:
            await conn.close()
