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
as soon as we know the broker has our PUBACK:

- Round trip: after each burst of PUBACKs the connection loop sends a PINGREQ; the broker
  handles a connection's packets in order, so its PINGRESP proves every PUBACK before it
  processed (paho_bridge.Link.round_trip). The records of those messages are then deleted.
  (The Receive Maximum cannot serve as proof: Mosquitto 2.0.11 sends a whole new window of
  messages after each PUBACK, docs/ingest.md.)
- Resend first: on a resumed session the broker resends every unacknowledged message before
  new ones (MQTT 5 section 4.4; Mosquitto sends its in-flight list first, which we checked).
  Records from before this connection that were not resent by its first non-DUP delivery
  were acknowledged. (A broker that interleaved would only make us store a late copy again:
  a duplicate, never a loss.)
- Reuse: any delivery under a recorded id with another digest proves that record stale (the
  broker never has two unacknowledged messages under one id): replaced or deleted.
- Age: records older than the session lifetime (at least 7 days) are pruned at start-up.

A retirement deletes only the record it retired (id and digest). Per client the table holds
the records of the last batches or so. What is left — a broker reusing an id right after our
PUBACK, with identical content, and a crash before the retirement is committed — is in
docs/ingest.md ("Redeliveries"). Records are per client id, so processes sharing a
subscription (each with its own client id) never see each other's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import asyncpg
from asyncpg.pool import PoolConnectionProxy

DIGEST_BYTES = 16
# Records are kept at least this long, whatever the session expiry says: with MQTT 3.1.1 the
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
_RETIRE = """
DELETE FROM mqtt_deliveries t USING unnest($2::int[], $3::bytea[]) AS d(packet_id, digest)
WHERE t.client_id = $1 AND t.packet_id = d.packet_id AND t.digest = d.digest
"""


def digest(topic: bytes, payload: bytes) -> bytes:
    """What identifies a message's content (MQTT topics cannot contain NUL)."""
    return hashlib.blake2b(topic + b"\0" + payload, digest_size=DIGEST_BYTES).digest()


class Entry:
    """A record: the message received under `packet_id` on connection `generation` (-1:
    loaded from the table)."""

    __slots__ = ("digest", "generation", "packet_id")

    def __init__(self, packet_id: int, content: bytes, generation: int) -> None:
        self.packet_id = packet_id
        self.digest = content
        self.generation = generation


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

    def __init__(self, client_id: str, *, keep_seconds: float) -> None:
        self.client_id = client_id
        self.keep_seconds = max(keep_seconds, MIN_KEEP_SECONDS)
        self._entries: dict[int, Entry] = {}
        self._generation = -1
        # Until the first non-DUP delivery of a connection: the broker is resending.
        self._resending = False
        # Acknowledged on this connection, not yet confirmed by a round trip.
        self._acknowledged: list[Entry] = []
        # Known stale, removed from memory, still to delete from the table.
        self._retired: list[Entry] = []
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
                self._entries[row["packet_id"]] = Entry(row["packet_id"], bytes(row["digest"]), -1)
        self.loaded = True

    def arrived(self, dup: bool, generation: int) -> None:
        """A QoS 1 delivery on connection `generation`; call before the methods below."""
        if generation != self._generation:
            self._generation = generation
            self._resending = True
            self._acknowledged.clear()  # never confirmed: the resend rule takes over
        if self._resending and not dup:
            self._resending = False
            stale = [e for e in self._entries.values() if e.generation != generation]
            for entry in stale:
                del self._entries[entry.packet_id]
            self._retired += stale

    def is_copy(self, packet_id: int, content: bytes) -> Entry | None:
        """The record a DUP delivery is a copy of, renewed for this connection (the copy is
        acknowledged here), or None."""
        entry = self._entries.get(packet_id)
        if entry is None or entry.digest != content:
            return None
        return self.note(packet_id, entry.digest)

    def note(self, packet_id: int, content: bytes) -> Entry:
        """A message to record was received (the record is written with its batch; if the
        process ends first, the broker delivers it again to a table without it)."""
        entry = Entry(packet_id, content, self._generation)
        self._entries[packet_id] = entry
        return entry

    def forget(self, packet_id: int) -> bool:
        """A message not to record was received: a record under its id, if any, is stale.
        True if there was one (its batch deletes it)."""
        return self._entries.pop(packet_id, None) is not None

    def acknowledged(self, entries: list[Entry]) -> None:
        """PUBACKs were sent for these records' messages on the current connection."""
        self._acknowledged += entries

    def take_acknowledged(self) -> list[Entry]:
        """The records to confirm with the next round trip."""
        taken, self._acknowledged = self._acknowledged, []
        return taken

    def confirmed(self, entries: list[Entry]) -> None:
        """A round trip sent after these records' PUBACKs was answered: retire them (unless
        a later message under the same id replaced them meanwhile)."""
        for entry in entries:
            if self._entries.get(entry.packet_id) is entry:
                del self._entries[entry.packet_id]
                self._retired.append(entry)

    def take_retired(self) -> list[Entry]:
        """Retired records to delete from the table (`give_back` them if that fails)."""
        taken, self._retired = self._retired, []
        return taken

    def give_back(self, entries: list[Entry]) -> None:
        self._retired = entries + self._retired


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
