"""The narrow time-series table and its rollups. Written with COPY in writer.py (rollups by
rollups.py) and read with SQL in queries.py; declared here so the metadata knows them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Index,
    String,
    Table,
)
from sqlalchemy.dialects.postgresql import UUID

from plantpulse.db import Base

readings = Table(
    "readings",
    Base.metadata,
    Column("time", DateTime(timezone=True), nullable=False),
    Column("machine_id", UUID(as_uuid=True), nullable=False),
    Column("metric", String(64), nullable=False),
    Column("value", Double, nullable=False),
    Column("valid", Boolean, nullable=False, server_default="true"),
    # Also the index every per-machine query uses; it includes time, as hypertables require,
    # and covers value and valid so those queries are index-only scans (docs/queries.md).
    Index(
        "uq_readings_machine_id_metric_time",
        "machine_id",
        "metric",
        "time",
        unique=True,
        postgresql_include=["value", "valid"],
    ),
)


def _rollup(name: str) -> Table:
    """A rollup of `readings` (migration 0005, telemetry/rollups.py): per (machine, metric,
    bucket, valid) the aggregates of that bucket's readings."""
    return Table(
        name,
        Base.metadata,
        Column("machine_id", UUID(as_uuid=True), primary_key=True),
        Column("metric", String(64), primary_key=True),
        Column("bucket", DateTime(timezone=True), primary_key=True),
        Column("valid", Boolean, primary_key=True),
        Column("count", BigInteger, nullable=False),
        Column("sum", Double, nullable=False),
        Column("min", Double, nullable=False),
        Column("min_time", DateTime(timezone=True), nullable=False),
        Column("max", Double, nullable=False),
        Column("max_time", DateTime(timezone=True), nullable=False),
        Column("first", Double, nullable=False),
        Column("first_time", DateTime(timezone=True), nullable=False),
        Column("last", Double, nullable=False),
        Column("last_time", DateTime(timezone=True), nullable=False),
    )


readings_1m = _rollup("readings_1m")
readings_1h = _rollup("readings_1h")
