"""Which TimescaleDB the database has (if any), so edition-only features are used where present.

The Apache build (Debian's source package) has hypertables and `time_bucket`; compression,
retention policies and continuous aggregates need the Community edition (`license = timescale`).
Both run background jobs (policies, TimescaleDB's own housekeeping) whose failures nobody sees
unless someone asks `timescaledb_information.job_stats`: `failing_jobs()` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# For one transaction (SET LOCAL), and only where TimescaleDB is loaded (elsewhere the setting
# does not exist): DML that meets compressed chunks may decompress as many rows as it needs.
# TimescaleDB's default stops a transaction at 100,000 decompressed rows with SQLSTATE 53400:
# a re-sent batch across ~100 series, or deleting a compressed day of one busy machine.
NO_DECOMPRESSION_LIMIT = """
SELECT set_config('timescaledb.max_tuples_decompressed_per_dml_transaction', '0', true)
WHERE current_setting('timescaledb.max_tuples_decompressed_per_dml_transaction', true) IS NOT NULL
"""


@dataclass(frozen=True, slots=True)
class TimescaleInfo:
    version: str | None
    license: str | None

    @property
    def installed(self) -> bool:
        return self.version is not None

    @property
    def community(self) -> bool:
        """Compression, retention and continuous aggregates are available."""
        return self.license == "timescale"

    @property
    def edition(self) -> str:
        if not self.installed:
            return "none"
        return "community" if self.community else "apache"


async def detect(connection: AsyncConnection) -> TimescaleInfo:
    version = await connection.scalar(
        text("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    )
    if version is None:
        return TimescaleInfo(version=None, license=None)
    license_ = await connection.scalar(text("SELECT current_setting('timescaledb.license', true)"))
    return TimescaleInfo(version=str(version), license=str(license_) if license_ else None)


# Jobs below this id are TimescaleDB's own housekeeping (e.g. 3, the job-history retention);
# policies and user-defined jobs of a database start at 1000.
FIRST_DATABASE_JOB = 1000


@dataclass(frozen=True, slots=True)
class JobFailure:
    """A scheduled TimescaleDB job whose last run failed."""

    job_id: int
    name: str  # e.g. "Retention Policy [1001]"
    proc: str  # e.g. "policy_retention"
    hypertable: str | None
    failures: int
    runs: int
    failed_at: datetime | None  # when the failed run started
    error: str | None  # "<sqlstate> <message>" of the latest recorded error

    @property
    def housekeeping(self) -> bool:
        """TimescaleDB's own job, not one on this application's data."""
        return self.job_id < FIRST_DATABASE_JOB

    def describe(self) -> str:
        on = f" on {self.hypertable}" if self.hypertable else ""
        when = f", last at {self.failed_at.isoformat()}" if self.failed_at else ""
        return (
            f"{self.name}{on} failed {self.failures} of {self.runs} runs{when}: "
            f"{self.error or 'no error recorded'}"
        )


_FAILING_JOBS = text(
    """
    SELECT j.job_id, j.application_name, j.proc_name, s.hypertable_name,
           s.total_failures, s.total_runs, s.last_run_started_at,
           e.sqlerrcode, e.err_message
    FROM timescaledb_information.jobs j
    JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
    LEFT JOIN LATERAL (
        SELECT sqlerrcode, err_message FROM timescaledb_information.job_errors x
        WHERE x.job_id = j.job_id ORDER BY x.finish_time DESC NULLS LAST LIMIT 1
    ) e ON true
    WHERE j.scheduled AND s.last_run_status = 'Failed'
    ORDER BY j.job_id
    """
)


async def failing_jobs(connection: AsyncConnection) -> list[JobFailure]:
    """Scheduled jobs whose last run failed (a paused job is someone's decision, not a
    failure). Only where TimescaleDB is installed."""
    failures = []
    for row in await connection.execute(_FAILING_JOBS):
        error = " ".join(part for part in (row.sqlerrcode, row.err_message) if part) or None
        started = row.last_run_started_at
        failures.append(
            JobFailure(
                job_id=int(row.job_id),
                name=str(row.application_name),
                proc=str(row.proc_name),
                hypertable=row.hypertable_name,
                failures=int(row.total_failures),
                runs=int(row.total_runs),
                # -infinity (never started) arrives as a naive datetime.min.
                failed_at=started if started is not None and started.tzinfo else None,
                error=error,
            )
        )
    return failures
