from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from plantpulse.schemas import Text, UtcDatetime
from plantpulse.sources.decoders import DecoderSpec, PathError, compile_path
from plantpulse.telemetry.payloads import METRIC_NAME, RESERVED_METRIC_NAMES

PathText = Annotated[
    Text, Field(max_length=256, description="Like `a.b[0].c` (optionally `$.`); '' = the whole")
]
_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$"


def _check_path(value: str) -> str:
    try:
        compile_path(value)
    except PathError as exc:
        raise ValueError(str(exc)) from None
    return value


def _check_metric(value: str) -> str:
    if not METRIC_NAME.match(value) or value in RESERVED_METRIC_NAMES:
        raise ValueError(f"{value[:64]!r} is not a metric name (1-64 of A-Z a-z 0-9 _ . : / -)")
    return value


class _DecoderBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    points: PathText = Field(
        default="", description="Where the point (or list of points) is; '' = the whole body"
    )
    time: PathText = Field(
        default="time", description="Timestamp in a point: epoch s/ms or ISO 8601 (no offset=UTC)"
    )
    tags: PathText = Field(default="tags", description="Tags list in a point (missing = none)")
    machine: PathText | None = Field(
        default=None,
        description="Machine UUID in a point; default: the source's machine_id for every point",
    )

    _paths = field_validator("points", "time", "tags", "machine")(
        lambda v: v if v is None else _check_path(v)
    )


class Float32Decoder(_DecoderBase):
    kind: Literal["bytes-float32"]
    byte_order: Literal["little", "big"] = Field(
        default="little",
        description="little: [157,42,76,190] = -0.1994; big: the same bytes = -2.25e-21",
    )
    value: PathText = Field(default="value", description="The 4-byte list in a point")

    _value = field_validator("value")(_check_path)

    def spec(self) -> DecoderSpec:
        return DecoderSpec(
            kind="bytes-float32",
            points=compile_path(self.points),
            time=compile_path(self.time),
            tags=compile_path(self.tags),
            values=((None, compile_path(self.value)),),
            machine=None if self.machine is None else compile_path(self.machine),
            byte_order=self.byte_order,
        )


class JsonDecoder(_DecoderBase):
    kind: Literal["json"]
    values: dict[str, PathText] = Field(
        default_factory=dict,
        max_length=64,
        description="metric name -> path of its number in a point; empty: the source's "
        "metric at `value`",
    )

    @field_validator("values")
    @classmethod
    def _values(cls, values: dict[str, str]) -> dict[str, str]:
        for name, path in values.items():
            _check_metric(name)
            _check_path(path)
        return values

    def spec(self) -> DecoderSpec:
        values: tuple[tuple[str | None, tuple[str | int, ...]], ...] = tuple(
            (name, compile_path(path)) for name, path in self.values.items()
        ) or ((None, ("value",)),)
        return DecoderSpec(
            kind="json",
            points=compile_path(self.points),
            time=compile_path(self.time),
            tags=compile_path(self.tags),
            values=values,
            machine=None if self.machine is None else compile_path(self.machine),
        )


DecoderConfig = Annotated[Float32Decoder | JsonDecoder, Field(discriminator="kind")]


class _SourceFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=128)
    enabled: bool = True
    url: Text = Field(min_length=1, max_length=2048, description="http:// or https://")
    method: Literal["GET", "POST"] = "GET"
    body: Any = Field(default=None, description="JSON body sent with POST")
    interval_seconds: float | None = Field(
        default=None, ge=1, le=7 * 86_400, description="Poll period; null = only on demand"
    )
    timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Deadline for the whole exchange"
    )
    machine_id: uuid.UUID
    metric: Text = Field(max_length=64, description="Metric name of the decoded value")
    decoder: DecoderConfig
    bad_tags: list[Annotated[Text, Field(max_length=128)]] | None = Field(
        default=None,
        max_length=256,
        description="Tags that make a point invalid; null = any tag does; [] = none does",
    )

    _metric = field_validator("metric")(_check_metric)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)


def check_url(value: str) -> str:
    import httpx

    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an http:// or https:// URL with a host")
    if url.userinfo:
        raise ValueError("put credentials in headers (Authorization), not in the URL")
    return value


class SourceCreate(_SourceFields):
    headers: dict[Annotated[str, Field(pattern=_HEADER_NAME)], Text] = Field(
        default_factory=dict,
        max_length=32,
        description="Sent with every poll (e.g. Authorization); stored encrypted, never returned",
    )


class SourceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(default=None, min_length=1, max_length=128)
    enabled: bool | None = None
    url: Text | None = Field(default=None, min_length=1, max_length=2048)
    method: Literal["GET", "POST"] | None = None
    body: Any = None
    interval_seconds: float | None = Field(default=None, ge=1, le=7 * 86_400)
    timeout_seconds: float | None = Field(default=None, gt=0, le=120)
    machine_id: uuid.UUID | None = None
    metric: Text | None = Field(default=None, max_length=64)
    decoder: DecoderConfig | None = None
    bad_tags: list[Annotated[Text, Field(max_length=128)]] | None = Field(
        default=None, max_length=256
    )
    headers: dict[Annotated[str, Field(pattern=_HEADER_NAME)], Text] | None = Field(
        default=None, max_length=32, description="Replaces every header; {} removes them"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return value if value is None else check_url(value)

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str | None) -> str | None:
        return value if value is None else _check_metric(value)

    @model_validator(mode="after")
    def _not_null(self) -> SourceUpdate:
        for name in ("name", "enabled", "url", "method", "timeout_seconds", "machine_id"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        for name in ("metric", "decoder", "headers"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class SourceRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    enabled: bool
    url: str
    method: str
    body: Any
    header_names: list[str] = Field(description="Names of the headers sent; values are secret")
    interval_seconds: float | None
    timeout_seconds: float
    machine_id: uuid.UUID
    metric: str
    decoder: DecoderConfig
    bad_tags: list[str] | None
    next_poll_at: UtcDatetime | None
    consecutive_failures: int
    created_at: UtcDatetime
    updated_at: UtcDatetime


class RejectedPoint(BaseModel):
    where: str
    reason: str


class SourceRunRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    source_id: uuid.UUID
    trigger: Literal["schedule", "manual"]
    status: Literal["ok", "partial", "failed"] = Field(
        description="ok; partial: some points rejected; failed: nothing pulled (see error)"
    )
    started_at: UtcDatetime
    duration_ms: float
    http_status: int | None
    points: int = Field(description="Points in the response")
    stored: int = Field(description="Readings stored by this run")
    duplicates: int = Field(description="Readings already stored (a re-poll), skipped")
    invalid: int = Field(description="Points stored with valid=false because of their tags")
    rejected: int = Field(description="Points or values not stored; see rejections")
    rejections: list[RejectedPoint] = Field(description="The first rejections, with reasons")
    error: str | None
