from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from plantpulse.schemas import UtcDatetime


class ConfigEntryRead(BaseModel):
    key: str
    value: Any = Field(description="The value in effect (the default unless someone set it)")
    default: Any = Field(description="The value from the environment / built-in default")
    type: str
    description: str
    updated_by: uuid.UUID | None
    updated_at: UtcDatetime | None


class ConfigUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: JsonValue = Field(description="The new value; its type depends on the key")


class ConfigAuditRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    key: str
    old_value: Any
    new_value: Any
    changed_by: uuid.UUID | None
    changed_at: UtcDatetime
