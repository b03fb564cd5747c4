"""Alert rules and alerts. Plain async functions: session first, the rest keyword-only.

The functions at the end are what the evaluator persists with, in its own transactions.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse.alerts.models import Alert, AlertRule, AlertState, RuleKind, RuleScope, Severity
from plantpulse.alerts.rules import RuleSpec
from plantpulse.alerts.schemas import AlertRuleCreate, AlertRuleUpdate, check_rule
from plantpulse.db import utcnow
from plantpulse.errors import Conflict, InvalidInput, NotFound
from plantpulse.machines import service as machines


class AlertRuleNotFound(NotFound):
    pass


class AlertNotFound(NotFound):
    pass


class InvalidRule(InvalidInput):
    pass


class AlreadyAcknowledged(Conflict):
    pass


async def _check_target(session: AsyncSession, values: dict[str, Any]) -> None:
    if values.get("machine_id") is not None:
        await machines.get_machine(session, values["machine_id"])
    if values.get("group_id") is not None:
        await machines.get_group(session, values["group_id"])


async def list_rules(
    session: AsyncSession,
    *,
    enabled: bool | None,
    kind: RuleKind | None,
    machine_id: uuid.UUID | None,
    severity: Severity | None,
    limit: int,
    offset: int,
) -> tuple[list[AlertRule], int]:
    query = select(AlertRule)
    if enabled is not None:
        query = query.where(AlertRule.enabled.is_(enabled))
    if kind is not None:
        query = query.where(AlertRule.kind == kind)
    if machine_id is not None:
        query = query.where(AlertRule.machine_id == machine_id)
    if severity is not None:
        query = query.where(AlertRule.severity == severity)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(
        query.order_by(AlertRule.created_at, AlertRule.id).limit(limit).offset(offset)
    )
    return list(rows), int(total or 0)


async def get_rule(session: AsyncSession, rule_id: uuid.UUID) -> AlertRule:
    rule = await session.get(AlertRule, rule_id)
    if rule is None:
        raise AlertRuleNotFound(f"alert rule {rule_id} does not exist")
    return rule


async def create_rule(
    session: AsyncSession, *, data: AlertRuleCreate, user_id: uuid.UUID | None
) -> AlertRule:
    values = data.model_dump()
    await _check_target(session, values)
    rule = AlertRule(**values, created_by=user_id)
    session.add(rule)
    await session.flush()
    await session.refresh(rule)
    return rule


_RULE_FIELDS = tuple(AlertRuleCreate.model_fields)


async def update_rule(
    session: AsyncSession, *, rule_id: uuid.UUID, data: AlertRuleUpdate
) -> tuple[AlertRule, list[Alert]]:
    """Apply the changes; disabling a rule clears its open alerts (returned)."""
    rule = await get_rule(session, rule_id)
    changes = data.model_dump(exclude_unset=True)
    if changes.get("scope") not in (None, RuleScope.machine) and "machine_id" not in changes:
        changes["machine_id"] = None
    if changes.get("scope") not in (None, RuleScope.group) and "group_id" not in changes:
        changes["group_id"] = None
    merged = {name: getattr(rule, name) for name in _RULE_FIELDS} | changes
    try:
        check_rule(merged)
    except ValueError as exc:
        raise InvalidRule(str(exc)) from exc
    await _check_target(session, changes)
    for name, value in changes.items():
        setattr(rule, name, value)
    rule.updated_at = utcnow()
    cleared = await _clear_open(session, rule.id) if rule.enabled is False else []
    await session.flush()
    await session.refresh(rule)
    return rule, cleared


async def delete_rule(session: AsyncSession, *, rule_id: uuid.UUID) -> list[Alert]:
    """Delete the rule; its alerts stay as history, the open ones cleared (returned)."""
    rule = await get_rule(session, rule_id)
    cleared = await _clear_open(session, rule.id)
    await session.delete(rule)
    await session.flush()
    return cleared


async def _clear_open(session: AsyncSession, rule_id: uuid.UUID) -> list[Alert]:
    rows = await session.scalars(
        update(Alert)
        .where(Alert.rule_id == rule_id, Alert.cleared_at.is_(None))
        .values(cleared_at=utcnow())
        .returning(Alert),
        execution_options={"synchronize_session": False},
    )
    return list(rows)


async def list_alerts(
    session: AsyncSession,
    *,
    active: bool | None,
    acknowledged: bool | None,
    severity: Severity | None,
    machine_id: uuid.UUID | None,
    rule_id: uuid.UUID | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
) -> tuple[list[Alert], int]:
    """Newest first. `since`/`until` bound `raised_at`."""
    query = select(Alert)
    if active is not None:
        query = query.where(Alert.cleared_at.is_(None) if active else Alert.cleared_at.is_not(None))
    if acknowledged is not None:
        column = Alert.acknowledged_at
        query = query.where(column.is_not(None) if acknowledged else column.is_(None))
    if severity is not None:
        query = query.where(Alert.severity == severity)
    if machine_id is not None:
        query = query.where(Alert.machine_id == machine_id)
    if rule_id is not None:
        query = query.where(Alert.rule_id == rule_id)
    if since is not None:
        query = query.where(Alert.raised_at >= since)
    if until is not None:
        query = query.where(Alert.raised_at < until)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(
        query.order_by(Alert.raised_at.desc(), Alert.id).limit(limit).offset(offset)
    )
    return list(rows), int(total or 0)


async def get_alert(session: AsyncSession, alert_id: uuid.UUID) -> Alert:
    alert = await session.get(Alert, alert_id)
    if alert is None:
        raise AlertNotFound(f"alert {alert_id} does not exist")
    return alert


async def acknowledge(
    session: AsyncSession, *, alert_id: uuid.UUID, user_id: uuid.UUID, comment: str | None
) -> Alert:
    """Record who acknowledged the alert, when and why; once per alert."""
    alert = await session.get(Alert, alert_id, with_for_update=True)
    if alert is None:
        raise AlertNotFound(f"alert {alert_id} does not exist")
    if alert.acknowledged_at is not None:
        raise AlreadyAcknowledged(
            f"alert {alert_id} was already acknowledged at {alert.acknowledged_at.isoformat()}"
        )
    alert.acknowledged_by = user_id
    alert.acknowledged_at = utcnow()
    alert.ack_comment = comment
    await session.flush()
    return alert


# --- used by the evaluator, each call inside its own transaction ---


async def enabled_rules(session: AsyncSession) -> list[AlertRule]:
    return list(await session.scalars(select(AlertRule).where(AlertRule.enabled.is_(True))))


async def open_alerts(session: AsyncSession) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(rule id, machine id) of every open alert."""
    rows = await session.execute(
        select(Alert.rule_id, Alert.machine_id).where(
            Alert.cleared_at.is_(None), Alert.rule_id.is_not(None)
        )
    )
    return [(r, m) for r, m in rows if r is not None]


