"""Roles and the named permissions each one carries. Routes depend on permissions, never roles."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    operator = "operator"
    supervisor = "supervisor"
    management = "management"


class Permission(StrEnum):
    machines_read = "machines:read"
    machines_write = "machines:write"
    machines_delete = "machines:delete"
    telemetry_read = "telemetry:read"
    telemetry_read_invalid = "telemetry:read-invalid"
    telemetry_write = "telemetry:write"
    telemetry_delete = "telemetry:delete"
    alerts_read = "alerts:read"
    alerts_ack = "alerts:acknowledge"
    config_read = "config:read"
    config_write = "config:write"
    ingest_admin = "ingest:admin"
    sources_read = "sources:read"
    sources_write = "sources:write"
    users_manage = "users:manage"


_OPERATOR = frozenset(
    {
        Permission.machines_read,
        Permission.telemetry_read,
        Permission.alerts_read,
        Permission.alerts_ack,
    }
)
_SUPERVISOR = _OPERATOR | {
    Permission.machines_write,
    Permission.telemetry_write,
    Permission.config_read,
    Permission.sources_read,
}
# Management is the administrator role: everything.
_MANAGEMENT = frozenset(Permission)

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.operator: _OPERATOR,
    Role.supervisor: frozenset(_SUPERVISOR),
    Role.management: _MANAGEMENT,
}

# Lowest first; self-registration always gets ROLES_BY_RANK[0].
ROLES_BY_RANK = (Role.operator, Role.supervisor, Role.management)
