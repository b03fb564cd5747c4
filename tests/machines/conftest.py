from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse.auth import service as auth
from plantpulse.auth.permissions import Role
from plantpulse.auth.schemas import UserCreate
from plantpulse.config import Settings
from plantpulse.machines import service
from plantpulse.machines.models import Machine
from plantpulse.machines.schemas import MachineCreate
from plantpulse.state import Resources
from tests.conftest import PASSWORD

MachineMaker = Callable[..., Awaitable[Machine]]


@pytest.fixture
def make_machine(db: AsyncSession) -> MachineMaker:
    """Machines in the test's rolled-back transaction."""
    counter = 0

    async def factory(name: str | None = None, **fields: object) -> Machine:
        nonlocal counter
        counter += 1
        data = MachineCreate.model_validate({"name": name or f"machine-{counter:03}", **fields})
        return await service.create_machine(db, data=data)

    return factory


async def add_readings(
    db: AsyncSession, machine_id: uuid.UUID, times: list[datetime], metric: str = "temp"
) -> None:
    for i, time in enumerate(times):
        await db.execute(
            text(
                "INSERT INTO readings (time, machine_id, metric, value) "
                "VALUES (:time, :machine_id, :metric, :value)"
            ),
            {"time": time, "machine_id": machine_id, "metric": metric, "value": float(i)},
        )


async def count_readings(db: AsyncSession, machine_id: uuid.UUID) -> int:
    count = await db.scalar(
        text("SELECT count(*) FROM readings WHERE machine_id = :m"), {"m": machine_id}
    )
    return int(count or 0)


@dataclass
class CommittedClient:
    """The app with its real per-request transactions (nothing rolled back), as a
    management user that exists for real."""

    client: AsyncClient
    headers: dict[str, str]


@pytest.fixture
async def committed_client(
    running_app: tuple[FastAPI, LifespanManager], resources: Resources, settings: Settings
) -> AsyncIterator[CommittedClient]:
    _, manager = running_app
    name = f"committed-{uuid.uuid4().hex[:8]}"
    async with resources.sessionmaker() as session, session.begin():
        user = await auth.create_user(
            session,
            data=UserCreate(username=name, email=f"{name}@example.com", password=PASSWORD),
            role=Role.management,
        )
    tokens = auth.issue_tokens(settings.auth, user=user)
    transport = ASGITransport(app=manager.app, raise_app_exceptions=False)
    try:
        async with AsyncClient(transport=transport, base_url="http://test") as client:
            yield CommittedClient(client, {"Authorization": f"Bearer {tokens.access_token}"})
    finally:
        async with resources.sessionmaker() as session, session.begin():
            await session.execute(text("DELETE FROM users WHERE id = :id"), {"id": user.id})
