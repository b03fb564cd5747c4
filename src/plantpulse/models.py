"""Every table, imported in one place so Alembic's metadata sees them all."""

from plantpulse.alerts.models import Alert, AlertRule, AlertState
from plantpulse.auth.models import User
from plantpulse.db import Base
from plantpulse.ingest.models import dead_letters
from plantpulse.machines.models import Machine, MachineGroup, MachineMetric, group_members
from plantpulse.sources.models import Source, SourceRun
from plantpulse.sysconfig.models import ConfigAudit, SystemConfig
from plantpulse.telemetry.models import readings

__all__ = [
    "Alert",
    "AlertRule",
    "AlertState",
    "Base",
    "ConfigAudit",
    "Machine",
    "MachineGroup",
    "MachineMetric",
    "Source",
    "SourceRun",
    "SystemConfig",
    "User",
    "dead_letters",
    "group_members",
    "readings",
]
