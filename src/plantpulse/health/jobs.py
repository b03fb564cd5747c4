"""TimescaleDB's background jobs, watched: compression and retention run inside the database,
on its scheduler, and a failing job says nothing to anyone. `/ready` reports failing jobs, and
each new failed run is logged once (by whichever notices first: `/ready` or the check every
few minutes); a job that recovers is logged too.

Jobs on this database's data (policies, ids from 1000) make PlantPulse `degraded`; failures of
TimescaleDB's own housekeeping (the job-history retention, id 3) are reported and logged but do
not, since no reading depends on them (they fail on the development machines' builds, where
every scheduled run fails: shared/timescaledb-tsl/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from plantpulse import db_errors, timescale
from plantpulse.timescale import JobFailure

log = logging.getLogger(__name__)

CHECK_EVERY_SECONDS = 300.0


class JobWatch:
    def __init__(self) -> None:
        # job id -> start of the failed run already logged
        self._logged: dict[int, datetime | None] = {}

    async def check(self, engine: AsyncEngine) -> list[JobFailure]:
        """The failing jobs now (TimescaleDB must be installed); logs what is new."""
        async with engine.connect() as conn:
            failures = await timescale.failing_jobs(conn)
        self._log(failures)
        return failures

    def _log(self, failures: list[JobFailure]) -> None:
        for failure in failures:
            if failure.job_id in self._logged and self._logged[failure.job_id] == failure.failed_at:
                continue  # this failed run was logged already
            self._logged[failure.job_id] = failure.failed_at
            log.log(
                logging.INFO if failure.housekeeping else logging.WARNING,
                "TimescaleDB job failing: %s (its runs are in timescaledb_information."
                "job_errors and the PostgreSQL log; `CALL run_job(%d)` runs it by hand)",
                failure.describe(),
                failure.job_id,
            )
        failing = {failure.job_id for failure in failures}
        for job_id in sorted(set(self._logged) - failing):
            del self._logged[job_id]
            log.info("TimescaleDB job %d is no longer failing", job_id)

    async def run(self, engine: AsyncEngine, installed: Callable[[], bool]) -> None:
        while True:
            if installed():
                try:
                    await self.check(engine)
                except Exception as exc:
                    if not db_errors.is_database_error(exc):
                        log.exception("checking TimescaleDB's jobs failed; trying again later")
                    else:
                        log.debug("TimescaleDB jobs not checked: %s", exc)
            await asyncio.sleep(CHECK_EVERY_SECONDS)


@asynccontextmanager
async def watching(
    watch: JobWatch, engine: AsyncEngine, installed: Callable[[], bool]
) -> AsyncIterator[None]:
    task = asyncio.create_task(watch.run(engine, installed), name="timescaledb-jobs")
    task.add_done_callback(_report_crash)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("the TimescaleDB job watch stopped", exc_info=error)
