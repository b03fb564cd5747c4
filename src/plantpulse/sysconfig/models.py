"""System settings changed at run time, and who changed what."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Identity, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from plantpulse.db import Base, utcnow


class SystemConfig(Base):
    """One row per key that was ever set; absent keys take their default."""

    __tablename__ = "system_config"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    # JSON so each key keeps its own type (number, boolean, null).
    value: Mapped[Any] = mapped_column(JSONB(none_as_null=False))
    updated_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), default=utcnow)


class ConfigAudit(Base):
    __tablename__ = "config_audit"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), index=True)
    old_value: Mapped[Any] = mapped_column(JSONB(none_as_null=False))
    new_value: Mapped[Any] = mapped_column(JSONB(none_as_null=False))
    changed_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    changed_at: Mapped[datetime] = mapped_column(
        server_default=func.now(), default=utcnow, index=True
    )
