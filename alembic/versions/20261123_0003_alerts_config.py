"""Alert rules, alerts, pending alert state, system configuration and its audit trail.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

rule_kind = postgresql.ENUM("threshold", "no_data", name="alert_rule_kind")
rule_scope = postgresql.ENUM("machine", "group", "fleet", name="alert_rule_scope")
condition = postgresql.ENUM(">", ">=", "<", "<=", "outside", name="alert_condition")
severity = postgresql.ENUM("info", "warning", "critical", name="alert_severity")
ENUMS = (rule_kind, rule_scope, condition, severity)


def _existing(name: str) -> postgresql.ENUM:
    return postgresql.ENUM(name=name, create_type=False)


def _now() -> sa.Column[object]:
    return sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )


def _user_fk(column: str, table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], ["users.id"], name=f"fk_{table}_{column}_users", ondelete="SET NULL"
    )


def upgrade() -> None:
    bind = op.get_bind()
    for enum in ENUMS:
        enum.create(bind, checkfirst=True)
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("kind", _existing("alert_rule_kind"), nullable=False),
        sa.Column("scope", _existing("alert_rule_scope"), nullable=False),
        sa.Column("machine_id", sa.Uuid()),
        sa.Column("group_id", sa.Uuid()),
        sa.Column("metric", sa.String(64)),
        sa.Column("condition", _existing("alert_condition")),
        sa.Column("threshold", sa.Double()),
        sa.Column("threshold_low", sa.Double()),
        sa.Column("threshold_high", sa.Double()),
        sa.Column("severity", _existing("alert_severity"), nullable=False),
        sa.Column("duration_seconds", sa.Double(), nullable=False, server_default="0"),
        sa.Column("hysteresis", sa.Double(), nullable=False, server_default="0"),
        sa.Column("no_data_seconds", sa.Double()),
        sa.Column("created_by", sa.Uuid()),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        _now(),
        sa.PrimaryKeyConstraint("id", name="pk_alert_rules"),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["machines.id"],
            name="fk_alert_rules_machine_id_machines",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["machine_groups.id"],
            name="fk_alert_rules_group_id_machine_groups",
            ondelete="CASCADE",
        ),
        _user_fk("created_by", "alert_rules"),
        sa.CheckConstraint(
            "(scope = 'machine') = (machine_id IS NOT NULL) "
            "AND (scope = 'group') = (group_id IS NOT NULL)",
            name="ck_alert_rules_scope_target",
        ),
    )
    op.create_index("ix_alert_rules_machine_id", "alert_rules", ["machine_id"])
    op.create_index("ix_alert_rules_group_id", "alert_rules", ["group_id"])

    op.create_table(
        "alerts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("rule_id", sa.Uuid()),
        sa.Column("rule_name", sa.String(128), nullable=False),
        sa.Column("kind", _existing("alert_rule_kind"), nullable=False),
        sa.Column("machine_id", sa.Uuid(), nullable=False),
        sa.Column("metric", sa.String(64)),
        sa.Column("severity", _existing("alert_severity"), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("value", sa.Double()),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", sa.DateTime(timezone=True)),
        sa.Column("clear_value", sa.Double()),
        sa.Column("acknowledged_by", sa.Uuid()),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
        sa.Column("ack_comment", sa.Text()),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["alert_rules.id"],
            name="fk_alerts_rule_id_alert_rules",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["machines.id"],
            name="fk_alerts_machine_id_machines",
            ondelete="CASCADE",
        ),
        _user_fk("acknowledged_by", "alerts"),
    )
    op.create_index("ix_alerts_machine_id", "alerts", ["machine_id"])
    op.create_index("ix_alerts_raised_at", "alerts", ["raised_at"])
    op.create_index(
        "uq_alerts_open_rule_machine",
        "alerts",
        ["rule_id", "machine_id"],
        unique=True,
        postgresql_where=sa.text("cleared_at IS NULL"),
    )

    op.create_table(
        "alert_states",
        sa.Column("rule_id", sa.Uuid(), nullable=False),
        sa.Column("machine_id", sa.Uuid(), nullable=False),
        sa.Column("pending_since", sa.DateTime(timezone=True), nullable=False),
        _now(),
        sa.PrimaryKeyConstraint("rule_id", "machine_id", name="pk_alert_states"),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["alert_rules.id"],
            name="fk_alert_states_rule_id_alert_rules",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["machines.id"],
            name="fk_alert_states_machine_id_machines",
            ondelete="CASCADE",
        ),
    )

    op.create_table(
        "system_config",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", postgresql.JSONB()),
        sa.Column("updated_by", sa.Uuid()),
        _now(),
        sa.PrimaryKeyConstraint("key", name="pk_system_config"),
        _user_fk("updated_by", "system_config"),
    )
    op.create_table(
        "config_audit",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("old_value", postgresql.JSONB()),
        sa.Column("new_value", postgresql.JSONB()),
        sa.Column("changed_by", sa.Uuid()),
        sa.Column(
            "changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("id", name="pk_config_audit"),
        _user_fk("changed_by", "config_audit"),
    )
    op.create_index("ix_config_audit_key", "config_audit", ["key"])
    op.create_index("ix_config_audit_changed_at", "config_audit", ["changed_at"])


def downgrade() -> None:
    op.drop_table("config_audit")
    op.drop_table("system_config")
    op.drop_table("alert_states")
    op.drop_table("alerts")
    op.drop_table("alert_rules")
    bind = op.get_bind()
    for enum in reversed(ENUMS):
        enum.drop(bind, checkfirst=True)
