from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from plantpulse.machines.models import Connectivity, MachineStatus
from plantpulse.schemas import UtcDatetime, storable
from plantpulse.telemetry.payloads import METRIC_NAME

MAX_TAGS = 32
MAX_LABELS = 64
MAX_GROUP_MEMBERS_PER_REQUEST = 1000


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=128),
    AfterValidator(storable),
]
Location = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=128),
    AfterValidator(storable),
]
SensorType = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(storable),
]
Description = Annotated[str, StringConstraints(max_length=4000), AfterValidator(storable)]
Tag = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(storable),
]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(storable)]
LabelValue = Annotated[str, StringConstraints(max_length=256), AfterValidator(storable)]
Unit = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=32),
    AfterValidator(storable),
]


def _metric_name(value: str) -> str:
    if not METRIC_NAME.match(value):
        raise ValueError(
            "metric names are 1-64 of A-Z a-z 0-9 _ . : / -, not starting with . : / -"
        )
    return value


MetricName = Annotated[str, AfterValidator(_metric_name)]
# Strict: true/false and numeric strings are not numbers here.
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def _unique_tags(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


Tags = Annotated[
    list[Tag],
    Field(max_length=MAX_TAGS, description=f"At most {MAX_TAGS} tags of 1-64 characters"),
    AfterValidator(_unique_tags),
]
Labels = Annotated[
    dict[LabelKey, LabelValue],
    Field(
        max_length=MAX_LABELS,
        description=f"At most {MAX_LABELS} string labels (keys 1-64, values up to 256 characters)",
    ),
]

MachineSort = Literal[
    "name",
    "-name",
    "created_at",
    "-created_at",
    "last_seen_at",
    "-last_seen_at",
    "status",
    "-status",
]


def _reject_nulls(data: Any, fields: tuple[str, ...]) -> Any:
    """PATCH semantics: an omitted field is left alone, null clears a nullable field; the
    fields named here can't be cleared, so an explicit null is a validation error."""
    if isinstance(data, dict):
        nulls = [name for name in fields if name in data and data[name] is None]
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null")
    return data


class MachineCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID | None = Field(
        default=None,
        description="Register a device under the UUID it already sends; generated when omitted",
    )
    name: Name = Field(description="Unique, 1-128 characters")
    location: Location | None = None
    sensor_type: SensorType | None = None
    status: MachineStatus = MachineStatus.active
    description: Description | None = None
    tags: Tags = Field(default_factory=list)
    labels: Labels = Field(default_factory=dict)


class MachineUpdate(BaseModel):
    """Omitted fields stay as they are; `null` clears location, sensor_type and description."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    location: Location | None = None
    sensor_type: SensorType | None = None
    status: MachineStatus | None = None
    description: Description | None = None
    tags: Tags | None = None
    labels: Labels | None = None

    @model_validator(mode="before")
    @classmethod
    def _required_fields_not_null(cls, data: Any) -> Any:
        return _reject_nulls(data, ("name", "status", "tags", "labels"))


class MachineStatusUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: MachineStatus


class GroupRef(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str


class MachineRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    location: str | None
    sensor_type: str | None
    status: MachineStatus
    connectivity: Connectivity = Field(
        description="MQTT session state (online/offline) as last reported; unknown for "
        "machines that only send over HTTP"
    )
    description: str | None
    tags: list[str]
    # Read leniently: labels written by other means than this API may hold any JSON.
    labels: dict[str, Any]
    last_seen_at: UtcDatetime | None = Field(
        description="When ingest last stored a reading of this machine (updated every few seconds)"
    )
    has_api_key: bool
    api_key_created_at: UtcDatetime | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class MachineDetail(MachineRead):
    groups: list[GroupRef]


class ApiKeyIssued(BaseModel):
    machine_id: uuid.UUID
    api_key: str = Field(
        description="Shown only this once; send it as `X-API-Key`. Any previous key of this "
        "machine stopped working."
    )
    created_at: UtcDatetime


class MetricRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    unit: str | None
    description: str | None
    min_value: float | None = Field(description="Readings below are stored with valid = false")
    max_value: float | None = Field(description="Readings above are stored with valid = false")
    created_at: UtcDatetime


def _check_range(low: float | None, high: float | None) -> None:
    if low is not None and high is not None and low > high:
        raise ValueError(f"min_value ({low}) must not be greater than max_value ({high})")


class MetricUpdate(BaseModel):
    """Omitted fields stay as they are; `null` clears a field (a range bound means unbounded)."""

    model_config = ConfigDict(extra="forbid")

    unit: Unit | None = None
    description: Description | None = None
    min_value: FiniteFloat | None = None
    max_value: FiniteFloat | None = None

    @model_validator(mode="after")
    def _range(self) -> MetricUpdate:
        _check_range(self.min_value, self.max_value)
        return self


class MetricDefinition(BaseModel):
    """The whole definition: omitted fields are null."""

    model_config = ConfigDict(extra="forbid")

    unit: Unit | None = None
    description: Description | None = None
    min_value: FiniteFloat | None = None
    max_value: FiniteFloat | None = None

    @model_validator(mode="after")
    def _range(self) -> MetricDefinition:
        _check_range(self.min_value, self.max_value)
        return self


class LocationCount(BaseModel):
    location: str | None
    count: int


class MachineStats(BaseModel):
    total: int
    by_status: dict[MachineStatus, int] = Field(description="Every status, zeros included")
    by_location: list[LocationCount] = Field(
        description="Machines per location, most first; `null` is machines without a location"
    )
    seen_last_5_minutes: int = Field(
        description="Machines whose last_seen_at is within the last 5 minutes"
    )
    readings_last_hour: int = Field(
        description="Readings whose event time (`time`, not arrival time) is within the last "
        "hour; readings delivered late for older times are not counted"
    )


class GroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="Unique, 1-128 characters")
    description: Description | None = None
    machine_ids: list[uuid.UUID] = Field(
        default_factory=list,
        max_length=MAX_GROUP_MEMBERS_PER_REQUEST,
        description="Initial members (all must exist)",
    )


class GroupUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    description: Description | None = None

    @model_validator(mode="before")
    @classmethod
    def _name_not_null(cls, data: Any) -> Any:
        return _reject_nulls(data, ("name",))


class GroupMembersAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    machine_ids: list[uuid.UUID] = Field(
        min_length=1,
        max_length=MAX_GROUP_MEMBERS_PER_REQUEST,
        description="Machines to add; ones already in the group are left as they are",
    )


class GroupRead(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    machine_count: int
    created_at: UtcDatetime
    updated_at: UtcDatetime


class MachineSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    location: str | None
    status: MachineStatus
    connectivity: Connectivity
    last_seen_at: UtcDatetime | None


class GroupDetail(GroupRead):
    machines: list[MachineSummary] = Field(description="Members, by name")
