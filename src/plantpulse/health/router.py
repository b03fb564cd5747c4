from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from plantpulse import __version__, timescale
from plantpulse.state import AppResources

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 2.0


class Root(BaseModel):
    name: str
    version: str
    docs: str
    openapi: str


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Component(BaseModel):
    # degraded: working but not making progress (MQTT: messages waiting, nothing committed);
    # error: one of its tasks crashed and is being restarted.
    status: Literal["up", "down", "degraded", "error", "disabled"]
    detail: str | None = None
    info: dict[str, Any] | None = None


class TaskReport(BaseModel):
    """A long-running background task (plantpulse.supervisor)."""

    # `error`: it crashed and is waiting to restart, or has not run for a minute since.
    status: Literal["up", "error"]
    state: Literal["running", "restarting", "stopped"]
    restarts: int
    last_error: str | None = None
    last_error_at: datetime | None = None


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "unavailable"]
    database: Component
    timescaledb: Component
    timescaledb_jobs: Component
    redis: Component
    mqtt: Component
    revocation_store: Literal["redis", "memory"]
    tasks: dict[str, TaskReport]


@router.get("/")
async def root(request: Request) -> Root:
    """Name, version and where the API documentation is."""
    return Root(
        name="PlantPulse", version=__version__, docs="/docs", openapi=request.app.openapi_url
    )


@router.get("/health")
async def health() -> Liveness:
    """Liveness: the process answers. Checks no dependency."""
    return Liveness()


async def _database(resources: AppResources) -> Component:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS), resources.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "down"; the reason goes in the body
        return Component(status="down", detail=f"{type(exc).__name__}: {exc}"[:300])
    return Component(status="up")


async def _redis(resources: AppResources) -> Component:
    if resources.redis is None:
        return Component(
            status="disabled",
            detail="no Redis configured: token revocations and live events stay in this process",
        )
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await resources.redis.ping()
    except Exception as exc:
        return Component(status="down", detail=f"{type(exc).__name__}: {exc}"[:300])
    return Component(status="up")


async def _timescale_jobs(resources: AppResources) -> Component:
    """Failing TimescaleDB jobs: `down` (so `degraded`) when one works on our data."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            failures = await resources.timescale_jobs.check(resources.engine)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        return Component(status="down", detail=f"job_stats unreadable: {reason}"[:300])
    info: dict[str, Any] = {
        "failing": [
            {
                "job_id": f.job_id,
                "name": f.name,
                "hypertable": f.hypertable,
                "failures": f.failures,
                "runs": f.runs,
                "last_failed_at": f.failed_at.isoformat() if f.failed_at else None,
                "last_error": f.error,
            }
            for f in failures
        ]
    }
    ours = [f for f in failures if not f.housekeeping]
    if ours:
        return Component(status="down", detail="; ".join(f.describe() for f in ours), info=info)
    detail = None
    if failures:
        detail = "only TimescaleDB's own housekeeping fails: " + "; ".join(
            f.describe() for f in failures
        )
    return Component(status="up", detail=detail, info=info)


def _mqtt(resources: AppResources) -> Component:
    status = resources.extras.get("mqtt_status")
    if status is None:
        return Component(status="disabled", detail="MQTT ingest is not enabled")
    state, detail, info = status()
    return Component(status=state, detail=detail, info=info)


def _tasks(resources: AppResources) -> dict[str, TaskReport]:
    return {
        task.name: TaskReport(
            status="up" if task.healthy else "error",
            state=task.state,
            restarts=task.restarts,
            last_error=task.last_error,
            last_error_at=task.last_error_at,
        )
        for task in resources.supervisor.statuses()
    }


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "The database is down"}},
)
async def ready(resources: AppResources) -> JSONResponse:
    """Readiness of database, TimescaleDB and its jobs, Redis, MQTT ingest and background tasks.

    503 `unavailable` when the database is down; `degraded` (200) when Redis is down, MQTT
    ingest is not `up`, a TimescaleDB job on PlantPulse's data (compression, retention) keeps
    failing, or a background task crashed (it is restarted with backoff; `tasks` shows its
    last error). MQTT is `down` without a broker connection, `degraded` when messages have
    waited and nothing was committed for `PLANTPULSE_INGEST__STALL_SECONDS` (the reason is in
    `detail`), `error` when one of its tasks crashed."""
    database, redis = await asyncio.gather(_database(resources), _redis(resources))
    if database.status == "up" and not resources.timescale.installed:
        # The database may have been down at start-up, or the extension added since.
        with contextlib.suppress(Exception):
            async with resources.engine.connect() as conn:
                resources.timescale = await timescale.detect(conn)
    ts = resources.timescale
    timescale_component = Component(
        status="up" if ts.installed else "disabled",
        detail=None if ts.installed else "plain PostgreSQL: readings are a regular table",
        info={"version": ts.version, "license": ts.license, "edition": ts.edition},
    )
    if database.status == "down":
        jobs = Component(status="down", detail="unknown while the database is down")
    elif ts.installed:
        jobs = await _timescale_jobs(resources)
    else:
        jobs = Component(status="disabled", detail="no TimescaleDB, no background jobs")
    mqtt = _mqtt(resources)
    tasks = _tasks(resources)
    if database.status == "down":
        overall: Literal["ready", "degraded", "unavailable"] = "unavailable"
    elif (
        {"down", "degraded", "error"} & {redis.status, mqtt.status}
        or jobs.status == "down"
        or any(t.status == "error" for t in tasks.values())
    ):
        overall = "degraded"
    else:
        overall = "ready"
    body = Readiness(
        status=overall,
        database=database,
        timescaledb=timescale_component,
        timescaledb_jobs=jobs,
        redis=redis,
        mqtt=mqtt,
        revocation_store="redis" if resources.revocations.kind == "redis" else "memory",
        tasks=tasks,
    )
    return JSONResponse(
        body.model_dump(mode="json"), status_code=503 if overall == "unavailable" else 200
    )
