"""Recognising a QoS 1 redelivery of a message whose effect is already committed.

A reading without a device timestamp takes the time it was received. When the broker delivers
such a message again — we committed it, but the broker never got our PUBACK (a `kill -9`
between the commit and the acknowledgement, a dropped connection) — the copy gets a new time,
and the readings' unique key cannot recognise it: 200,000 messages and one kill gave 215,989
rows (issue 8). MQTT does say which deliveries may be copies: a message the broker sends again
to a resumed session carries the DUP flag and the packet id of its first delivery.

So, in the same transaction as each batch, we record `(packet id, digest of topic and payload)`
of every message whose effect the unique key does not make idempotent: readings stamped with
the receive time, status changes and dead letters — one row per batch and client id, the ids
and digests in arrays (one small INSERT per batch; a row per message cost a third of the
batch's COPY time again, scripts/bench_redelivery.py). A DUP delivery whose packet id is
recorded *with the same digest* is not stored again, only acknowledged (and recorded again,
with its own batch, for the connection that acknowledges it). Messages whose readings all
carry device timestamps are not recorded at all (the unique key already drops their copies),
so the common case costs a few operations per message and no SQL.

Packet ids name a message only until the broker has our PUBACK; then it may reuse the id. A
record that outlives that is *stale*, and a stale record with the same digest as a later
message under the same id would make us drop that message's redelivery: a loss (think of a
device that sends `{"running": 1}` without a timestamp, over and over). So records are retired
as soon as we know the broker has our PUBACK:

- Round trip: after each burst of PUBACKs the connection loop sends a PINGREQ; the broker
  handles a connection's packets in order, so its PINGRESP proves every PUBACK before it
  processed (paho_bridge.Link.round_trip). The rows of those messages are then deleted.
  (The Receive Maximum cannot serve as proof: Mosquitto 2.0.11 sends a whole new window of
  messages after each PUBACK, docs/ingest.md.)
- Resend first: on a resumed session the broker resends every unacknowledged message before
  new ones (MQTT 5 section 4.4; Mosquitto sends its in-flight list first, which we checked).
  Records from before this connection that were not resent by its first non-DUP delivery
  were acknowledged. (A broker that interleaved would only make us store a late copy again:
  a duplicate, never a loss.)
- Reuse: any delivery under a recorded id proves that record stale (the broker never has two
  unacknowledged messages under one id): the later record wins (rows are read in batch order).
- Age: rows older than the session lifetime (at least 7 days) are pruned at start-up.

A row is deleted once none of its records is still current. Per client the table holds the
rows of the last few batches. What is left — a broker reusing an id right after our
PUBACK, with identical content, and a crash before the retirement is committed — is in
docs/ingest.md ("Redeliveries"). Records are per client id, so processes sharing a
subscription (each with its own client id) never see each other's.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg
from asyncpg.pool import PoolConnectionProxy

DIGEST_BYTES = 16
# Records are kept at least this long, whatever the session expiry says: with MQTT 3.1.1 the
# broker decides (Mosquitto's persistent_client_expiration, 7 days in scripts/mosquitto.conf).
MIN_KEEP_SECONDS = 7 * 24 * 3600

_PRUNE = "DELETE FROM mqtt_deliveries WHERE committed_at < now() - make_interval(secs => $1)"
_LOAD = """
SELECT batch, packet_ids, digests FROM mqtt_deliveries WHERE client_id = $1 ORDER BY batch
"""
_INSERT = """
INSERT INTO mqtt_deliveries (client_id, batch, packet_ids, digests) VALUES ($1, $2, $3, $4)
"""
_DELETE = "DELETE FROM mqtt_deliveries WHERE client_id = $1 AND batch = ANY($2::bigint[])"


def digest(topic: bytes, payload: bytes) -> bytes:
    """What identifies a message's content (MQTT topics cannot contain NUL)."""
    return hashlib.blake2b(topic + b"\0" + payload, digest_size=DIGEST_BYTES).digest()


class Entry:
    """A record: the message received under `packet_id` on connection `generation` (-1:
    loaded from the table), stored in row `batch` once its batch committed. Until then it
    keeps the record it `replaces` (same id) alive in the table: a crash in between must
    leave one of the two there."""

    __slots__ = ("batch", "digest", "generation", "packet_id", "replaces")

    def __init__(self, packet_id: int, content: bytes, generation: int) -> None:
        self.packet_id = packet_id
        self.digest = content
        self.generation = generation
        self.batch: int | None = None
        self.replaces: Entry | None = None


@dataclass(slots=True)
class Changes:
    """What a batch's transaction does to the table: one new row (`key`, with the records of
    `entries`), and rows to delete."""

    key: int
    entries: list[Entry] = field(default_factory=list)
    retired: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.entries or self.retired)


