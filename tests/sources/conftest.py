from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import orjson
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse.app import create_app
from plantpulse.config import Settings, SourcesSettings
from plantpulse.db import get_db_session
from plantpulse.sources.poller import SourcePoller, poller_of
from plantpulse.state import Resources
from tests.live import eventually
from tests.sources.fake_server import FakeSource


@pytest.fixture(scope="session")
def fake_source() -> Iterator[FakeSource]:
    server = FakeSource()
    server.start()
    yield server
    server.stop()


def sources_settings(settings: Settings, **sources: Any) -> Settings:
    """The test settings (same database and JWT secret) with sources reaching the fake server:
    it listens on 127.0.0.1, allowed here through the setting (the SSRF tests use the default,
    which refuses it)."""
    values: dict[str, Any] = {"allow_private_networks": True, "tick_seconds": 0.05}
    values.update(sources)
    return settings.model_copy(update={"sources": SourcesSettings(**values)})


@pytest.fixture(scope="session")
async def sources_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, LifespanManager]]:
    app = create_app(sources_settings(settings))
    async with LifespanManager(app) as manager:
        yield app, manager


@pytest.fixture
def poller(sources_app: tuple[FastAPI, LifespanManager]) -> SourcePoller:
    resources: Resources = sources_app[1]._state["resources"]
    return poller_of(resources)


@pytest.fixture
async def sclient(
    sources_app: tuple[FastAPI, LifespanManager], db: AsyncSession
) -> AsyncIterator[AsyncClient]:
    """A client of an app that may reach the fake server; requests share the test's session."""
    app, manager = sources_app

    async def session_override() -> AsyncIterator[AsyncSession]:
        async with db.begin_nested():
            yield db

    app.dependency_overrides[get_db_session] = session_override
    transport = ASGITransport(app=manager.app, raise_app_exceptions=False)
    try:
        async with AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        app.dependency_overrides.clear()


SourceFactory = Callable[..., Awaitable[uuid.UUID]]


@pytest.fixture
async def committed_source(pg_pool: asyncpg.Pool) -> AsyncIterator[SourceFactory]:
    """Sources committed for real (the schedulers of every lifespan see them), removed after."""
    created: list[uuid.UUID] = []

    async def factory(
        *, machine_id: uuid.UUID, url: str, interval_seconds: float | None = 1.0, **columns: Any
    ) -> uuid.UUID:
        source_id = uuid.uuid4()
        values: dict[str, Any] = {
            "id": source_id,
            "name": f"src-{source_id.hex[:8]}",
            "url": url,
            "machine_id": machine_id,
            "metric": "level",
            "decoder": orjson.dumps({"kind": "bytes-float32"}).decode(),
            "interval_seconds": interval_seconds,
            "timeout_seconds": 5.0,
        }
        values.update(columns)
        names = ", ".join(values)
        params = ", ".join(
            f"${i}::jsonb" if name in ("decoder", "bad_tags") else f"${i}"
            for i, name in enumerate(values, start=1)
        )
        await pg_pool.execute(
            f"INSERT INTO sources ({names}, next_poll_at) VALUES ({params}, now())",  # noqa: S608
            *values.values(),
        )
        created.append(source_id)
        return source_id

    yield factory
    if created:
        # Let polls in flight finish first: a run or readings must not outlive their source.
        await pg_pool.execute("UPDATE sources SET enabled = false WHERE id = ANY($1)", created)
        await eventually(
            lambda: pg_pool.fetchval(
                "SELECT count(*) = 0 FROM sources WHERE id = ANY($1) AND lease_until > now()",
                created,
            ),
            seconds=15,
        )
        await pg_pool.execute("DELETE FROM sources WHERE id = ANY($1::uuid[])", created)
