from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Query, status

from plantpulse.alerts import service
from plantpulse.alerts.evaluator import alert_events, evaluator_of
from plantpulse.alerts.models import Alert, RuleKind, Severity
from plantpulse.alerts.schemas import (
    AcknowledgeRequest,
    AlertRead,
    AlertRuleCreate,
    AlertRuleRead,
    AlertRuleUpdate,
)
from plantpulse.auth.dependencies import Principal, require
from plantpulse.auth.permissions import Permission
from plantpulse.db import DbSession
from plantpulse.errors import error_responses
from plantpulse.realtime.hub import hub_of
from plantpulse.schemas import InputDatetime, Offset, Page
from plantpulse.state import AppResources, Resources

rules_router = APIRouter(
    prefix="/api/v1/alert-rules", tags=["alerts"], responses=error_responses(401, 403)
)
alerts_router = APIRouter(
    prefix="/api/v1/alerts", tags=["alerts"], responses=error_responses(401, 403)
)

ReadConfig = Annotated[Principal, Depends(require(Permission.config_read))]
WriteConfig = Annotated[Principal, Depends(require(Permission.config_write))]
ReadAlerts = Annotated[Principal, Depends(require(Permission.alerts_read))]
AckAlerts = Annotated[Principal, Depends(require(Permission.alerts_ack))]
Limit = Annotated[int, Query(ge=1, le=1000)]


# Background tasks run after the response, so after DbSession committed. They are coroutines
# on purpose: Starlette runs plain functions in a worker thread, away from the event loop.


def _after_commit(
    tasks: BackgroundTasks, resources: Resources, *, action: str, alerts: list[Alert]
) -> None:
    if not alerts:
        return
    events = alert_events(action, alerts)

    async def publish() -> None:
        hub_of(resources).publish(events)

    tasks.add_task(publish)


def _rules_changed(tasks: BackgroundTasks, resources: Resources) -> None:
    async def changed() -> None:
        evaluator_of(resources).rules_changed()

    tasks.add_task(changed)


@rules_router.get("", responses=error_responses(422))
async def list_rules(
    _: ReadConfig,
    session: DbSession,
    enabled: bool | None = None,
    kind: RuleKind | None = None,
    machine_id: uuid.UUID | None = None,
    severity: Severity | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AlertRuleRead]:
    """Alert rules, oldest first, with optional filters."""
    rows, total = await service.list_rules(
        session,
        enabled=enabled,
        kind=kind,
        machine_id=machine_id,
        severity=severity,
        limit=limit,
        offset=offset,
    )
    items = [AlertRuleRead.model_validate(r) for r in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)


@rules_router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(404, 422))
async def create_rule(
    data: AlertRuleCreate,
    principal: WriteConfig,
    session: DbSession,
    resources: AppResources,
    tasks: BackgroundTasks,
) -> AlertRuleRead:
    """Create a threshold or no-data rule for a machine, a group or the fleet."""
    rule = await service.create_rule(session, data=data, user_id=principal.user.id)
    _rules_changed(tasks, resources)
    return AlertRuleRead.model_validate(rule)


@rules_router.get("/{rule_id}", responses=error_responses(404, 422))
async def get_rule(rule_id: uuid.UUID, _: ReadConfig, session: DbSession) -> AlertRuleRead:
    """One alert rule."""
    return AlertRuleRead.model_validate(await service.get_rule(session, rule_id))


@rules_router.patch("/{rule_id}", responses=error_responses(404, 422))
async def update_rule(
    rule_id: uuid.UUID,
    data: AlertRuleUpdate,
    _: WriteConfig,
    session: DbSession,
    resources: AppResources,
    tasks: BackgroundTasks,
) -> AlertRuleRead:
    """Change a rule; disabling it clears its open alerts."""
    rule, cleared = await service.update_rule(session, rule_id=rule_id, data=data)
    _rules_changed(tasks, resources)
    _after_commit(tasks, resources, action="cleared", alerts=cleared)
    return AlertRuleRead.model_validate(rule)


@rules_router.delete(
    "/{rule_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404, 422)
)
async def delete_rule(
    rule_id: uuid.UUID,
    _: WriteConfig,
    session: DbSession,
    resources: AppResources,
    tasks: BackgroundTasks,
) -> None:
    """Delete a rule; its alerts stay in the history, open ones are cleared."""
    cleared = await service.delete_rule(session, rule_id=rule_id)
    _rules_changed(tasks, resources)
    _after_commit(tasks, resources, action="cleared", alerts=cleared)


@alerts_router.get("", responses=error_responses(422))
async def list_alerts(
    _: ReadAlerts,
    session: DbSession,
    active: Annotated[bool | None, Query(description="Open (true) or cleared (false)")] = None,
    acknowledged: bool | None = None,
    severity: Severity | None = None,
    machine_id: uuid.UUID | None = None,
    rule_id: uuid.UUID | None = None,
    since: Annotated[InputDatetime | None, Query(description="raised_at >= since")] = None,
    until: Annotated[InputDatetime | None, Query(description="raised_at < until")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AlertRead]:
    """Alerts, newest first, with filters."""
    rows, total = await service.list_alerts(
        session,
        active=active,
        acknowledged=acknowledged,
        severity=severity,
        machine_id=machine_id,
        rule_id=rule_id,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    items = [AlertRead.model_validate(a) for a in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)


@alerts_router.get("/{alert_id}", responses=error_responses(404, 422))
async def get_alert(alert_id: uuid.UUID, _: ReadAlerts, session: DbSession) -> AlertRead:
    """One alert."""
    return AlertRead.model_validate(await service.get_alert(session, alert_id))


@alerts_router.post("/{alert_id}/acknowledge", responses=error_responses(404, 409, 422))
async def acknowledge_alert(
    alert_id: uuid.UUID,
    principal: AckAlerts,
    session: DbSession,
    resources: AppResources,
    tasks: BackgroundTasks,
    data: AcknowledgeRequest | None = None,
) -> AlertRead:
    """Acknowledge an alert with an optional comment; who and when are recorded."""
    alert = await service.acknowledge(
        session,
        alert_id=alert_id,
        user_id=principal.user.id,
        comment=data.comment if data else None,
    )
    _after_commit(tasks, resources, action="acknowledged", alerts=[alert])
    return AlertRead.model_validate(alert)
