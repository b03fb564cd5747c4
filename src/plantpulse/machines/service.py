"""Machines: registry, device credentials. Plain async functions: session first."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse.db import utcnow
from plantpulse.errors import NotAuthenticated, NotFound
from plantpulse.machines import security
from plantpulse.machines.models import Machine


class MachineNotFound(NotFound):
    pass


class InvalidApiKey(NotAuthenticated):
    pass


async def get_machine(session: AsyncSession, machine_id: uuid.UUID) -> Machine:
    machine = await session.get(Machine, machine_id)
    if machine is None:
        raise MachineNotFound(f"machine {machine_id} does not exist")
    return machine


async def issue_api_key(session: AsyncSession, *, machine_id: uuid.UUID) -> str:
    """Issue (or rotate) the machine's API key; the previous key stops working."""
    machine = await get_machine(session, machine_id)
    key, prefix, key_hash = security.new_api_key()
    machine.api_key_prefix = prefix
    machine.api_key_hash = key_hash
    machine.api_key_created_at = utcnow()
    await session.flush()
    return key


async def machine_for_api_key(session: AsyncSession, key: str) -> Machine:
    prefix = security.prefix_of(key)
    machine = (
        await session.scalar(select(Machine).where(Machine.api_key_prefix == prefix))
        if prefix
        else None
    )
    if (
        machine is None
        or not machine.api_key_hash
        or not security.matches(key, machine.api_key_hash)
    ):
        raise InvalidApiKey("invalid API key")
    return machine
