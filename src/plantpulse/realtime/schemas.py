"""Messages a WebSocket client may send (see docs/realtime.md)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

MAX_IDS_PER_MESSAGE = 1000
Ref = str | int | None


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Echoed in the reply, so a client can match replies to requests.
    ref: Ref = Field(default=None)


class AuthMessage(_Message):
    action: Literal["auth"]
    token: str = Field(min_length=1, max_length=4096)


class SubscribeMessage(_Message):
    action: Literal["subscribe"]
    machine_ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_IDS_PER_MESSAGE)


EventType = Literal["reading", "alert", "machine_status"]


class SubscribeAllMessage(_Message):
    action: Literal["subscribe_all"]
    # An alerts screen wants every machine's alerts without every machine's readings.
    types: list[EventType] | None = Field(
        default=None, min_length=1, description="Only these event types; omit for all"
    )


class UnsubscribeMessage(_Message):
    action: Literal["unsubscribe"]
    # Omitted: unsubscribe from everything (subscribe_all included).
    machine_ids: list[uuid.UUID] | None = Field(default=None, max_length=MAX_IDS_PER_MESSAGE)


class PingMessage(_Message):
    action: Literal["ping"]


ClientMessage = Annotated[
    AuthMessage | SubscribeMessage | SubscribeAllMessage | UnsubscribeMessage | PingMessage,
    Field(discriminator="action"),
]
client_message: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
