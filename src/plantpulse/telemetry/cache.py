"""Redis cache for bucketed telemetry queries (the dashboard query: many viewers, same panel).

What is cached: the JSON body of a bucketed query, keyed by machine, the query parameters as
sent (relative times like `-24h` stay relative) and whether invalid readings are included.

- A window that ended more than `fresh_seconds` ago no longer changes: cached for
  `historic_ttl`. Anything touching the recent past, or with a relative bound, lives only
  `recent_ttl` seconds, so nobody sees data older than that.
- Each machine has a version counter stored next to the entries; DELETE of readings and
  ingest of backfilled readings (older than `fresh_seconds`) bump it, which retires every
  entry of the machine at once, in every process.
- Redis is an optimisation: when it is down or slow, queries go to the database (no error),
  and Redis is left alone for `retry_seconds` so an outage does not add latency per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from plantpulse.telemetry.writer import CommittedBatch

log = logging.getLogger(__name__)


class TelemetryCache:
    def __init__(
        self,
        redis: Redis | None,
        prefix: str,
        *,
        fresh_seconds: float = 300.0,
        recent_ttl: int = 5,
        historic_ttl: int = 600,
        timeout: float = 0.25,
        retry_seconds: float = 5.0,
    ) -> None:
        self._redis = redis
        self._prefix = f"{prefix}telemetry:"
        self.fresh = timedelta(seconds=fresh_seconds)
        self.recent_ttl = recent_ttl
        self.historic_ttl = historic_ttl
        self._timeout = timeout
        self._retry_seconds = retry_seconds
        self._down_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self._redis is not None and time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            log.warning(
                "telemetry cache unavailable (%s: %s); querying the database",
                type(exc).__name__,
                exc,
            )
        self._down_until = time.monotonic() + self._retry_seconds

    def _version_key(self, machine_id: uuid.UUID) -> str:
        return f"{self._prefix}v:{machine_id}"

    def key(self, machine_id: uuid.UUID, params: dict[str, Any]) -> str:
        digest = hashlib.sha256(
            json.dumps(params, sort_keys=True, default=str).encode()
        ).hexdigest()[:32]
        return f"{self._prefix}q:{machine_id}:{digest}"

    def ttl_for(self, *, end: datetime, relative: bool, now: datetime | None = None) -> int:
        now = now or datetime.now(UTC)
        if relative or end > now - self.fresh:
            return self.recent_ttl
        return self.historic_ttl

    async def get(self, machine_id: uuid.UUID, key: str) -> tuple[bytes | None, int]:
        """(the cached body if current, the machine's version to store a new body under)."""
        if self._redis is None or not self.enabled:
            return None, -1
        try:
            async with asyncio.timeout(self._timeout):
                entry, version = await self._redis.mget([key, self._version_key(machine_id)])
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None, -1
        current = int(version or 0)
        if entry is None:
            return None, current
        stored_version, _, body = (
            entry if isinstance(entry, bytes) else str(entry).encode()
        ).partition(b":")
        if stored_version != str(current).encode():
            return None, current
        return body, current

    async def put(self, key: str, body: bytes, *, version: int, ttl: int) -> None:
        """Store `body` as of `version` (read before the query ran, so a concurrent
        invalidation wins)."""
        if self._redis is None or version < 0 or not self.enabled:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(key, str(version).encode() + b":" + body, ex=ttl)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)

    async def invalidate(self, machine_ids: Iterable[uuid.UUID]) -> None:
        if self._redis is None:
            return
        keys = [self._version_key(m) for m in machine_ids]
        if not keys:
            return
        try:
            async with asyncio.timeout(self._timeout):
                pipe = self._redis.pipeline(transaction=False)
                for key in keys:
                    pipe.incr(key)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            # Entries then expire on their own TTL (at most historic_ttl later).
            self._failed(exc)

    def on_batch(self, batch: CommittedBatch) -> None:
        """Writer listener: readings backfilled into the settled past retire the cache of
        their machines (live readings only touch windows with the short TTL)."""
        if self._redis is None:
            return
        horizon = datetime.now(UTC) - self.fresh
        machines = {row[1] for row in batch.rows if row[0] <= horizon}
        if not machines:
            return
        task = asyncio.get_running_loop().create_task(self.invalidate(machines))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
