from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, Enum, ForeignKey, String, Table, Text, func
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from plantpulse.db import Base, Timestamps, UUIDPrimaryKey


class MachineStatus(StrEnum):
    active = "active"
    inactive = "inactive"
    maintenance = "maintenance"
    error = "error"


class Connectivity(StrEnum):
    unknown = "unknown"
    online = "online"
    offline = "offline"


def _enum(enum: type[StrEnum], name: str) -> Enum:
    return Enum(enum, name=name, values_callable=lambda e: [m.value for m in e])


group_members = Table(
    "machine_group_members",
    Base.metadata,
    Column("group_id", ForeignKey("machine_groups.id", ondelete="CASCADE"), primary_key=True),
    Column("machine_id", ForeignKey("machines.id", ondelete="CASCADE"), primary_key=True),
)


class Machine(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "machines"

    name: Mapped[str] = mapped_column(String(128), unique=True)
    location: Mapped[str | None] = mapped_column(String(128), index=True)
    sensor_type: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[MachineStatus] = mapped_column(
        _enum(MachineStatus, "machine_status"), default=MachineStatus.active
    )
    connectivity: Mapped[Connectivity] = mapped_column(
        _enum(Connectivity, "machine_connectivity"), default=Connectivity.unknown
    )
    description: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(64)), default=list)
    labels: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    last_seen_at: Mapped[datetime | None]
    # A per-machine API key, shown once; only its hash is kept. The prefix finds the row fast.
    api_key_prefix: Mapped[str | None] = mapped_column(String(16), unique=True)
    api_key_hash: Mapped[str | None] = mapped_column(String(255))
    api_key_created_at: Mapped[datetime | None]

    groups: Mapped[list[MachineGroup]] = relationship(
        secondary=group_members,
        back_populates="machines",
        lazy="raise",
        order_by="MachineGroup.name",
    )

    @property
    def has_api_key(self) -> bool:
        return self.api_key_hash is not None


class MachineGroup(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "machine_groups"

    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str | None] = mapped_column(Text)

    machines: Mapped[list[Machine]] = relationship(
        secondary=group_members, back_populates="groups", lazy="raise", order_by="Machine.name"
    )


class MachineMetric(Base):
    """A metric a machine reports: discovered on first ingest, then editable."""

    __tablename__ = "machine_metrics"

    machine_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    unit: Mapped[str | None] = mapped_column(String(32))
    description: Mapped[str | None] = mapped_column(Text)
    # Readings outside [min_value, max_value] are stored with valid = false.
    min_value: Mapped[float | None]
    max_value: Mapped[float | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
