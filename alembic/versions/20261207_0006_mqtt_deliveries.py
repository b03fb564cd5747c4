"""MQTT packet ids committed per client and batch: recognising QoS 1 redeliveries.

Revision ID: 0006_mqtt_deliveries
Revises: 0005_rollups
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_mqtt_deliveries"
down_revision: str | None = "0005_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One row per committed batch of one client: the packet ids of its recorded messages and
    # their 16-byte digests, concatenated in the same order (ingest/redelivery.py).
    op.create_table(
        "mqtt_deliveries",
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("batch", sa.BigInteger(), nullable=False),
        sa.Column("packet_ids", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("digests", sa.LargeBinary(), nullable=False),
        sa.Column(
            "committed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("client_id", "batch", name="pk_mqtt_deliveries"),
    )


def downgrade() -> None:
    op.drop_table("mqtt_deliveries")
