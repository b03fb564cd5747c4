"""Rollups: 1-minute and 1-hour aggregates per (machine, metric, validity), and the log of
buckets to recompute. Plain tables on every edition, maintained by PlantPulse's refresher
(telemetry/rollups.py; docs/queries.md says why not continuous aggregates). Existing readings
are rolled up here, so queries may use the rollups at once.

Revision ID: 0005_rollups
Revises: 0004_sources
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_rollups"
down_revision: str | None = "0004_sources"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ORIGIN = "TIMESTAMPTZ '2000-01-03 00:00:00+00'"


def _rollup(name: str) -> None:
    op.create_table(
        name,
        sa.Column("machine_id", sa.Uuid(), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        # Valid and invalid readings are aggregated apart: a bucket has up to two rows.
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("sum", sa.Double(), nullable=False),
        sa.Column("min", sa.Double(), nullable=False),
        sa.Column("min_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max", sa.Double(), nullable=False),
        sa.Column("max_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first", sa.Double(), nullable=False),
        sa.Column("first_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last", sa.Double(), nullable=False),
        sa.Column("last_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("machine_id", "metric", "bucket", "valid", name=f"pk_{name}"),
    )
    # Retention deletes by age across machines.
    op.create_index(f"ix_{name}_bucket", name, ["bucket"])


def upgrade() -> None:
    _rollup("readings_1m")
    _rollup("readings_1h")
    op.create_table(
        "rollup_dirty",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        # One row per ingest batch (or delete): the 1-minute buckets it touched, as three
        # parallel arrays; append-only, so concurrent writers never wait on each other.
        sa.Column("machine_ids", postgresql.ARRAY(sa.Uuid()), nullable=False),
        sa.Column("metrics", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("buckets", postgresql.ARRAY(sa.DateTime(timezone=True)), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("id", name="pk_rollup_dirty"),
    )
    op.execute(
        f"""
        INSERT INTO readings_1m
        SELECT machine_id, metric, date_bin('1 minute', time, {ORIGIN}), valid, count(*),
               sum(value), min(value), (array_agg(time ORDER BY value, time))[1],
               max(value), (array_agg(time ORDER BY value DESC, time))[1],
               (array_agg(value ORDER BY time))[1], min(time),
               (array_agg(value ORDER BY time DESC))[1], max(time)
        FROM readings GROUP BY 1, 2, 3, 4
        """
    )
    op.execute(
        f"""
        INSERT INTO readings_1h
        SELECT machine_id, metric, date_bin('1 hour', bucket, {ORIGIN}), valid, sum(count),
               sum(sum), min(min), (array_agg(min_time ORDER BY min, min_time))[1],
               max(max), (array_agg(max_time ORDER BY max DESC, max_time))[1],
               (array_agg(first ORDER BY first_time))[1], min(first_time),
               (array_agg(last ORDER BY last_time DESC))[1], max(last_time)
        FROM readings_1m GROUP BY 1, 2, 3, 4
        """
    )


def downgrade() -> None:
    op.drop_table("rollup_dirty")
    op.drop_table("readings_1h")
    op.drop_table("readings_1m")
