"""Who may send telemetry: a user with `telemetry:write`, or a device with its own API key."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.security import APIKeyHeader

from plantpulse.auth.dependencies import Principal, authenticate_token, bearer
from plantpulse.auth.permissions import Permission
from plantpulse.db import DbSession
from plantpulse.errors import NotAuthenticated, PermissionDenied
from plantpulse.machines import service
from plantpulse.state import AppResources

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="A machine's own API key"
)


@dataclass(frozen=True, slots=True)
class Sender:
    principal: Principal | None
    # Set when a device authenticated with its API key: it may send only its own readings.
    machine_id: uuid.UUID | None

    def may_send_for(self, machine_id: uuid.UUID) -> bool:
        return self.machine_id is None or self.machine_id == machine_id

    def check(self, machine_id: uuid.UUID) -> None:
        if not self.may_send_for(machine_id):
            raise PermissionDenied("an API key may only send its own machine's readings")


async def get_sender(
    session: DbSession,
    resources: AppResources,
    token: Annotated[str | None, Depends(bearer)],
    api_key: Annotated[str | None, Depends(api_key_header)],
) -> Sender:
    if api_key:
        machine = await service.machine_for_api_key(session, api_key)
        return Sender(principal=None, machine_id=machine.id)
    if token:
        principal = await authenticate_token(session, resources, token)
        if not principal.can(Permission.telemetry_write):
            raise PermissionDenied("this action needs the 'telemetry:write' permission")
        return Sender(principal=principal, machine_id=None)
    raise NotAuthenticated("send a bearer token or a machine's X-API-Key")


TelemetrySender = Annotated[Sender, Depends(get_sender)]
