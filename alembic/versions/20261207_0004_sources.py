"""External HTTP sources polled for readings, and the record of each poll.

Revision ID: 0004_sources
Revises: 0003
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_sources"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _stamp(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("method", sa.String(8), nullable=False, server_default="GET"),
        sa.Column("body", postgresql.JSONB()),
        # Header values are secrets (tokens, passwords): only their names are stored in clear.
        sa.Column("header_names", postgresql.JSONB(), nullable=False, server_default="[]"),
        sa.Column("headers_encrypted", sa.Text()),
        sa.Column("interval_seconds", sa.Double()),
        sa.Column("timeout_seconds", sa.Double(), nullable=False, server_default="10"),
        sa.Column("machine_id", sa.Uuid(), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("decoder", postgresql.JSONB(), nullable=False),
        sa.Column("bad_tags", postgresql.JSONB()),
        # The schedule: which process polls next, and when (see sources/poller.py).
        sa.Column("next_poll_at", sa.DateTime(timezone=True)),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_by", sa.Uuid()),
        _stamp("created_at"),
        _stamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_sources"),
        sa.UniqueConstraint("name", name="uq_sources_name"),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["machines.id"],
            name="fk_sources_machine_id_machines",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name="fk_sources_created_by_users", ondelete="SET NULL"
        ),
    )
    op.create_index("ix_sources_next_poll_at", "sources", ["next_poll_at"])
    op.create_index("ix_sources_machine_id", "sources", ["machine_id"])
    op.create_table(
        "source_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("source_id", sa.Uuid(), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=False),
        sa.Column("http_status", sa.Integer()),
        sa.Column("points", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("stored", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("duplicates", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("invalid", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rejected", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rejections", postgresql.JSONB(), nullable=False, server_default="[]"),
        sa.Column("error", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="pk_source_runs"),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["sources.id"],
            name="fk_source_runs_source_id_sources",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_source_runs_source_id_started_at", "source_runs", ["source_id", "started_at"]
    )


def downgrade() -> None:
    op.drop_table("source_runs")
    op.drop_table("sources")
