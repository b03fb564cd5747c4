from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from plantpulse.alerts import service
from plantpulse.alerts.models import AlertRule
from plantpulse.alerts.schemas import AlertRuleCreate

RuleFactory = Callable[..., Awaitable[AlertRule]]


@pytest.fixture
async def committed_rule(engine: AsyncEngine, pg_pool: asyncpg.Pool) -> AsyncIterator[RuleFactory]:
    """Rules committed for real (the evaluator reads them in its own sessions), deleted
    afterwards with their alerts."""
    created: list[uuid.UUID] = []

    async def factory(**fields: Any) -> AlertRule:
        values: dict[str, Any] = {
            "name": "too hot",
            "metric": "temp",
            "condition": ">",
            "threshold": 85,
        }
        values.update(fields)
        data = AlertRuleCreate.model_validate(values)
        async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
            rule = await service.create_rule(session, data=data, user_id=None)
        created.append(rule.id)
        return rule

    yield factory
    if created:
        await pg_pool.execute("DELETE FROM alerts WHERE rule_id = ANY($1::uuid[])", created)
        await pg_pool.execute("DELETE FROM alert_rules WHERE id = ANY($1::uuid[])", created)
