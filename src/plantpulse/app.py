"""create_app() and the lifespan that opens and closes everything the process uses."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from redis.asyncio import Redis
from sqlalchemy.exc import SQLAlchemyError
from swagger_ui_bundle import swagger_ui_path

from plantpulse import __version__, timescale
from plantpulse.alerts.evaluator import start_alerts
from plantpulse.alerts.router import alerts_router, rules_router
from plantpulse.auth.principals import PrincipalCache
from plantpulse.auth.revocation import MemoryRevocationStore, RedisRevocationStore, RevocationStore
from plantpulse.auth.router import router as auth_router
from plantpulse.auth.router import users_router
from plantpulse.config import Settings
from plantpulse.db import make_engine, make_sessionmaker
from plantpulse.errors import document_error_envelope, install_error_handlers
from plantpulse.health.jobs import watching as watching_timescale_jobs
from plantpulse.health.router import router as health_router
from plantpulse.ingest.mqtt import MqttIngest
from plantpulse.ingest.router import router as ingest_router
from plantpulse.machines.catalog import MachineCatalog
from plantpulse.machines.router import groups_router
from plantpulse.machines.router import router as machines_router
from plantpulse.middleware import BodySizeLimit
from plantpulse.realtime.hub import start_hub
from plantpulse.realtime.router import router as realtime_router
from plantpulse.sources.poller import start_sources
from plantpulse.sources.router import router as sources_router
from plantpulse.state import Resources
from plantpulse.sysconfig.live import LiveConfig
from plantpulse.sysconfig.router import router as config_router
from plantpulse.sysconfig.sync import start_config_sync
from plantpulse.telemetry import rollups
from plantpulse.telemetry.cache import TelemetryCache
from plantpulse.telemetry.router import router as telemetry_router
from plantpulse.telemetry.writer import BatchWriter
from plantpulse.web import install_dashboard
from plantpulse.workers import claim_slot

log = logging.getLogger("plantpulse")

DESCRIPTION = """
Industrial telemetry: machines publish readings over MQTT or HTTP, PlantPulse stores them in
TimescaleDB and serves them over REST, WebSocket and alerts.

Authenticate with **Authorize** (username and password); every error has the same JSON shape:
`{"error": "...", "detail": "...", "status": 4xx}`.
"""


async def _detect_timescale(resources: Resources) -> None:
    try:
        async with resources.engine.connect() as conn:
            resources.timescale = await timescale.detect(conn)
    except (SQLAlchemyError, OSError) as exc:
        log.warning("database unreachable at start-up (%s); the API serves and /ready says so", exc)
        return
    if not resources.timescale.installed:
        log.warning(
            "TimescaleDB is not installed in this database: readings are a plain table "
            "(correct, but slower at scale and without compression or retention policies)"
        )
    else:
        log.info(
            "TimescaleDB %s (%s edition)", resources.timescale.version, resources.timescale.edition
        )


async def _keep_session(_: asyncpg.Connection) -> None:
    """The pool's reset between borrowers, minus the round trip.

    asyncpg still rolls back an open transaction and drops listeners before calling this; its
    default then sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on every
    release: a second round trip for each latest-values read (6% of the P4 profile). Nothing
    on this pool leaves session state behind: no session advisory locks (retention takes a
    transaction lock), no LISTEN, no SET, cursors only inside transactions."""


def tune_gc() -> None:
    """Keep the garbage collector's full passes off the request path.

    What exists after start-up (FastAPI, SQLAlchemy, pydantic...) lives as long as the process;
    frozen, full passes skip it. Queries allocate thousands of records, which with the default
    thresholds triggered a full pass every few requests: ~50 ms each, the whole p99 of P3
    (docs/queries.md). Fewer, cheaper passes: p99 58 ms -> 10.5 ms on the same query."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def _as_worker(settings: Settings, stack: AsyncExitStack) -> Settings:
    """One of `serve --workers N`: a stable MQTT client id of its own (plantpulse/workers.py)."""
    mqtt = settings.mqtt
    key = f"{mqtt.client_id}@{mqtt.host}:{mqtt.port}"
    slot, lock = claim_slot(key, settings.workers)
    stack.callback(lock.close)
    client_id = f"{mqtt.client_id}-{slot}"
    # Without a shared subscription every worker would receive (and store) every message.
    group = mqtt.shared_group or "plantpulse"
    log.info(
        "worker %d of %d: MQTT client id %s in $share/%s", slot, settings.workers, client_id, group
    )
    return settings.model_copy(
        update={"mqtt": mqtt.model_copy(update={"client_id": client_id, "shared_group": group})}
    )


