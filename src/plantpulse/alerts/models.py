"""Alert rules, the alerts they raised, and the pending state of duration rules."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, Enum, ForeignKey, Index, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from plantpulse.db import Base, Timestamps, UUIDPrimaryKey, utcnow


class RuleScope(StrEnum):
    machine = "machine"
    group = "group"
    fleet = "fleet"


class RuleKind(StrEnum):
    threshold = "threshold"
    no_data = "no_data"


class Condition(StrEnum):
    gt = ">"
    ge = ">="
    lt = "<"
    le = "<="
    outside = "outside"


class Severity(StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


def _enum(enum: type[StrEnum], name: str) -> Enum:
    return Enum(enum, name=name, values_callable=lambda e: [m.value for m in e])


class AlertRule(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "alert_rules"
    __table_args__ = (
        CheckConstraint(
            "(scope = 'machine') = (machine_id IS NOT NULL) "
            "AND (scope = 'group') = (group_id IS NOT NULL)",
            name="scope_target",
        ),
    )

    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(default=True)
    kind: Mapped[RuleKind] = mapped_column(_enum(RuleKind, "alert_rule_kind"))
    scope: Mapped[RuleScope] = mapped_column(_enum(RuleScope, "alert_rule_scope"))
    machine_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), index=True
    )
    group_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("machine_groups.id", ondelete="CASCADE"), index=True
    )
    metric: Mapped[str | None] = mapped_column(String(64))
    condition: Mapped[Condition | None] = mapped_column(_enum(Condition, "alert_condition"))
    # `threshold` for > >= < <=; `threshold_low`/`threshold_high` for outside.
    threshold: Mapped[float | None]
    threshold_low: Mapped[float | None]
    threshold_high: Mapped[float | None]
    severity: Mapped[Severity] = mapped_column(_enum(Severity, "alert_severity"))
    duration_seconds: Mapped[float] = mapped_column(default=0.0)
    hysteresis: Mapped[float] = mapped_column(default=0.0)
    no_data_seconds: Mapped[float | None]
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )


class Alert(UUIDPrimaryKey, Base):
    __tablename__ = "alerts"
    __table_args__ = (
        # At most one open alert per rule and machine, whichever process raises it.
        Index(
            "uq_alerts_open_rule_machine",
            "rule_id",
            "machine_id",
            unique=True,
            postgresql_where=text("cleared_at IS NULL"),
        ),
        Index("ix_alerts_raised_at", "raised_at"),
    )

    # SET NULL: the history of a deleted rule stays (rule_name keeps what it was called).
    rule_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("alert_rules.id", ondelete="SET NULL")
    )
    rule_name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[RuleKind] = mapped_column(_enum(RuleKind, "alert_rule_kind"))
    machine_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), index=True
    )
    metric: Mapped[str | None] = mapped_column(String(64))
    severity: Mapped[Severity] = mapped_column(_enum(Severity, "alert_severity"))
    message: Mapped[str] = mapped_column(Text)
    value: Mapped[float | None]
    raised_at: Mapped[datetime]
    cleared_at: Mapped[datetime | None]
    clear_value: Mapped[float | None]
    acknowledged_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    acknowledged_at: Mapped[datetime | None]
    ack_comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)


class AlertState(Base):
    """A duration rule's condition holding but not yet long enough: kept so a restart resumes
    the countdown instead of starting it again."""

    __tablename__ = "alert_states"

    rule_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("alert_rules.id", ondelete="CASCADE"), primary_key=True
    )
    machine_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), primary_key=True
    )
    pending_since: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)
