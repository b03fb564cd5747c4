"""Which TimescaleDB the database has (if any), so edition-only features are used where present.

The Apache build (Debian's source package) has hypertables and `time_bucket`; compression,
retention policies and continuous aggregates need the Community edition (`license = timescale`).
"""

from __future__ import annotations

from dataclasses import dataclass

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
