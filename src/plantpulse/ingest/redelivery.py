"""Recognising a QoS 1 redelivery of a message whose effect is already committed.

A reading without a device timestamp takes the time it was received. When the broker delivers
such a message again — we committed it, but the broker never got our PUBACK (a `kill -9`
between the commit and the acknowledgement, a dropped connection) — the copy gets a new time,
and the readings' unique key cannot recognise it: 200,000 messages and one kill gave 215,989
rows (issue 8). MQTT does say which deliveries may be copies: a message the broker sends again
to a resumed session carries the DUP flag and the packet id of its first delivery.

So, in the same transaction as each batch, we record `(client id, packet id, digest of topic
and payload)` for every message whose effect the unique key does not make idempotent: readings
stamped with the receive time, status changes and dead letters. A DUP delivery whose packet id
is recorded *with the same digest* is not stored again, only acknowledged. Messages whose
readings all carry device timestamps are not recorded at all (the unique key already drops
their copies), so the common case costs nothing but a check per message.

Packet ids name a message only until the broker has our PUBACK; then it may reuse the id for
another message. Hence:

- an entry only matches a copy with the same digest (a different message under a reused id is
  stored);
- any delivery under an id whose entry has another digest proves the entry stale (the broker
  never has two unacknowledged messages under one id): a recorded message replaces the entry,
  any other deletes it, in its batch's transaction;
- entries older than the session lifetime are pruned at start-up (the broker has forgotten the
  session, so nothing can be redelivered); per client there are at most 65,535 entries.

What this cannot tell apart, and what that costs, is in docs/ingest.md ("Redeliveries").
Entries are per client id, so processes sharing a subscription (each with its own client id)
never see each other's entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import asyncpg
from asyncpg.pool import PoolConnectionProxy

DIGEST_BYTES = 16
# Entries are kept at least this long, whatever the session expiry says: with MQTT 3.1.1 the
# broker decides (Mosquitto's persistent_client_expiration, 7 days in scripts/mosquitto.conf).
MIN_KEEP_SECONDS = 7 * 24 * 3600

_PRUNE = "DELETE FROM mqtt_deliveries WHERE committed_at < now() - make_interval(secs => $1)"
_LOAD = "SELECT packet_id, digest FROM mqtt_deliveries WHERE client_id = $1"
_UPSERT = """
INSERT INTO mqtt_deliveries (client_id, packet_id, digest)
SELECT $1, d.packet_id, d.digest FROM unnest($2::int[], $3::bytea[]) AS d(packet_id, digest)
ON CONFLICT (client_id, packet_id) DO UPDATE SET digest = excluded.digest, committed_at = now()
"""
_DELETE = "DELETE FROM mqtt_deliveries WHERE client_id = $1 AND packet_id = ANY($2::int[])"


def digest(topic: bytes, payload: bytes) -> bytes:
    """What identifies a message's content (MQTT topics cannot contain NUL)."""
    return hashlib.blake2b(topic + b"\0" + payload, digest_size=DIGEST_BYTES).digest()


class DeliveryLog:
    """The recorded packet ids of one client id: in the database, and mirrored in memory
    (loaded once per process, then kept by this process, the only writer for its client id)
    so that the check runs in the message callback without a database round trip."""

    def __init__(self, client_id: str, *, keep_seconds: float) -> None:
        self.client_id = client_id
        self.keep_seconds = max(keep_seconds, MIN_KEEP_SECONDS)
        # packet id -> digest, for messages committed or on their way to being committed.
        self._digests: dict[int, bytes] = {}
        self.loaded = False

    def __len__(self) -> int:
        return len(self._digests)

    async def load(self, pool: asyncpg.Pool) -> None:
        """Prune entries nothing can redeliver any more, then read this client's."""
        async with pool.acquire() as conn:
            await conn.execute(_PRUNE, float(self.keep_seconds))
            rows = await conn.fetch(_LOAD, self.client_id)
        # Received meanwhile (nothing is, before the first connection) wins over the table.
        self._digests = {row["packet_id"]: bytes(row["digest"]) for row in rows} | self._digests
        self.loaded = True

    def is_copy(self, packet_id: int, content: bytes) -> bool:
        """Whether a DUP delivery is a copy of a message this client already has."""
        return self._digests.get(packet_id) == content

    def note(self, packet_id: int, content: bytes) -> None:
        """A message to be recorded was received (it is committed with its batch, or the
        process ends and the broker delivers it again, to a table without it)."""
        self._digests[packet_id] = content

    def forget(self, packet_id: int) -> bool:
        """A message not to be recorded was received: an entry under its id, if any, is stale.
        True if there was one (its batch must delete it)."""
        return self._digests.pop(packet_id, None) is not None


async def persist(
    conn: asyncpg.Connection | PoolConnectionProxy,
    client_id: str,
    changes: Mapping[int, bytes | None],
) -> None:
    """Write a batch's entries (packet id -> digest) and deletions (-> None), inside the
    batch's transaction."""
    recorded = [(packet_id, content) for packet_id, content in changes.items() if content]
    if recorded:
        await conn.execute(_UPSERT, client_id, [r[0] for r in recorded], [r[1] for r in recorded])
    stale = [packet_id for packet_id, content in changes.items() if content is None]
    if stale:
        await conn.execute(_DELETE, client_id, stale)
