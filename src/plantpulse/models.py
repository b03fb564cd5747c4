"""Every table, imported in one place so Alembic's metadata sees them all."""

from plantpulse.auth.models import User
from plantpulse.db import Base
from plantpulse.ingest.models import dead_letters
from plantpulse.machines.models import Machine, MachineGroup, MachineMetric, group_members
from plantpulse.telemetry.models import readings

__all__ = [
    "Base",
    "Machine",
    "MachineGroup",
    "MachineMetric",
    "User",
    "dead_letters",
    "group_members",
    "readings",
]
