from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal, TypedDict, Unpack

import asyncpg
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from plantpulse.app import create_app
from plantpulse.auth import service as auth
from plantpulse.auth.models import User
from plantpulse.auth.permissions import Role
from plantpulse.auth.schemas import UserCreate
from plantpulse.config import (
    AlertSettings,
    AuthSettings,
    DatabaseSettings,
    IngestSettings,
    MqttSettings,
    RealtimeSettings,
    RedisSettings,
    Settings,
    SourcesSettings,
    SysconfigSettings,
)
from plantpulse.db import get_db_session, make_engine
from plantpulse.state import Resources
from tests import support

PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """One migrated database for the run; tests roll their changes back."""
    url = await support.create_database("main")
    try:
        await support.migrate(url)
        await support.pause_policies(url)
        yield url
    finally:
        await support.drop_database(url)


class SettingsFields(TypedDict, total=False):
    """The fields of `Settings`, so `make_settings` overrides are type checked."""

    env: Literal["development", "test", "production"]
    log_level: str
    workers: int
    database: DatabaseSettings
    redis: RedisSettings
    auth: AuthSettings
    mqtt: MqttSettings
    ingest: IngestSettings
    realtime: RealtimeSettings
    alerts: AlertSettings
    sysconfig: SysconfigSettings
    sources: SourcesSettings


def make_settings(database_url: str, **overrides: Unpack[SettingsFields]) -> Settings:
    values: SettingsFields = {
        "env": "test",
        "database": DatabaseSettings(url=database_url, pool_size=5),
        "redis": RedisSettings(url=support.REDIS_URL, key_prefix=f"pptest:{support.RUN_ID}:"),
        "auth": AuthSettings(jwt_secret=SecretStr(secrets.token_urlsafe(32))),
        "mqtt": MqttSettings(enabled=False),
        # No source scheduler in shared test apps: tests/sources starts its own.
        "sources": SourcesSettings(poller_enabled=False),
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings.database)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, LifespanManager]]:
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        yield app, manager
    redis = Redis.from_url(support.REDIS_URL)
    async for key in redis.scan_iter(match=f"pptest:{support.RUN_ID}:*"):
        await redis.delete(key)
    await redis.aclose()


@pytest.fixture
def resources(running_app: tuple[FastAPI, LifespanManager]) -> Resources:
    _, manager = running_app
    resources: Resources = manager._state["resources"]
    return resources


@pytest.fixture
async def db(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session inside a transaction that is rolled back after the test.

    Requests made through `client` use this same session; their commits become savepoints.
    """
    async with engine.connect() as connection:
        transaction = await connection.begin()
        session = AsyncSession(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        try:
            yield session
        finally:
            await session.close()
            await transaction.rollback()


@pytest.fixture
async def client(
    running_app: tuple[FastAPI, LifespanManager], db: AsyncSession
) -> AsyncIterator[AsyncClient]:
    app, manager = running_app

    async def session_override() -> AsyncIterator[AsyncSession]:
        # A savepoint per request: a failing request rolls back its own work, as in production.
        async with db.begin_nested():
            yield db

    app.dependency_overrides[get_db_session] = session_override
    transport = ASGITransport(app=manager.app, raise_app_exceptions=False)
    try:
        async with AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        app.dependency_overrides.clear()


UserFactory = Callable[..., Awaitable[User]]


@pytest.fixture
def make_user(db: AsyncSession) -> UserFactory:
    counter = 0

    async def factory(role: Role = Role.operator, **fields: object) -> User:
        nonlocal counter
        counter += 1
        name = str(fields.pop("username", f"{role}{counter}"))
        data = UserCreate(
            username=name,
            email=str(fields.pop("email", f"{name}@example.com")),
            password=str(fields.pop("password", PASSWORD)),
        )
        user = await auth.create_user(db, data=data, role=role)
        for key, value in fields.items():
            setattr(user, key, value)
        await db.flush()
        return user

    return factory


Headers = Callable[[User], dict[str, str]]


@pytest.fixture
def auth_headers(settings: Settings) -> Headers:
    """Bearer headers for a user, without a login round-trip."""

    def headers(user: User) -> dict[str, str]:
        tokens = auth.issue_tokens(settings.auth, user=user)
        return {"Authorization": f"Bearer {tokens.access_token}"}

    return headers


@pytest.fixture(scope="session")
async def pg_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Raw asyncpg for tests of code that commits on its own (writer, ingest)."""
    pool = await asyncpg.create_pool(database_url.replace("+asyncpg", ""), min_size=1, max_size=4)
    yield pool
    await pool.close()


MachineFactory = Callable[..., Awaitable[uuid.UUID]]


@pytest.fixture
async def committed_machine(pg_pool: asyncpg.Pool) -> AsyncIterator[MachineFactory]:
    """Machines committed for real (for code with its own transactions), removed afterwards
    with their readings and metrics."""
    created: list[uuid.UUID] = []

    async def factory(name: str | None = None, **columns: object) -> uuid.UUID:
        machine_id = uuid.uuid4()
        names = ["id", "name", *columns]
        values = [machine_id, name or f"m-{machine_id.hex[:8]}", *columns.values()]
        params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        await pg_pool.execute(
            f"INSERT INTO machines ({', '.join(names)}) VALUES ({params})",  # noqa: S608
            *values,
        )
        created.append(machine_id)
        return machine_id

    yield factory
    if created:
        await pg_pool.execute("DELETE FROM readings WHERE machine_id = ANY($1::uuid[])", created)
        await pg_pool.execute("DELETE FROM machines WHERE id = ANY($1::uuid[])", created)


@pytest.fixture(scope="session")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[support.Broker]:
    """A private, tuned Mosquitto for the run (the machine's broker is left alone)."""
    broker = support.Broker(tmp_path_factory.mktemp("mosquitto"))
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest.fixture
async def committed_user(engine: AsyncEngine) -> AsyncIterator[UserFactory]:
    """Users committed for real (for servers with their own sessions), deleted afterwards."""
    created: list[uuid.UUID] = []

    async def factory(role: Role = Role.operator) -> User:
        name = f"{role}-{uuid.uuid4().hex[:10]}"
        data = UserCreate(username=name, email=f"{name}@example.com", password=PASSWORD)
        async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
            user = await auth.create_user(session, data=data, role=role)
        created.append(user.id)
        return user

    yield factory
    if created:
        async with AsyncSession(engine) as session, session.begin():
            await session.execute(delete(User).where(User.id.in_(created)))


@pytest.fixture
async def operator(make_user: UserFactory, auth_headers: Headers) -> dict[str, str]:
    """Bearer headers of a fresh operator."""
    return auth_headers(await make_user(Role.operator))


@pytest.fixture
async def supervisor(make_user: UserFactory, auth_headers: Headers) -> dict[str, str]:
    """Bearer headers of a fresh supervisor."""
    return auth_headers(await make_user(Role.supervisor))


@pytest.fixture
async def manager(make_user: UserFactory, auth_headers: Headers) -> dict[str, str]:
    """Bearer headers of a fresh management user."""
    return auth_headers(await make_user(Role.management))