async def pending_states(session: AsyncSession) -> list[tuple[uuid.UUID, uuid.UUID, datetime]]:
    rows = await session.execute(
        select(AlertState.rule_id, AlertState.machine_id, AlertState.pending_since)
    )
    return [(r, m, t) for r, m, t in rows]


async def raise_alert(
    session: AsyncSession,
    *,
    rule: RuleSpec,
    machine_id: uuid.UUID,
    value: float | None,
    at: datetime,
    message: str,
) -> Alert | None:
    """Open an alert; None if one is already open for this rule and machine (another process
    may have raised it)."""
    await drop_pending(session, rule_id=rule.id, machine_id=machine_id)
    statement = (
        insert(Alert)
        .values(
            id=uuid.uuid4(),
            rule_id=rule.id,
            rule_name=rule.name,
            kind=rule.kind,
            machine_id=machine_id,
            metric=rule.metric,
            severity=rule.severity,
            message=message,
            value=value,
            raised_at=at,
        )
        .on_conflict_do_nothing(
            index_elements=["rule_id", "machine_id"], index_where=Alert.cleared_at.is_(None)
        )
        .returning(Alert)
    )
    return (await session.scalars(statement)).one_or_none()


async def clear_alert(
    session: AsyncSession,
    *,
    rule_id: uuid.UUID,
    machine_id: uuid.UUID,
    value: float | None,
    at: datetime,
) -> Alert | None:
    statement = (
        update(Alert)
        .where(Alert.rule_id == rule_id, Alert.machine_id == machine_id, Alert.cleared_at.is_(None))
        .values(cleared_at=at, clear_value=value)
        .returning(Alert)
    )
    result = await session.scalars(statement, execution_options={"synchronize_session": False})
    return result.one_or_none()


async def set_pending(
    session: AsyncSession, *, rule_id: uuid.UUID, machine_id: uuid.UUID, since: datetime
) -> None:
    statement = insert(AlertState).values(
        rule_id=rule_id, machine_id=machine_id, pending_since=since, updated_at=utcnow()
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["rule_id", "machine_id"],
            set_={"pending_since": since, "updated_at": utcnow()},
        )
    )


async def drop_pending(session: AsyncSession, *, rule_id: uuid.UUID, machine_id: uuid.UUID) -> None:
    await session.execute(
        delete(AlertState).where(AlertState.rule_id == rule_id, AlertState.machine_id == machine_id)
    )