class DeliveryLog:
    """The records of one client id: in the database, and mirrored in memory (loaded once per
    process before the first connection, then kept by this process, the only writer for its
    client id), so the check runs in the message callback without a database round trip."""

    def __init__(self, client_id: str, *, keep_seconds: float) -> None:
        self.client_id = client_id
        self.keep_seconds = max(keep_seconds, MIN_KEEP_SECONDS)
        # packet id -> the current record under it.
        self._entries: dict[int, Entry] = {}
        # Rows in the table (or being written) -> their records.
        self._rows: dict[int, list[Entry]] = {}
        self._last_key = 0
        self.generation = -1
        # Until the first non-DUP delivery of a connection: the broker is resending.
        self.resending = False
        # Acknowledged on this connection, not yet confirmed by a round trip.
        self._acknowledged: list[Entry] = []
        # Rows whose records are all stale: to delete from the table.
        self._retired: list[int] = []
        self.loaded = False

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        # Checked per message before `forget`: most deployments record nothing at all.
        return bool(self._entries)

    @property
    def rows(self) -> int:
        return len(self._rows)

    async def load(self, pool: asyncpg.Pool) -> None:
        """Prune rows nothing can redeliver any more, then read this client's (in batch
        order: a later record under an id replaces an earlier one)."""
        async with pool.acquire() as conn:
            await conn.execute(_PRUNE, float(self.keep_seconds))
            rows = await conn.fetch(_LOAD, self.client_id)
        for row in rows:
            digests = bytes(row["digests"])
            entries = []
            for i, packet_id in enumerate(row["packet_ids"]):
                content = digests[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES]
                entry = Entry(packet_id, content, -1)
                entry.batch = row["batch"]
                entries.append(entry)
                self._entries[packet_id] = entry
            self._rows[row["batch"]] = entries
            self._last_key = max(self._last_key, row["batch"])
        self.loaded = True

    def arrived(self, dup: bool, generation: int) -> None:
        """A QoS 1 delivery on connection `generation`; call before the methods below (or
        skip it when it is not a DUP, not `resending` and `generation` is unchanged: then it
        does nothing)."""
        if generation != self.generation:
            self.generation = generation
            self.resending = True
            self._acknowledged.clear()  # never confirmed: the resend rule takes over
        if self.resending and not dup:
            self.resending = False
            stale = [e for e in self._entries.values() if e.generation != generation]
            for entry in stale:
                del self._entries[entry.packet_id]
            self._retire_rows(_rows_of(stale))

    def is_copy(self, packet_id: int, content: bytes) -> Entry | None:
        """The record a DUP delivery is a copy of, renewed for this connection (the copy is
        acknowledged here, and its batch records it again), or None."""
        entry = self._entries.get(packet_id)
        if entry is None or entry.digest != content:
            return None
        return self.note(packet_id, entry.digest)

    def note(self, packet_id: int, content: bytes) -> Entry:
        """A message to record was received (the record is written with its batch; if the
        process ends first, the broker delivers it again to a table without it)."""
        entry = Entry(packet_id, content, self.generation)
        entry.replaces = self._entries.get(packet_id)
        self._entries[packet_id] = entry
        return entry

    def forget(self, packet_id: int) -> None:
        """A message not to record was received: a record under its id, if any, is stale."""
        entry = self._entries.pop(packet_id, None)
        if entry is not None:
            self._retire_rows(_rows_of([entry]))

    def next_key(self) -> int:
        """A key for a new row: increasing, also across restarts of this client."""
        self._last_key = max(self._last_key + 1, time.time_ns())
        return self._last_key

    def stored(self, changes: Changes) -> None:
        """The batch's row was committed: the rows of what its records replaced (and an
        earlier row of the same records, if the batch was written twice after a writer
        restart) may go now, and so may this one if its records are stale already."""
        check: set[int | None] = {changes.key}
        for entry in changes.entries:
            check.add(entry.batch)
            if entry.replaces is not None:
                check.add(entry.replaces.batch)
                entry.replaces = None
            entry.batch = changes.key
        self._rows[changes.key] = changes.entries
        self._retire_rows(check)

    def acknowledged(self, entries: list[Entry]) -> None:
        """PUBACKs were sent for these records' messages on the current connection."""
        self._acknowledged += entries

    def take_acknowledged(self) -> list[Entry]:
        """The records to confirm with the next round trip."""
        taken, self._acknowledged = self._acknowledged, []
        return taken

    def confirmed(self, entries: list[Entry]) -> None:
        """A round trip sent after these records' PUBACKs was answered: they are stale
        (unless a later message under the same id replaced them meanwhile: then that one is
        the current record)."""
        for entry in entries:
            if self._entries.get(entry.packet_id) is entry:
                del self._entries[entry.packet_id]
        self._retire_rows({entry.batch for entry in entries})

    def _retire_rows(self, keys: Iterable[int | None]) -> None:
        """Rows none of whose records is needed any more go to the retired list."""
        for key in keys:
            if key is None or (entries := self._rows.get(key)) is None:
                continue
            if not any(self._needed(entry, key) for entry in entries):
                del self._rows[key]
                self._retired.append(key)

    def _needed(self, entry: Entry, key: int) -> bool:
        """Whether row `key` must keep `entry`: it is the current record of its id, or the
        current one (or one between) replaces it and is not committed yet."""
        if entry.batch != key:
            return False  # written again, in a later row
        current = self._entries.get(entry.packet_id)
        while current is not None:
            if current is entry:
                return True
            if current.batch is not None:
                return False
            current = current.replaces
        return False

    def take_retired(self) -> list[int]:
        """Rows to delete from the table (`give_back` them if that fails)."""
        taken, self._retired = self._retired, []
        return taken

    def give_back(self, keys: list[int]) -> None:
        self._retired = keys + self._retired


def _rows_of(entries: Iterable[Entry]) -> set[int | None]:
    """The rows of these records and of the records they keep alive."""
    keys: set[int | None] = set()
    for entry in entries:
        current: Entry | None = entry
        while current is not None:
            keys.add(current.batch)
            current = current.replaces
    return keys


async def persist(
    conn: asyncpg.Connection | PoolConnectionProxy, client_id: str, changes: Changes
) -> None:
    """Write a batch's changes, inside the batch's transaction."""
    if changes.retired:
        await conn.execute(_DELETE, client_id, changes.retired)
    if changes.entries:
        await conn.execute(
            _INSERT,
            client_id,
            changes.key,
            [entry.packet_id for entry in changes.entries],
            b"".join(entry.digest for entry in changes.entries),
        )
