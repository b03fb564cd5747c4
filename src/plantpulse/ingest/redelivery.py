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
their copies), so the common case costs a few operations per message and no SQL.

Packet ids name a message only until the broker has our PUBACK; then it may reuse the id. A
record that outlives that is *stale*, and a stale record with the same digest as a later
message under the same id would make us drop that message's redelivery: a loss (think of a
device that sends `{"running": 1}` without a timestamp, over and over). So records are retired
as soon as the protocol proves the broker has our PUBACK:

- Receive Maximum (MQTT 5, section 3.3.4): the broker never has more than R QoS 1 messages
  out to us unacknowledged, and we acknowledge a connection's messages in order (pipeline.py),
  so the broker's unacknowledged ones are always the latest it sent. Once we receive the
  message R+1 places after ours on the same connection, ours was acknowledged. (MQTT 3.1.1 has
  no Receive Maximum; there the bound is the 65,535 packet ids.)
- Resend first: on a resumed session the broker resends every unacknowledged message before
  new ones (MQTT 5 section 4.4; Mosquitto sends its in-flight list first). Records from before
  this connection that were not resent by its first non-DUP message were acknowledged. (A
  broker that interleaved would only make us store a late copy again: a duplicate, never a
  loss.)
- Reuse: any delivery under a recorded id with another digest proves that record stale (the
  broker never has two unacknowledged messages under one id): replaced or deleted.
- Age: records older than the session lifetime (at least 7 days) are pruned at start-up.

A retirement is written with the batch of the message that proves it, and only deletes the
record it retired (id and digest). Per client the table therefore holds about R records, and
the memory mirror as many. What is left — a broker reusing an id within R messages, with
identical content, and a crash in that window — is in docs/ingest.md ("Redeliveries").
Records are per client id, so processes sharing a subscription (each with its own client id)
never see each other's.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

import asyncpg
from asyncpg.pool import PoolConnectionProxy

DIGEST_BYTES = 16
# Records are kept at least this long, whatever the session expiry says: with MQTT 3.1.1 the
# broker decides (Mosquitto's persistent_client_expiration, 7 days in scripts/mosquitto.conf).
MIN_KEEP_SECONDS = 7 * 24 * 3600
# MQTT packet ids are 16-bit and never 0: no more messages than this can be unacknowledged.
PACKET_IDS = 65_535

_PRUNE = "DELETE FROM mqtt_deliveries WHERE committed_at < now() - make_interval(secs => $1)"
_LOAD = "SELECT packet_id, digest FROM mqtt_deliveries WHERE client_id = $1"
_UPSERT = """
INSERT INTO mqtt_deliveries (client_id, packet_id, digest)
SELECT $1, d.packet_id, d.digest FROM unnest($2::int[], $3::bytea[]) AS d(packet_id, digest)
ON CONFLICT (client_id, packet_id) DO UPDATE SET digest = excluded.digest, committed_at = now()
"""
_DELETE = "DELETE FROM mqtt_deliveries WHERE client_id = $1 AND packet_id = ANY($2::int[])"
_RETIRE = """
DELETE FROM mqtt_deliveries t USING unnest($2::int[], $3::bytea[]) AS d(packet_id, digest)
WHERE t.client_id = $1 AND t.packet_id = d.packet_id AND t.digest = d.digest
"""


def digest(topic: bytes, payload: bytes) -> bytes:
    """What identifies a message's content (MQTT topics cannot contain NUL)."""
    return hashlib.blake2b(topic + b"\0" + payload, digest_size=DIGEST_BYTES).digest()


class Entry:
    """A record: the message received under `packet_id` at `position` (its QoS 1 count) on
    connection `generation` (-1: loaded from the table)."""

    __slots__ = ("digest", "generation", "packet_id", "position")

    def __init__(self, packet_id: int, content: bytes, generation: int, position: int) -> None:
        self.packet_id = packet_id
        self.digest = content
        self.generation = generation
        self.position = position


