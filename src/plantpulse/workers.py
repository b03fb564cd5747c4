"""`plantpulse serve --workers N`: what makes N identical processes on one host cooperate.

- The port: uvicorn's supervisor opens it once and every worker accepts on it.
- MQTT: every worker joins the shared subscription `$share/<group>/...` (the group defaults
  to "plantpulse" when N > 1), so the broker gives each message to one of them. Each needs a
  client id of its own that is also *stable across restarts*: its persistent session holds
  the QoS 1 messages it had not acknowledged, and a worker restarted under a new id would
  strand them. A worker therefore claims the lowest free slot 0..N-1 with an exclusive file
  lock (released by the kernel when the process dies, so a restarted worker gets the slot
  back) and connects as `<client_id>-<slot>`.
- Realtime events, token revocations and the principal cache go through Redis, which is why
  N > 1 is refused without it.
- Jobs: every worker runs them, and each is safe concurrently. Retention works under a
  PostgreSQL advisory lock (one at a time; sysconfig/retention.py). No-data alert sweeps read
  each machine's last report from the database (the writer keeps `last_seen_at` within
  seconds, whichever worker stored the reading) and open or close alerts with statements
  that succeed once (a partial unique index on open alerts, `ON CONFLICT DO NOTHING`), so
  an alert is raised and cleared once whichever worker gets there first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO


def claim_slot(key: str, workers: int, directory: Path | None = None) -> tuple[int, IO[bytes]]:
    """The lowest free worker slot for `key` and the open lock file that holds it (keep it
    open for the life of the process)."""
    base = directory or Path(tempfile.gettempdir())
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    for slot in range(workers):
        handle = (base / f"plantpulse-worker-{digest}-{slot}.lock").open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        with contextlib.suppress(OSError):
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n".encode())
            handle.flush()
        return slot, handle
    raise RuntimeError(
        f"all {workers} worker slots are taken (another `plantpulse serve` with the same MQTT "
        "client id and broker on this host?)"
    )
