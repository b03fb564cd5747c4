"""MQTT packet ids committed per client, to recognise QoS 1 redeliveries (docs/ingest.md).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mqtt_deliveries",
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("packet_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column(
            "committed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("client_id", "packet_id", name="pk_mqtt_deliveries"),
        # At most 65,535 rows per client, rewritten in place: room on each page for the new
        # version keeps the upserts HOT (no index update).
        postgresql_with={"fillfactor": 70},
    )


def downgrade() -> None:
    op.drop_table("mqtt_deliveries")
