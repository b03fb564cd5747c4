"""What the ingest path needs to know about machines, cached: which ids exist and each
metric's plausible range. One instance per process, shared by HTTP and MQTT ingest.

Positive answers are cached for `ttl` seconds, unknown ids for a second (a flood of messages
for an unknown id costs one query a second, not one per message). Changes made through this
process's API invalidate at once; other processes see them within `ttl`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Range = tuple[float | None, float | None]


class MachineCatalog:
    def __init__(self, pool: asyncpg.Pool, *, ttl: float = 30.0, negative_ttl: float = 1.0) -> None:
        self._pool = pool
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        # machine id -> (expires at, {metric: range})
        self._known: dict[uuid.UUID, tuple[float, dict[str, Range]]] = {}
        self._unknown: dict[uuid.UUID, float] = {}

    def forget(self, machine_id: uuid.UUID) -> None:
        """Drop what we know about a machine (deleted, or its metric ranges changed)."""
        self._known.pop(machine_id, None)
        self._unknown.pop(machine_id, None)

    async def known(
        self, machine_ids: Iterable[uuid.UUID], conn: PoolConnectionProxy | None = None
    ) -> set[uuid.UUID]:
        """The subset of `machine_ids` that exist (looked up on `conn` if given, e.g. inside
        an ingest batch's transaction: only rows committed before it are cached)."""
        now = time.monotonic()
        wanted = set(machine_ids)
        result: set[uuid.UUID] = set()
        missing: list[uuid.UUID] = []
        for machine_id in wanted:
            cached = self._known.get(machine_id)
            if cached is not None and cached[0] > now:
                result.add(machine_id)
            elif self._unknown.get(machine_id, 0.0) <= now:
                missing.append(machine_id)
        if missing:
            if conn is None:
                async with self._pool.acquire() as own:
                    await self._load(own, missing, now)
            else:
                await self._load(conn, missing, now)
            result.update(m for m in missing if m in self._known)
        return result

    async def _load(
        self, conn: PoolConnectionProxy, machine_ids: list[uuid.UUID], now: float
    ) -> None:
        rows = await conn.fetch(
            """
            SELECT m.id, mm.name, mm.min_value, mm.max_value
            FROM machines m LEFT JOIN machine_metrics mm ON mm.machine_id = m.id
            WHERE m.id = ANY($1::uuid[])
            """,
            machine_ids,
        )
        found: dict[uuid.UUID, dict[str, Range]] = {}
        for row in rows:
            metrics = found.setdefault(row["id"], {})
            if row["name"] is not None:
                metrics[row["name"]] = (row["min_value"], row["max_value"])
        for machine_id in machine_ids:
            if machine_id in found:
                self._known[machine_id] = (now + self._ttl, found[machine_id])
                self._unknown.pop(machine_id, None)
            else:
                self._unknown[machine_id] = now + self._negative_ttl

    def metrics(self, machine_id: uuid.UUID) -> dict[str, Range]:
        """Known metrics of a machine (after `known()` confirmed it); new ones are absent."""
        cached = self._known.get(machine_id)
        return cached[1] if cached is not None else {}

    def add_metrics(self, pairs: Iterable[tuple[uuid.UUID, str]]) -> None:
        """Record metrics the writer just registered, so they are not registered again."""
        for machine_id, name in pairs:
            cached = self._known.get(machine_id)
            if cached is not None:
                cached[1].setdefault(name, (None, None))

    @staticmethod
    async def register(conn: PoolConnectionProxy, machine_ids: Iterable[uuid.UUID]) -> None:
        """Create machines for unknown ids (the auto-register setting; the id is the name), in
        the caller's transaction. Nothing is cached until `registered` after the commit: a
        rolled-back registration must not be taken for a machine."""
        await conn.executemany(
            "INSERT INTO machines (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            [(machine_id, str(machine_id)) for machine_id in sorted(set(machine_ids))],
        )

    def registered(self, machine_ids: Iterable[uuid.UUID]) -> None:
        """Machines `register` created were committed: the next lookup loads them."""
        for machine_id in machine_ids:
            self._unknown.pop(machine_id, None)
