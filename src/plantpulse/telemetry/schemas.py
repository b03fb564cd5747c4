"""Request and response shapes of the telemetry API.

Storage is narrow (one row per machine, metric and time); the API is wide: one object per
timestamp with one key per metric. `timestamp` and `valid` are reserved and never metrics.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from plantpulse.schemas import UtcDatetime

Row = dict[str, Any]


class RejectedItem(BaseModel):
    where: str = Field(
        description="Where in the payload: `batch[0].readings[2].temperature`, `data.rpm`, "
        "or a machine id for readings of an unregistered machine",
        examples=["batch[0].readings[1].pressure"],
    )
    reason: str = Field(examples=["value of 'pressure' is not finite"])


class IngestResult(BaseModel):
    """What happened to the readings of one ingest request."""

    accepted: int = Field(
        description="Readings (one metric value at one time) that passed validation: stored "
        "now, or stored before (`duplicates`)"
    )
    stored: int = Field(description="Readings stored by this request")
    duplicates: int = Field(description="Accepted readings that were already stored (re-sends)")
    rejected: int = Field(description="Items rejected, each with where and why")
    rejected_items: list[RejectedItem]
    rejected_items_truncated: bool = Field(
        default=False, description="More items were rejected than are listed"
    )


class IngestRejected(BaseModel):
    """422: nothing in the request was accepted (the error envelope plus the detail)."""

    error: str
    detail: str
    status: int
    accepted: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int
    rejected_items: list[RejectedItem]
    rejected_items_truncated: bool = False


class TelemetryPage(BaseModel):
    """Wide rows: raw readings or buckets, newest first unless `order=asc`."""

    machine_id: uuid.UUID
    start_time: UtcDatetime = Field(description="Inclusive")
    end_time: UtcDatetime = Field(description="Exclusive")
    fields: list[str] = Field(description="The metrics asked for (all catalogued if omitted)")
    interval: str | None = Field(default=None, description="Bucket width, when bucketed")
    agg: list[str] | None = Field(default=None, description="Aggregates, when bucketed")
    points: int | None = Field(
        default=None, description="With `points=N`: at most N points per metric (M4)"
    )
    retained_since: dict[str, UtcDatetime | None] = Field(
        default_factory=dict,
        description="Per resolution (`raw`, `1m`, `1h`): the oldest time retention keeps "
        "it for (null: kept forever). A range older than `raw` is answerable only by "
        "buckets that are whole minutes (`1m`) or hours (`1h`) still retained; raw "
        "retention drops whole days, so somewhat older readings may still be there",
    )
    source: Literal["raw", "1m", "1h"] = Field(
        default="raw",
        description="Where the aligned middle of the range was read from: the readings, or "
        "the 1-minute/1-hour rollups (its edges and the last minutes always come from the "
        "readings)",
    )
    order: Literal["asc", "desc"]
    limit: int
    offset: int
    has_more: bool = Field(description="More rows follow this page (raise `offset`)")
    items: list[Row] = Field(
        description=(
            'Raw: `{"timestamp": ..., "temperature": 72.5, "pressure": 101.3}` — a metric '
            'without a reading at that time is absent. Buckets: `{"timestamp": <bucket '
            'start>, "temperature_avg": ..., "temperature_max": ...}` (`<metric>_<agg>`; '
            "with `fill=null` empty buckets are listed with nulls). With `include_invalid=true` "
            'raw rows carry `"valid": {"<metric>": false, ...}` and buckets '
            "`<metric>_invalid` (how many of the bucket's readings are invalid). With "
            "`points=N`: raw-shaped rows holding, per metric and chart bucket, the first, "
            "smallest, largest and last reading (M4)."
        )
    )


class LatestValue(BaseModel):
    value: float
    timestamp: UtcDatetime = Field(description="Event time of the reading")
    valid: bool | None = Field(
        default=None, description="Only with include_invalid=true (telemetry:read-invalid)"
    )


class MachineLatest(BaseModel):
    machine_id: uuid.UUID
    name: str
    metrics: dict[str, LatestValue] = Field(
        description="Newest reading per metric by event time (not arrival time)"
    )


class FleetLatest(BaseModel):
    items: list[MachineLatest]
    total: int = Field(description="Machines matching, ignoring limit/offset")
    limit: int
    offset: int
    unknown_machine_ids: list[uuid.UUID] = Field(
        default_factory=list, description="Requested ids that are not registered machines"
    )


class DeleteResult(BaseModel):
    machine_id: uuid.UUID
    start_time: UtcDatetime
    end_time: UtcDatetime
    deleted: int = Field(description="Readings deleted")


# Request bodies: the ingest routes read the body themselves (size limit, per-item errors),
# so these document it in OpenAPI.
READING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "`timestamp` (ISO 8601 with offset, or epoch s/ms; default: the batch's, "
    "then the server's time) plus any numeric field, each a metric. One request holds one value "
    "per machine, metric and time: a later one is rejected, so give each reading of a list its "
    "own timestamp",
    "properties": {"timestamp": {"type": ["string", "number"]}},
    "additionalProperties": {"type": ["number", "null"]},
}
GATEWAY_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["batch"],
                "properties": {
                    "gateway_id": {"type": "string"},
                    "timestamp": {"type": ["string", "number"]},
                    "batch": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["machine_id", "readings"],
                            "properties": {
                                "machine_id": {"type": "string", "format": "uuid"},
                                "sensor_type": {"type": "string"},
                                "location": {"type": "string"},
                                "readings": {"type": "array", "items": READING_SCHEMA},
                            },
                        },
                    },
                },
            },
            "example": {
                "gateway_id": "Gateway-001",
                "timestamp": "2024-01-15T10:30:00Z",
                "batch": [
                    {
                        "machine_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                        "sensor_type": "Temperature",
                        "location": "Factory A",
                        "readings": [
                            {
                                "timestamp": "2024-01-15T10:30:00Z",
                                "temperature": 72.5,
                                "pressure": 101.3,
                                "speed": 1500,
                            }
                        ],
                    }
                ],
            },
        }
    },
}
DEVICE_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "description": '`{"timestamp"?, "data": {...}, "metadata"?}`; also '
                'accepted: flat `{"timestamp"?, "temperature": ...}` or '
                '`{"readings": [...]}`',
                "properties": {
                    "timestamp": {"type": ["string", "number"]},
                    "data": {"type": "object", "additionalProperties": {"type": "number"}},
                    "metadata": {"type": "object"},
                },
            },
            "example": {
                "timestamp": "2024-01-15T10:30:00Z",
                "data": {"temperature": 23.5, "humidity": 41.0},
                "metadata": {"firmware": "1.4.2"},
            },
        }
    },
}