@dataclass(slots=True)
class Changes:
    """What a batch's transaction does to the table, the last word per packet id."""

    upserts: dict[int, bytes] = field(default_factory=dict)
    deletes: set[int] = field(default_factory=set)
    # Delete only if the record is still this one (a later message may have replaced it).
    retires: dict[int, bytes] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes or self.retires)

    def record(self, packet_id: int, content: bytes) -> None:
        self.deletes.discard(packet_id)
        self.retires.pop(packet_id, None)
        self.upserts[packet_id] = content

    def delete(self, packet_id: int) -> None:
        self.upserts.pop(packet_id, None)
        self.retires.pop(packet_id, None)
        self.deletes.add(packet_id)

    def retire(self, entry: Entry) -> None:
        if self.upserts.get(entry.packet_id) == entry.digest:
            # Recorded earlier in this very batch: not written yet, so nothing to compare.
            self.delete(entry.packet_id)
        elif entry.packet_id not in self.upserts:
            self.deletes.discard(entry.packet_id)
            self.retires[entry.packet_id] = entry.digest


class DeliveryLog:
    """The records of one client id: in the database, and mirrored in memory (loaded once per
    process before the first connection, then kept by this process, the only writer for its
    client id), so the check runs in the message callback without a database round trip."""

    def __init__(self, client_id: str, *, keep_seconds: float, window: int) -> None:
        self.client_id = client_id
        self.keep_seconds = max(keep_seconds, MIN_KEEP_SECONDS)
        # At most this many QoS 1 messages unacknowledged at the broker (Receive Maximum).
        self.window = window
        self._entries: dict[int, Entry] = {}
        # Records by age, for retirement; may hold entries replaced since (skipped).
        self._unconfirmed: deque[Entry] = deque()
        self._generation = -1
        self._position = 0
        self._resending = False
        self.loaded = False

    def __len__(self) -> int:
        return len(self._entries)

    async def load(self, pool: asyncpg.Pool) -> None:
        """Prune records nothing can redeliver any more, then read this client's."""
        async with pool.acquire() as conn:
            await conn.execute(_PRUNE, float(self.keep_seconds))
            rows = await conn.fetch(_LOAD, self.client_id)
        for row in rows:
            if row["packet_id"] not in self._entries:
                entry = Entry(row["packet_id"], bytes(row["digest"]), -1, 0)
                self._entries[entry.packet_id] = entry
                self._unconfirmed.append(entry)
        self.loaded = True

    def arrived(self, packet_id: int, dup: bool, generation: int) -> list[Entry] | None:
        """A QoS 1 delivery on connection `generation`: returns the records it proves
        acknowledged (to delete with its batch), if any. Call before anything else below."""
        if generation != self._generation:
            self._generation = generation
            self._position = 0
            self._resending = True
        self._position += 1
        pending = self._unconfirmed
        if not pending:
            self._resending = self._resending and dup
            return None
        retired: list[Entry] = []
        if self._resending and not dup:
            self._resending = False
            while pending and pending[0].generation != generation:
                self._retire(pending.popleft(), retired)
        oldest = self._position - self.window
        while pending and pending[0].generation == generation and pending[0].position < oldest:
            self._retire(pending.popleft(), retired)
        return retired or None

    def _retire(self, entry: Entry, retired: list[Entry]) -> None:
        if self._entries.get(entry.packet_id) is entry:
            del self._entries[entry.packet_id]
            retired.append(entry)

    def is_copy(self, packet_id: int, content: bytes) -> bool:
        """Whether a DUP delivery is a copy of a message this client already has. A copy is
        acknowledged on this connection, so its record starts over from here."""
        entry = self._entries.get(packet_id)
        if entry is None or entry.digest != content:
            return False
        self._add(packet_id, entry.digest)
        return True

    def note(self, packet_id: int, content: bytes) -> None:
        """A message to record was received (the record is written with its batch; if the
        process ends first, the broker delivers it again to a table without it)."""
        self._add(packet_id, content)

    def forget(self, packet_id: int) -> bool:
        """A message not to record was received: a record under its id, if any, is stale.
        True if there was one (its batch deletes it)."""
        return self._entries.pop(packet_id, None) is not None

    def _add(self, packet_id: int, content: bytes) -> None:
        entry = Entry(packet_id, content, self._generation, self._position)
        self._entries[packet_id] = entry
        self._unconfirmed.append(entry)


async def persist(
    conn: asyncpg.Connection | PoolConnectionProxy, client_id: str, changes: Changes
) -> None:
    """Write a batch's changes, inside the batch's transaction."""
    if changes.retires:
        await conn.execute(
            _RETIRE, client_id, list(changes.retires), list(changes.retires.values())
        )
    if changes.deletes:
        await conn.execute(_DELETE, client_id, list(changes.deletes))
    if changes.upserts:
        await conn.execute(
            _UPSERT, client_id, list(changes.upserts), list(changes.upserts.values())
        )
