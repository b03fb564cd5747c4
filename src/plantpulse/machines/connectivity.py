"""Machine connectivity (online/offline) from status messages and Last-Will notices.

`ConnectivityFeed.listeners` hear about changes after they are committed (realtime publishes
them as `machine_status` events); like the telemetry writer's listeners they must not block.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from plantpulse.machines.models import Connectivity, MachineStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConnectivityChange:
    machine_id: uuid.UUID
    connectivity: Connectivity
    at: datetime
    # The machine as committed, so listeners can describe it without a query of their own.
    status: MachineStatus
    last_seen_at: datetime | None


ConnectivityListener = Callable[[ConnectivityChange], None]


@dataclass
class ConnectivityFeed:
    listeners: list[ConnectivityListener] = field(default_factory=list)

    def publish(self, changes: Sequence[ConnectivityChange]) -> None:
        for change in changes:
            for listener in self.listeners:
                try:
                    listener(change)
                except Exception:  # a broken listener must not undo a committed change
                    log.exception("connectivity listener %r failed", listener)


async def record(
    conn: asyncpg.Connection | PoolConnectionProxy,
    changes: Sequence[tuple[uuid.UUID, Connectivity]],
) -> list[ConnectivityChange]:
    """Apply status changes in order (the last one per machine wins); `online` also marks the
    machine as seen now. Returns the applied changes; unknown machines are left out."""
    latest: dict[uuid.UUID, Connectivity] = {}
    for machine_id, connectivity in changes:
        latest.pop(machine_id, None)
        latest[machine_id] = connectivity
    if not latest:
        return []
    rows = await conn.fetch(
        """
        UPDATE machines m
        SET connectivity = c.connectivity::machine_connectivity,
            last_seen_at = CASE WHEN c.connectivity = 'online' THEN now() ELSE m.last_seen_at END,
            updated_at = now()
        FROM unnest($1::uuid[], $2::text[]) AS c(id, connectivity)
        WHERE m.id = c.id
        RETURNING m.id, c.connectivity, now() AS at, m.status::text AS status, m.last_seen_at
        """,
        list(latest),
        [str(c) for c in latest.values()],
    )
    return [
        ConnectivityChange(
            r["id"],
            Connectivity(r["connectivity"]),
            r["at"],
            MachineStatus(r["status"]),
            r["last_seen_at"],
        )
        for r in rows
    ]
