"""Keeps `resources.live` equal to the settings stored in the database, in every process.

At start-up the stored values are applied. A change made through the API is applied here at
once and announced on Redis (`<prefix>config`) so other processes apply it too; on each
(re)subscription the stored values are re-read in case an announcement was missed. Without
Redis, every process re-reads the table every `sysconfig.reload_seconds`. If the database is
down at start-up, the stored values are read (and the retention policy reconciled) as soon as
it answers: every `sysconfig.reload_seconds` until then.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from contextlib import AsyncExitStack
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from plantpulse import db_errors, timescale
from plantpulse.realtime.broadcast import Broadcast
from plantpulse.state import Resources
from plantpulse.supervisor import Supervised
from plantpulse.sysconfig import retention, service
from plantpulse.sysconfig.keys import KEYS
from plantpulse.sysconfig.live import LiveConfig

log = logging.getLogger(__name__)

EXTRA = "config_sync"


class ConfigSync:
    def __init__(self, resources: Resources) -> None:
        self._resources = resources
        # What the environment says, before anything from the database is applied.
        self.defaults: LiveConfig = dataclasses.replace(resources.live)
        self._broadcast: Broadcast | None = None
        self._tasks: list[Supervised] = []
        # The stored values were read at least once (else the defaults are in effect).
        self.loaded = False
        self._retention_failing = False

    @property
    def live(self) -> LiveConfig:
        return self._resources.live

    def apply(self, key: str, value: Any) -> None:
        if key in KEYS:
            setattr(self._resources.live, key, value)

    async def reload(self) -> None:
        await self._load()

    async def _load(self) -> bool:
        try:
            async with self._resources.sessionmaker() as session:
                values = await service.stored_values(session)
        except (SQLAlchemyError, OSError) as exc:
            keeping = "the current values" if self.loaded else "the defaults meanwhile"
            log.warning("could not read system settings (%s); keeping %s", exc, keeping)
            return False
        for key in KEYS:
            self.apply(key, values.get(key, getattr(self.defaults, key)))
        self.loaded = True
        return True

    def changed(self, key: str, value: Any) -> None:
        """A committed change: apply it here and tell the other processes."""
        self.apply(key, value)
        if self._broadcast is not None:
            self._broadcast.publish({"key": key, "value": value})

    def _remote(self, payload: Any) -> None:
        key, value = payload["key"], payload["value"]
        if key in KEYS:
            self.apply(key, KEYS[key].validate(value))

    async def _retention_round(self) -> bool:
        """Apply retention_days (retention.py); False when the database did not answer."""
        resources = self._resources
        if not self.loaded and not await self._load():
            return False
        try:
            if not resources.timescale.installed:
                # Not detected at start-up if the database was down then.
                async with resources.engine.connect() as conn:
                    resources.timescale = await timescale.detect(conn)
            await retention.enforce(
                resources.pg, days=resources.live.retention_days, timescale=resources.timescale
            )
        except Exception as exc:
            # A bug must not end retention for good either: logged, and retried like an outage.
            if not db_errors.is_database_error(exc):
                log.exception("retention round failed; retrying")
            elif not self._retention_failing:
                log.warning("retention not applied (%s: %s); retrying", type(exc).__name__, exc)
            self._retention_failing = True
            return False
        self._retention_failing = False
        return True

    async def _retention_forever(self) -> None:
        settings = self._resources.settings.sysconfig
        retry = min(settings.reload_seconds, settings.retention_check_seconds)
        while True:
            done = await self._retention_round()
            await asyncio.sleep(settings.retention_check_seconds if done else retry)

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self._resources.settings.sysconfig.reload_seconds)
            await self.reload()

    async def start(self) -> None:
        await self.reload()
        resources = self._resources
        settings = resources.settings
        if resources.redis is not None:
            self._broadcast = Broadcast(
                resources.redis,
                f"{settings.redis.key_prefix}config",
                on_message=self._remote,
                on_connect=self.reload,
                supervisor=resources.supervisor,
            )
            await self._broadcast.start()
        else:
            self._tasks.append(resources.supervisor.spawn("config-reload", self._reload_forever))
        self._tasks.append(resources.supervisor.spawn("retention", self._retention_forever))

    async def stop(self) -> None:
        if self._broadcast is not None:
            await self._broadcast.stop()
        for task in self._tasks:
            await task.stop()
        self._tasks = []


async def start_config_sync(resources: Resources, stack: AsyncExitStack) -> ConfigSync:
    sync = ConfigSync(resources)
    await sync.start()
    stack.push_async_callback(sync.stop)
    resources.extras[EXTRA] = sync
    return sync


def config_sync(resources: Resources) -> ConfigSync:
    sync: ConfigSync = resources.extras[EXTRA]
    return sync
