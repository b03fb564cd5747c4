"""Machines, groups, the metric catalogue, the readings hypertable and dead letters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

machine_status = postgresql.ENUM(
    "active", "inactive", "maintenance", "error", name="machine_status"
)
machine_connectivity = postgresql.ENUM("unknown", "online", "offline", name="machine_connectivity")


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    ]


def _timescale_license() -> str | None:
    bind = op.get_bind()
    if not bind.scalar(sa.text("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")):
        return None
    return str(bind.scalar(sa.text("SELECT current_setting('timescaledb.license', true)")))


def upgrade() -> None:
    bind = op.get_bind()
    machine_status.create(bind, checkfirst=True)
    machine_connectivity.create(bind, checkfirst=True)
    op.create_table(
        "machines",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("location", sa.String(128)),
        sa.Column("sensor_type", sa.String(64)),
        sa.Column(
            "status",
            postgresql.ENUM(name="machine_status", create_type=False),
            nullable=False,
            server_default="active",
        ),
        sa.Column(
            "connectivity",
            postgresql.ENUM(name="machine_connectivity", create_type=False),
            nullable=False,
            server_default="unknown",
        ),
        sa.Column("description", sa.Text()),
        sa.Column("tags", postgresql.ARRAY(sa.String(64)), nullable=False, server_default="{}"),
        sa.Column("labels", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("last_seen_at", sa.DateTime(timezone=True)),
        sa.Column("api_key_prefix", sa.String(16)),
        sa.Column("api_key_hash", sa.String(255)),
        sa.Column("api_key_created_at", sa.DateTime(timezone=True)),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_machines"),
        sa.UniqueConstraint("name", name="uq_machines_name"),
        sa.UniqueConstraint("api_key_prefix", name="uq_machines_api_key_prefix"),
    )
    op.create_index("ix_machines_location", "machines", ["location"])
    op.create_table(
        "machine_groups",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.Text()),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_machine_groups"),
        sa.UniqueConstraint("name", name="uq_machine_groups_name"),
    )
    op.create_table(
        "machine_group_members",
        sa.Column("group_id", sa.Uuid(), nullable=False),
        sa.Column("machine_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["machine_groups.id"],
            name="fk_machine_group_members_group_id_machine_groups",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["machines.id"],
            name="fk_machine_group_members_machine_id_machines",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_id", "machine_id", name="pk_machine_group_members"),
    )
    op.create_index("ix_machine_group_members_machine_id", "machine_group_members", ["machine_id"])
    op.create_table(
        "machine_metrics",
        sa.Column("machine_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("unit", sa.String(32)),
        sa.Column("description", sa.Text()),
        sa.Column("min_value", sa.Double()),
        sa.Column("max_value", sa.Double()),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["machines.id"],
            name="fk_machine_metrics_machine_id_machines",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("machine_id", "name", name="pk_machine_metrics"),
    )
    # No foreign key from readings to machines: it would cost a lookup per ingested row.
    # Deleting a machine deletes its readings explicitly (machines/service.py).
    op.create_table(
        "readings",
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("machine_id", sa.Uuid(), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("valid", sa.Boolean(), nullable=False, server_default=sa.true()),
    )
    # Covering (INCLUDE value, valid): per-machine queries are index-only scans that read a
    # machine's readings densely from the index instead of one heap page per reading (rows of
    # a fleet arrive interleaved, so a machine's readings are spread over the heap).
    # docs/queries.md has the plans and timings.
    op.create_index(
        "uq_readings_machine_id_metric_time",
        "readings",
        ["machine_id", "metric", "time"],
        unique=True,
        postgresql_include=["value", "valid"],
    )
    license_ = _timescale_license()
    if license_ is not None:
        op.execute(
            # Also creates readings_time_idx (time DESC), as on plain PostgreSQL below.
            "SELECT create_hypertable('readings', 'time', chunk_time_interval => INTERVAL '1 day')"
        )
        if license_ == "timescale":
            # Community edition only: compress chunks older than a week, per machine and metric.
            op.execute(
                "ALTER TABLE readings SET (timescaledb.compress, "
                "timescaledb.compress_segmentby = 'machine_id, metric', "
                "timescaledb.compress_orderby = 'time DESC')"
            )
            op.execute("SELECT add_compression_policy('readings', INTERVAL '7 days')")
    else:
        op.create_index("readings_time_idx", "readings", [sa.text("time DESC")])

    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("topic", sa.Text()),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload_excerpt", sa.Text()),
        sa.Column("payload_size", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
    )
    op.create_index("ix_dead_letters_received_at", "dead_letters", ["received_at"])


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_table("readings")
    op.drop_table("machine_metrics")
    op.drop_table("machine_group_members")
    op.drop_table("machine_groups")
    op.drop_table("machines")
    bind = op.get_bind()
    machine_connectivity.drop(bind, checkfirst=True)
    machine_status.drop(bind, checkfirst=True)
