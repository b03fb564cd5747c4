"""How a rule judges a series of readings. Pure: no I/O, so scripted series test it exactly.

Threshold rules, with hysteresis `h` (the deadband for clearing):

| condition | raised when    | cleared when            |
|-----------|----------------|-------------------------|
| `>`  t    | v > t          | v <= t - h              |
| `>=` t    | v >= t         | v < t - h               |
| `<`  t    | v < t          | v >= t + h              |
| `<=` t    | v <= t         | v > t + h               |
| outside   | v < lo or v > hi | lo + h <= v <= hi - h |

With `duration_seconds` d > 0 the condition must hold on every reading for d seconds of
*event time* (reading timestamps) before the alert is raised; one reading back inside starts
the countdown again. Readings older than the last one judged for the same rule and machine
(late arrivals) are not judged: they cannot rewrite what was already decided.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import cast

from plantpulse.alerts.models import AlertRule, Condition, RuleKind, RuleScope, Severity


@dataclass(frozen=True, slots=True)
class RuleSpec:
    id: uuid.UUID
    name: str
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

    @classmethod
    def of(cls, rule: AlertRule) -> RuleSpec:
        return cls(
            id=rule.id,
            name=rule.name,
            kind=rule.kind,
            scope=rule.scope,
            machine_id=rule.machine_id,
            group_id=rule.group_id,
            metric=rule.metric,
            condition=rule.condition,
            threshold=rule.threshold,
            threshold_low=rule.threshold_low,
            threshold_high=rule.threshold_high,
            severity=rule.severity,
            duration_seconds=rule.duration_seconds,
            hysteresis=rule.hysteresis,
            no_data_seconds=rule.no_data_seconds,
        )

    # Schemas guarantee the thresholds each condition needs; cast() only informs mypy.

    def breached(self, v: float) -> bool:
        c, t = self.condition, cast(float, self.threshold)
        if c is Condition.outside:
            return v < cast(float, self.threshold_low) or v > cast(float, self.threshold_high)
        if c is Condition.gt:
            return v > t
        if c is Condition.ge:
            return v >= t
        if c is Condition.lt:
            return v < t
        return v <= t

    def recovered(self, v: float) -> bool:
        c, t, h = self.condition, cast(float, self.threshold), self.hysteresis
        if c is Condition.outside:
            low, high = cast(float, self.threshold_low), cast(float, self.threshold_high)
            return low + h <= v <= high - h
        if c is Condition.gt:
            return v <= t - h
        if c is Condition.ge:
            return v < t - h
        if c is Condition.lt:
            return v >= t + h
        return v > t + h

    def describe(self, value: float | None) -> str:
        if self.kind is RuleKind.no_data:
            return f"no data for more than {self.no_data_seconds:g} s"
        if self.condition is Condition.outside:
            limit = f"outside [{self.threshold_low:g}, {self.threshold_high:g}]"
        else:
            limit = f"{self.condition} {self.threshold:g}"
        held = f" for {self.duration_seconds:g} s" if self.duration_seconds > 0 else ""
        return f"{self.metric} = {value:g} {limit}{held}"


class Step(StrEnum):
    raise_ = "raise"
    clear = "clear"
    # The countdown of a duration rule started / was reset: persisted, so a restart resumes it.
    pending = "pending"
    reset = "reset"


@dataclass(slots=True)
class RuleState:
    active: bool = False
    pending_since: datetime | None = None
    last_time: datetime | None = None


def step(rule: RuleSpec, state: RuleState, t: datetime, value: float) -> Step | None:
    """Judge one reading; updates `state` and says what changed (None: nothing to persist)."""
    if state.last_time is not None and t < state.last_time:
        return None
    state.last_time = t
    if state.active:
        if rule.recovered(value):
            state.active = False
            return Step.clear
        return None
    if not rule.breached(value):
        if state.pending_since is not None:
            state.pending_since = None
            return Step.reset
        return None
    if rule.duration_seconds > 0:
        if state.pending_since is None:
            state.pending_since = t
            return Step.pending
        if (t - state.pending_since).total_seconds() < rule.duration_seconds:
            return None
    state.active = True
    state.pending_since = None
    return Step.raise_
