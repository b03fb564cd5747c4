"""The narrow time-series table. Written with COPY in writer.py and read with SQL in queries.py;
declared here so the metadata knows it."""

from __future__ import annotations

from sqlalchemy import (
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
