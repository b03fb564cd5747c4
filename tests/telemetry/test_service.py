from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from plantpulse.errors import DatabaseLimitExceeded, ValueRefused
from plantpulse.telemetry import service
from plantpulse.telemetry.service import InvalidQuery
from tests import support

NOW = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


class TestParseTime:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("now", NOW),
            ("-30s", NOW - timedelta(seconds=30)),
            ("-15m", NOW - timedelta(minutes=15)),
            ("-1h", NOW - timedelta(hours=1)),
            ("-7d", NOW - timedelta(days=7)),
            ("-2w", NOW - timedelta(weeks=2)),
            ("2024-01-15T10:00:00Z", datetime(2024, 1, 15, 10, tzinfo=UTC)),
            ("2024-01-15T11:00:00+01:00", datetime(2024, 1, 15, 10, tzinfo=UTC)),
            # An unencoded '+' in a URL arrives as a space.
            ("2024-01-15T11:00:00 01:00", datetime(2024, 1, 15, 10, tzinfo=UTC)),
            ("2024-01-15T10:00:00", datetime(2024, 1, 15, 10, tzinfo=UTC)),
            ("2024-01-15", datetime(2024, 1, 15, tzinfo=UTC)),
            ("1705314600", NOW),
            ("1705314600000", NOW),
        ],
    )
    def test_accepted_forms(self, text: str, expected: datetime) -> None:
        assert service.parse_time(text, now=NOW, name="t") == expected

    @pytest.mark.parametrize(
        "text",
        [
            "yesterday",
            "-1y",
            "+1h",
            "-h",
            "-1e9d",
            "nan",
            "-5",
            # Found by fuzzing: these overflowed datetime arithmetic (a 500).
            "-999999999w",
            "-999999999d",
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00+14:00",
        ],
    )
    def test_rejected_forms(self, text: str) -> None:
        with pytest.raises(InvalidQuery):
            service.parse_time(text, now=NOW, name="t")

    def test_relative_detection(self) -> None:
        assert service.is_relative("now")
        assert service.is_relative(" -1h ")
        assert not service.is_relative("2024-01-15T10:00:00Z")
        assert not service.is_relative(None)


class TestRangeAndBuckets:
    def test_defaults_to_the_last_24_hours(self) -> None:
        window = service.time_range(None, None, now=NOW)
        assert (window.start, window.end) == (NOW - timedelta(hours=24), NOW)

    def test_start_must_precede_end(self) -> None:
        with pytest.raises(InvalidQuery, match="must be before"):
            service.time_range("now", "-1h", now=NOW)

    @pytest.mark.parametrize(
        ("text", "seconds"), [("1s", 1), ("1m", 60), ("15m", 900), ("1h", 3600), ("1d", 86400)]
    )
    def test_intervals(self, text: str, seconds: int) -> None:
        assert service.parse_interval(text) == timedelta(seconds=seconds)

    @pytest.mark.parametrize("text", ["3651d", "999999d", "0m"])
    def test_rejected_intervals(self, text: str) -> None:
        # Found by fuzzing: a 999999d bucket of a 1970 reading starts before the year 1, which
        # the database driver cannot decode (a 500).
        with pytest.raises(InvalidQuery, match="interval"):
            service.parse_interval(text)

    def test_bucket_start_matches_the_sql_origin(self) -> None:
        at = datetime(2024, 1, 15, 10, 37, 12, tzinfo=UTC)
        assert service.bucket_start(at, timedelta(minutes=15)) == at.replace(minute=30, second=0)
        # Weekly buckets start on Monday, like TimescaleDB's default origin.
        week = service.bucket_start(at, timedelta(days=7))
        assert (week.weekday(), week.date().isoformat()) == (0, "2024-01-15")

    def test_too_many_buckets(self) -> None:
        window = service.time_range("-8d", None, now=NOW)
        service.check_bucket_count(window, timedelta(minutes=2))
        with pytest.raises(InvalidQuery, match="11520 buckets"):
            service.check_bucket_count(window, timedelta(minutes=1))


class TestDatabaseErrors:
    """Found by fuzzing: values the database refused were answered as "database unavailable"."""

    @pytest.mark.parametrize(
        ("query", "argument"),
        [
            ("SELECT $1::bigint", 2**70),  # refused by the driver
            ("SELECT 1 / $1::int", 0),  # refused by PostgreSQL (SQLSTATE class 22)
        ],
    )
    async def test_a_refused_value_is_not_an_outage(
        self, pg_pool: asyncpg.Pool, query: str, argument: int
    ) -> None:
        with pytest.raises(ValueRefused) as caught:
            async with service.database_errors():
                await pg_pool.fetchval(query, argument)
        assert caught.value.status_code == 422
        assert caught.value.headers is None

    async def test_a_configured_limit_is_not_an_outage(self, database_url: str) -> None:
        # Before: every PostgresError became DatabaseUnavailable (503, retried forever).
        pool = await asyncpg.create_pool(
            database_url.replace("+asyncpg", ""),
            min_size=0,
            server_settings={"work_mem": "64kB", "temp_file_limit": "64kB"},
        )
        try:
            with pytest.raises(DatabaseLimitExceeded, match="temp_file_limit") as caught:
                async with service.database_errors():
                    await pool.fetch("SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC")
        finally:
            await pool.close()
        assert caught.value.status_code == 507
        assert caught.value.headers is None

    async def test_an_unknown_database_error_is_left_to_the_500_handler(
        self, pg_pool: asyncpg.Pool
    ) -> None:
        # A missing table is a bug (or a missing migration), not an outage: it must not be
        # dressed up as "retry later".
        with pytest.raises(asyncpg.UndefinedTableError):
            async with service.database_errors():
                await pg_pool.fetchval("SELECT 1 FROM no_such_table")

    async def test_an_unreachable_database_is_an_outage(self) -> None:
        dead = await asyncpg.create_pool(
            f"postgresql://postgres@127.0.0.1:{support.free_port()}/none", min_size=0
        )
        try:
            with pytest.raises(service.DatabaseUnavailable):
                async with service.database_errors():
                    await dead.fetchval("SELECT 1")
        finally:
            await dead.close()
