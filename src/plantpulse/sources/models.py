"""A source (where and how to pull, its schedule) and the record of each pull."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from plantpulse.db import Base, Timestamps, UUIDPrimaryKey


class Source(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "sources"

    name: Mapped[str] = mapped_column(String(128), unique=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    url: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(8), default="GET")
    body: Mapped[Any | None] = mapped_column(JSONB)
    # Header values are secrets: encrypted (crypto.py), never returned; names are shown.
    header_names: Mapped[list[str]] = mapped_column(JSONB, default=list)
    headers_encrypted: Mapped[str | None] = mapped_column(Text)
    # None: polled only on demand (POST /sources/{id}/poll).
    interval_seconds: Mapped[float | None]
    timeout_seconds: Mapped[float] = mapped_column(default=10.0)
    machine_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("machines.id", ondelete="CASCADE"), index=True
    )
    metric: Mapped[str] = mapped_column(String(64))
    decoder: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # None: any tag marks a point invalid; a list: only these tags do ([] = tags never do).
    bad_tags: Mapped[list[str] | None] = mapped_column(JSONB)
    next_poll_at: Mapped[datetime | None] = mapped_column(index=True)
    # A scheduled poll in progress in some process; others skip the source until then.
    lease_until: Mapped[datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )


class SourceRun(UUIDPrimaryKey, Base):
    __tablename__ = "source_runs"
    __table_args__ = (Index("ix_source_runs_source_id_started_at", "source_id", "started_at"),)

    source_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"))
    # "schedule" or "manual".
    trigger: Mapped[str] = mapped_column(String(16))
    # "ok", "partial" (some points rejected) or "failed" (nothing pulled: error says why).
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    duration_ms: Mapped[float]
    http_status: Mapped[int | None]
    points: Mapped[int] = mapped_column(default=0)
    stored: Mapped[int] = mapped_column(default=0)
    duplicates: Mapped[int] = mapped_column(default=0)
    invalid: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    rejections: Mapped[list[dict[str, str]]] = mapped_column(JSONB, default=list)
    error: Mapped[str | None] = mapped_column(Text)
