from __future__ import annotations

import math
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from plantpulse.alerts.models import Condition, RuleKind, RuleScope, Severity
from plantpulse.schemas import Text, UtcDatetime

DAY = 86_400.0


class _RuleFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=128)
    description: Text | None = Field(default=None, max_length=2000)
    enabled: bool = True
    kind: RuleKind = RuleKind.threshold
    scope: RuleScope
    machine_id: uuid.UUID | None = Field(default=None, description="Required for scope=machine")
    group_id: uuid.UUID | None = Field(default=None, description="Required for scope=group")
    metric: Text | None = Field(
        default=None, max_length=64, description="Required for threshold rules"
    )
    condition: Condition | None = Field(default=None, description="Required for threshold rules")
    threshold: float | None = Field(default=None, description="For > >= < <=")
    threshold_low: float | None = Field(default=None, description="For outside")
    threshold_high: float | None = Field(default=None, description="For outside")
    severity: Severity = Severity.warning
    duration_seconds: float = Field(
        default=0.0, ge=0, le=DAY, description="The condition must hold this long (event time)"
    )
    hysteresis: float = Field(
        default=0.0, ge=0, description="How far back inside the limit a value must be to clear"
    )
    no_data_seconds: float | None = Field(
        default=None, ge=1, le=30 * DAY, description="Required for no_data rules"
    )


def check_rule(rule: _RuleFields | dict[str, Any]) -> None:
    """Cross-field rules, shared by create and by update (after merging)."""
    r = rule if isinstance(rule, dict) else rule.model_dump()
    scope, kind = r["scope"], r["kind"]
    if (scope == RuleScope.machine) != (r["machine_id"] is not None):
        raise ValueError("machine_id is required for scope=machine and only allowed there")
    if (scope == RuleScope.group) != (r["group_id"] is not None):
        raise ValueError("group_id is required for scope=group and only allowed there")
    for name in ("threshold", "threshold_low", "threshold_high", "hysteresis"):
        if r[name] is not None and not math.isfinite(r[name]):
            raise ValueError(f"{name} must be a finite number")
    if kind == RuleKind.no_data:
        if r["no_data_seconds"] is None:
            raise ValueError("no_data rules need no_data_seconds")
        if r["condition"] is not None:
            raise ValueError("no_data rules take no condition")
        return
    if not r["metric"] or r["condition"] is None:
        raise ValueError("threshold rules need a metric and a condition")
    if r["no_data_seconds"] is not None:
        raise ValueError("no_data_seconds is only for no_data rules")
    if r["condition"] == Condition.outside:
        low, high = r["threshold_low"], r["threshold_high"]
        if low is None or high is None or low >= high:
            raise ValueError("outside needs threshold_low < threshold_high")
        if r["threshold"] is not None:
            raise ValueError("outside uses threshold_low/threshold_high, not threshold")
        if 2 * r["hysteresis"] >= high - low:
            raise ValueError("hysteresis must be less than half the range, or it never clears")
    else:
        if r["threshold"] is None:
            raise ValueError(f"condition {r['condition']} needs a threshold")
        if r["threshold_low"] is not None or r["threshold_high"] is not None:
            raise ValueError("threshold_low/threshold_high are only for outside")


class AlertRuleCreate(_RuleFields):
    @model_validator(mode="after")
    def _consistent(self) -> AlertRuleCreate:
        check_rule(self)
        return self


class AlertRuleUpdate(BaseModel):
    """Any subset of fields; the merged rule must still be consistent."""

    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(default=None, min_length=1, max_length=128)
    description: Text | None = Field(default=None, max_length=2000)
    enabled: bool | None = None
    scope: RuleScope | None = None
    machine_id: uuid.UUID | None = None
    group_id: uuid.UUID | None = None
    metric: Text | None = Field(default=None, max_length=64)
    condition: Condition | None = None
    threshold: float | None = None
    threshold_low: float | None = None
    threshold_high: float | None = None
    severity: Severity | None = None
    duration_seconds: float | None = Field(default=None, ge=0, le=DAY)
    hysteresis: float | None = Field(default=None, ge=0)
    no_data_seconds: float | None = Field(default=None, ge=1, le=30 * DAY)

    @model_validator(mode="before")
    @classmethod
    def _required_fields_not_null(cls, data: Any) -> Any:
        # Omitted means unchanged; null clears a nullable field. These columns have no empty
        # state, so an explicit null is a validation error (it was a NOT NULL violation).
        if isinstance(data, dict):
            nulls = [name for name in _NOT_NULL if name in data and data[name] is None]
            if nulls:
                raise ValueError(f"{', '.join(nulls)} cannot be null")
        return data


_NOT_NULL = ("name", "enabled", "scope", "severity", "duration_seconds", "hysteresis")


class AlertRuleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    enabled: bool
    kind: RuleKind
    scope: RuleScope
    machine_id: uuid.UUID | None
    group_id: uuid.UUID | None
    metric: str | None
    condition: Condition | None
    threshold: float | None
    threshold_low: float | None
    threshold_high: float | None
    severity: Severity
    duration_seconds: float
    hysteresis: float
    no_data_seconds: float | None
    created_by: uuid.UUID | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class AlertRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    rule_id: uuid.UUID | None
    rule_name: str
    kind: RuleKind
    machine_id: uuid.UUID
    metric: str | None
    severity: Severity
    message: str
    value: float | None
    raised_at: UtcDatetime
    cleared_at: UtcDatetime | None
    clear_value: float | None
    acknowledged_by: uuid.UUID | None
    acknowledged_at: UtcDatetime | None
    ack_comment: str | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def active(self) -> bool:
        return self.cleared_at is None


class AcknowledgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: Text | None = Field(default=None, max_length=2000)
