"""What the lifespan opens and every request may use: typed, one instance per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from fastapi import Depends
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from plantpulse.auth.principals import PrincipalCache
from plantpulse.auth.revocation import RevocationStore
from plantpulse.config import Settings
from plantpulse.health.jobs import JobWatch
from plantpulse.machines.catalog import MachineCatalog
from plantpulse.machines.connectivity import ConnectivityFeed
from plantpulse.supervisor import Supervisor
from plantpulse.sysconfig.live import LiveConfig
from plantpulse.telemetry.writer import BatchWriter
from plantpulse.timescale import TimescaleInfo


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis | None
    revocations: RevocationStore
    # Verified access tokens for a few seconds, invalidated across processes (auth/principals.py).
    principals: PrincipalCache
    timescale: TimescaleInfo
    # Raw asyncpg for the hot paths (ingest COPY, bulk queries, export); SQLAlchemy elsewhere.
    pg: asyncpg.Pool
    catalog: MachineCatalog
    writer: BatchWriter
    live: LiveConfig
    # Capabilities started by the lifespan register their handles here (ingest pipeline, hub...).
    extras: dict[str, Any] = field(default_factory=dict)
    # Machine online/offline changes (MQTT status topics); realtime listens here.
    connectivity: ConnectivityFeed = field(default_factory=ConnectivityFeed)
    # Every long-running background task: restarted after a crash, listed in /ready.
    supervisor: Supervisor = field(default_factory=Supervisor)
    # Failing TimescaleDB jobs, for /ready and the log.
    timescale_jobs: JobWatch = field(default_factory=JobWatch)


def resources_of(connection: HTTPConnection) -> Resources:
    resources: Resources = connection.state.resources
    return resources


async def get_resources(connection: HTTPConnection) -> Resources:
    # async: FastAPI runs a plain `def` dependency in a worker thread, a thread hand-off on
    # every request (seen in the P4 profile, docs/benchmarks.md).
    return resources_of(connection)


AppResources = Annotated[Resources, Depends(get_resources)]
