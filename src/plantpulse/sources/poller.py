"""The scheduler that runs in every process's lifespan, and the HTTP client all polls share.

Each tick claims a few due sources (service.claim_due: `FOR UPDATE SKIP LOCKED` plus a lease,
so one process polls a given source at a time), polls them concurrently outside any
transaction, and records each run. A failing source is pushed back with exponential backoff
and jitter (service.backoff_seconds); it never holds up the others, and polls share nothing
with ingest except the writer, like any HTTP client would.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import httpx

from plantpulse import db_errors
from plantpulse.sources import service
from plantpulse.sources.crypto import HeaderCipher
from plantpulse.sources.guard import GuardedBackend
from plantpulse.sources.http_bridge import guarded_transport
from plantpulse.sources.models import Source
from plantpulse.state import Resources
from plantpulse.supervisor import Supervised, describe
from plantpulse.telemetry import service as telemetry
from plantpulse.telemetry.payloads import Parsed

log = logging.getLogger(__name__)

EXTRA = "sources"
# The `source` label of readings pulled from sources, for writer listeners.
INGEST_SOURCE = "http-source"


class SourcePoller:
    def __init__(self, resources: Resources) -> None:
        self._resources = resources
        settings = resources.settings.sources
        self.settings = settings
        self.cipher = HeaderCipher.from_settings(resources.settings)
        # One client for every poll: connections to a source are reused between polls.
        self.client = httpx.AsyncClient(
            transport=guarded_transport(
                GuardedBackend(allow_private=settings.allow_private_networks),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            ),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": "PlantPulse source poller", "Accept": "application/json"},
        )
        self._task: Supervised | None = None

    async def store(self, parsed: Parsed) -> telemetry.IngestOutcome:
        """Pulled readings take the same write path as HTTP and MQTT ingest."""
        resources = self._resources
        return await telemetry.ingest(
            parsed,
            catalog=resources.catalog,
            writer=resources.writer,
            auto_register=resources.live.auto_register_machines,
            max_readings=resources.settings.ingest.max_readings_per_request,
            source=INGEST_SOURCE,
        )

    async def pull(self, source: Source) -> service.PullResult:
        return await service.pull(
            source,
            client=self.client,
            cipher=self.cipher,
            settings=self.settings,
            store=self.store,
            max_readings=self._resources.settings.ingest.max_readings_per_request,
            future_skew_seconds=self._resources.live.future_skew_seconds,
        )

    async def poll_due(self) -> int:
        """One scheduler round: claim due sources, poll them, record the runs."""
        async with self._resources.sessionmaker() as session, session.begin():
            claimed = await service.claim_due(session, limit=self.settings.max_concurrent_polls)
        # Every poll runs to its end even if another one fails; then the first error goes on
        # to the supervisor.
        outcomes = await asyncio.gather(
            *(self._poll_claimed(source) for source in claimed), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(claimed)

    async def _poll_claimed(self, source: Source) -> None:
        try:
            result = await self.pull(source)
        except Exception as exc:
            # A bug for this source's data must not stop the others: record it, keep going.
            log.exception("source %s (%s): poll failed unexpectedly", source.name, source.id)
            result = service.PullResult(started_at=datetime.now(UTC), error=describe(exc))
        try:
            async with self._resources.sessionmaker() as session, session.begin():
                await service.record_run(
                    session,
                    source_id=source.id,
                    trigger="schedule",
                    result=result,
                    settings=self.settings,
                )
        except Exception as exc:
            if not db_errors.is_transient(exc):
                raise
            # The lease expires and the source is polled again; its points are stored once.
            log.warning("source %s: run not recorded, database unavailable (%s)", source.id, exc)

    async def run_forever(self) -> None:
        while True:
            try:
                claimed = await self.poll_due()
            except Exception as exc:
                if not db_errors.is_transient(exc):
                    raise
                log.warning("source scheduler: database unavailable (%s); retrying", exc)
                claimed = 0
            if claimed < self.settings.max_concurrent_polls:
                await asyncio.sleep(self.settings.tick_seconds)

    async def start(self) -> None:
        if self.settings.poller_enabled:
            self._task = self._resources.supervisor.spawn("source-poller", self.run_forever)

    async def stop(self) -> None:
        if self._task is not None:
            await self._task.stop()
            self._task = None
        await self.client.aclose()


async def start_sources(resources: Resources, stack: AsyncExitStack) -> SourcePoller:
    poller = SourcePoller(resources)
    await poller.start()
    stack.push_async_callback(poller.stop)
    resources.extras[EXTRA] = poller
    return poller


def poller_of(resources: Resources) -> SourcePoller:
    poller: SourcePoller = resources.extras[EXTRA]
    return poller
