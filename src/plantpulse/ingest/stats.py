"""Counters and latency samples of the MQTT ingest pipeline (`GET /api/v1/ingest/stats`)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

LATENCY_SAMPLES = 2048


@dataclass
class IngestCounters:
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    readings_received: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    status_updates: int = 0
    batches: int = 0
    acknowledged: int = 0
    write_retries: int = 0
    reconnects: int = 0
    # DUP deliveries recognised as copies of committed messages (acknowledged, not stored).
    redelivered: int = 0


@dataclass
class IngestState:
    counters: IngestCounters = field(default_factory=IngestCounters)
    flush_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    # Time from a message's arrival to its commit, per batch (its oldest message).
    commit_lag_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    last_error: str | None = None
    last_error_at: datetime | None = None
    connected: bool = False
    subscribed: bool = False
    # The most messages the queue has held (it never exceeds queue_max_messages).
    queue_high_water: int = 0
    connected_since: datetime | None = None
    # time.time() of the last commit (of the start, before any): progress, for /ready.
    committed_at: float = field(default_factory=time.time)
    # The last database error of the writer, until its next commit.
    write_error: str | None = None

    def error(self, message: str) -> None:
        self.last_error = message[:500]
        self.last_error_at = datetime.now(UTC)

    def committed(self) -> None:
        self.committed_at = time.time()
        self.write_error = None


def percentiles(samples: Sequence[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"p50_ms": at(0.5), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": at(1.0)}
