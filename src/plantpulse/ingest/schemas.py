from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from plantpulse.schemas import UtcDatetime


class DeadLetterRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    received_at: UtcDatetime
    source: str = Field(description="Where the message came from: `mqtt` or `http`")
    topic: str | None
    reason: str = Field(description="`<code>: <detail>`; filter on the code with `reason=`")
    payload_excerpt: str | None = Field(description="The first KiB of the payload, as text")
    payload_size: int = Field(description="Size of the whole payload in bytes")


class Latency(BaseModel):
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


class IngestStats(BaseModel):
    """Counters since this process started (each process of a scaled-out deployment has its
    own). Messages: received = accepted + rejected + redelivered + still queued or being
    written."""

    enabled: bool = Field(description="MQTT ingest runs in this process")
    connected: bool = False
    connected_since: UtcDatetime | None = None
    broker: str | None = None
    subscription: str | None = None
    received: int = Field(0, description="MQTT messages taken from the broker")
    accepted: int = Field(0, description="Messages stored in full (readings or status)")
    rejected: int = Field(0, description="Messages recorded as dead letters (in full or in part)")
    duplicates: int = Field(0, description="Readings already stored (redeliveries, re-sends)")
    readings_received: int = 0
    readings_stored: int = 0
    status_updates: int = 0
    acknowledged: int = Field(0, description="QoS 1 messages acknowledged after their commit")
    batches: int = 0
    write_retries: int = Field(0, description="Failed batch writes that were retried")
    reconnects: int = 0
    redelivered: int = Field(
        0,
        description="DUP redeliveries of messages already committed: acknowledged, not stored "
        "again (docs/ingest.md, the delivery log)",
    )
    queue_depth: int = Field(0, description="Messages received and not yet committed")
    queue_readings: int = 0
    queue_capacity: int = 0
    queue_high_water: int = Field(0, description="Most messages the queue has held")
    paused: bool = Field(False, description="Reading from the broker paused: the queue is full")
    flush_latency: Latency | None = Field(None, description="Batch write time, last 2048 batches")
    commit_lag: Latency | None = Field(
        None, description="Arrival to commit of each batch's oldest message, last 2048 batches"
    )
    last_error: str | None = None
    last_error_at: UtcDatetime | None = None