@asynccontextmanager
async def lifespan_resources(settings: Settings) -> AsyncIterator[Resources]:
    async with AsyncExitStack() as stack:
        if settings.workers > 1:
            settings = _as_worker(settings, stack)
        engine = make_engine(settings.database)
        stack.push_async_callback(engine.dispose)
        # min_size=0: start even when the database is down; /ready reports it.
        pg = await asyncpg.create_pool(
            settings.database.asyncpg_dsn,
            min_size=0,
            max_size=settings.ingest.writer_connections + 4,
            reset=_keep_session,
        )
        stack.push_async_callback(pg.close)
        catalog = MachineCatalog(pg)
        redis: Redis | None = None
        revocations: RevocationStore = MemoryRevocationStore()
        if settings.redis.url:
            redis = Redis.from_url(settings.redis.url)
            stack.push_async_callback(redis.aclose)
            revocations = RedisRevocationStore(redis, settings.redis.key_prefix)
        else:
            log.warning("no Redis configured: token revocations are kept in this process only")
        principals = PrincipalCache(
            settings.redis.url,
            settings.redis.key_prefix,
            seconds=settings.auth.principal_cache_seconds,
        )
        await principals.start()
        stack.push_async_callback(principals.stop)
        resources = Resources(
            settings=settings,
            engine=engine,
            sessionmaker=make_sessionmaker(engine),
            redis=redis,
            revocations=revocations,
            principals=principals,
            timescale=timescale.TimescaleInfo(version=None, license=None),
            pg=pg,
            catalog=catalog,
            writer=BatchWriter(pg, catalog),
            live=LiveConfig.from_settings(settings),
        )
        # Pushed before the components: each stops its own tasks first (in reverse order of
        # start), then whatever is left is stopped here.
        stack.push_async_callback(resources.supervisor.stop)
        await _detect_timescale(resources)
        telemetry_cache = TelemetryCache(redis, settings.redis.key_prefix)
        resources.extras["telemetry_cache"] = telemetry_cache
        resources.writer.listeners.append(telemetry_cache.on_batch)
        # Every edition: rollups/refresher is PlantPulse's own (telemetry/rollups.py says why).
        resources.writer.in_transaction.append(rollups.mark_dirty)
        resources.supervisor.spawn(
            "rollups",
            lambda: rollups.refresher(
                pg, live=resources.live, invalidate=telemetry_cache.invalidate
            ),
        )
        await start_config_sync(resources, stack)
        await start_hub(resources, stack)
        await start_alerts(resources, stack)
        await start_sources(resources, stack)
        await stack.enter_async_context(
            watching_timescale_jobs(
                resources.timescale_jobs, engine, lambda: resources.timescale.installed
            )
        )
        if settings.mqtt.enabled:
            # Entered last, so it stops first: flush and acknowledge while the pool is open.
            await stack.enter_async_context(MqttIngest(resources).running())
        tune_gc()
        yield resources


def _install_docs(app: FastAPI) -> None:
    """Swagger UI served from the installed package, not a CDN: plant networks are often offline."""
    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
    redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="PlantPulse API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
            oauth2_redirect_url=redirect,
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get(redirect, include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        # House style: a route's one-line docstring is its summary in /docs.
        if app.openapi_schema is None:
            schema = generate()
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    description = operation.get("description")
                    if isinstance(description, str) and description.strip():
                        operation["summary"] = description.strip().splitlines()[0].rstrip(".")
            document_error_envelope(schema)
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with lifespan_resources(settings) as resources:
            yield {"resources": resources}

    app = FastAPI(
        title="PlantPulse",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.ingest.max_payload_bytes)
    _install_docs(app)
    app.include_router(health_router)
    app.include_router(auth_router)
    app.include_router(users_router)
    app.include_router(machines_router)
    app.include_router(groups_router)
    app.include_router(ingest_router)
    app.include_router(config_router)
    app.include_router(realtime_router)
    app.include_router(rules_router)
    app.include_router(alerts_router)
    app.include_router(telemetry_router)
    app.include_router(sources_router)
    install_dashboard(app)
    return app
