"""Every permission-guarded route against every role, from one table.

The table must list every `/api/v1` operation: a route added without an entry fails
`test_every_api_route_is_in_the_table`, so the matrix can't silently fall behind.
"""

from __future__ import annotations

import uuid

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from plantpulse.auth.permissions import ROLE_PERMISSIONS, Permission, Role
from tests.conftest import Headers, UserFactory

ANY = uuid.UUID(int=1)

P = Permission
# (method, path, permission); None = any authenticated user; "public" = no token needed.
GUARDED: list[tuple[str, str, Permission | str | None]] = [
    ("POST", "/api/v1/auth/register", "public"),
    ("POST", "/api/v1/auth/login", "public"),
    ("POST", "/api/v1/auth/refresh", "public"),
    ("POST", "/api/v1/auth/logout", None),
    ("GET", "/api/v1/auth/me", None),
    ("POST", "/api/v1/auth/change-password", None),
    ("GET", "/api/v1/users", P.users_manage),
    ("GET", "/api/v1/users/roles", None),
    ("GET", "/api/v1/users/{user_id}", P.users_manage),
    ("PATCH", "/api/v1/users/{user_id}", P.users_manage),
    ("DELETE", "/api/v1/users/{user_id}", P.users_manage),
    ("POST", "/api/v1/users/{user_id}/deactivate", P.users_manage),
    ("POST", "/api/v1/users/{user_id}/activate", P.users_manage),
    ("POST", "/api/v1/machines", P.machines_write),
    ("GET", "/api/v1/machines", P.machines_read),
    ("GET", "/api/v1/machines/stats", P.machines_read),
    ("GET", "/api/v1/machines/{machine_id}", P.machines_read),
    ("PATCH", "/api/v1/machines/{machine_id}", P.machines_write),
    ("DELETE", "/api/v1/machines/{machine_id}", P.machines_delete),
    ("PATCH", "/api/v1/machines/{machine_id}/status", P.machines_write),
    ("POST", "/api/v1/machines/{machine_id}/api-key", P.machines_write),
    ("GET", "/api/v1/machines/{machine_id}/metrics", P.machines_read),
    ("PATCH", "/api/v1/machines/{machine_id}/metrics/{name}", P.machines_write),
    ("PUT", "/api/v1/machines/{machine_id}/metrics/{name}", P.machines_write),
    ("POST", "/api/v1/groups", P.machines_write),
    ("GET", "/api/v1/groups", P.machines_read),
    ("GET", "/api/v1/groups/{group_id}", P.machines_read),
    ("PATCH", "/api/v1/groups/{group_id}", P.machines_write),
    ("DELETE", "/api/v1/groups/{group_id}", P.machines_write),
    ("POST", "/api/v1/groups/{group_id}/machines", P.machines_write),
    ("DELETE", "/api/v1/groups/{group_id}/machines/{machine_id}", P.machines_write),
    ("GET", "/api/v1/ingest/dead-letters", P.ingest_admin),
    ("GET", "/api/v1/ingest/stats", P.ingest_admin),
    ("GET", "/api/v1/config", P.config_read),
    ("GET", "/api/v1/config/audit", P.config_read),
    ("GET", "/api/v1/config/{key}", P.config_read),
    ("PUT", "/api/v1/config/{key}", P.config_write),
    # The WebSocket /api/v1/ws is not in OpenAPI; tests/realtime covers its auth.
    ("GET", "/api/v1/stream", P.telemetry_read),
    ("GET", "/api/v1/alert-rules", P.config_read),
    ("POST", "/api/v1/alert-rules", P.config_write),
    ("GET", "/api/v1/alert-rules/{rule_id}", P.config_read),
    ("PATCH", "/api/v1/alert-rules/{rule_id}", P.config_write),
    ("DELETE", "/api/v1/alert-rules/{rule_id}", P.config_write),
    ("GET", "/api/v1/alerts", P.alerts_read),
    ("GET", "/api/v1/alerts/{alert_id}", P.alerts_read),
    ("POST", "/api/v1/alerts/{alert_id}/acknowledge", P.alerts_ack),
    # The ingest routes take TelemetrySender (a bearer token needs telemetry:write; devices
    # use X-API-Key instead, see tests/telemetry/test_ingest.py).
    ("POST", "/api/v1/telemetry/ingest", P.telemetry_write),
    ("POST", "/api/v1/machines/{machine_id}/telemetry", P.telemetry_write),
    ("GET", "/api/v1/machines/{machine_id}/telemetry", P.telemetry_read),
    ("DELETE", "/api/v1/machines/{machine_id}/telemetry", P.telemetry_delete),
    ("GET", "/api/v1/machines/{machine_id}/telemetry/latest", P.telemetry_read),
    ("GET", "/api/v1/machines/{machine_id}/telemetry/export", P.telemetry_read),
    ("GET", "/api/v1/telemetry/latest", P.telemetry_read),
    ("GET", "/api/v1/sources", P.sources_read),
    ("POST", "/api/v1/sources", P.sources_write),
    ("GET", "/api/v1/sources/{source_id}", P.sources_read),
    ("PATCH", "/api/v1/sources/{source_id}", P.sources_write),
    ("DELETE", "/api/v1/sources/{source_id}", P.sources_write),
    ("POST", "/api/v1/sources/{source_id}/poll", P.sources_write),
    ("GET", "/api/v1/sources/{source_id}/runs", P.sources_read),
]


def _concrete(path: str) -> str:
    # Any id will do: the guard runs before the handler looks anything up.
    return (
        path.replace("{user_id}", str(ANY))
        .replace("{machine_id}", str(ANY))
        .replace("{group_id}", str(ANY))
        .replace("{rule_id}", str(ANY))
        .replace("{alert_id}", str(ANY))
        .replace("{source_id}", str(ANY))
        .replace("{key}", "x")
        .replace("{name}", "temperature")
        # A bad id makes the SSE route answer 422 instead of streaming forever.
        .replace("/api/v1/stream", "/api/v1/stream?machine_ids=x")
    )


def test_every_api_route_is_in_the_table(running_app: tuple[FastAPI, object]) -> None:
    app, _ = running_app
    operations = {
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        if path.startswith("/api/v1")
        for method in item
    }
    listed = {(method, path) for method, path, _ in GUARDED}
    assert operations - listed == set(), "add these routes to GUARDED"
    assert listed - operations == set(), "GUARDED lists routes that do not exist"


CASES = [
    (method, path, permission, role)
    for method, path, permission in GUARDED
    if isinstance(permission, Permission)
    for role in Role
]


@pytest.mark.parametrize(
    ("method", "path", "permission", "role"),
    CASES,
    ids=[f"{r}-{m}-{p}" for m, p, _, r in CASES],
)
async def test_role_against_permission(
    client: AsyncClient,
    make_user: UserFactory,
    auth_headers: Headers,
    method: str,
    path: str,
    permission: Permission,
    role: Role,
) -> None:
    user = await make_user(role)
    response = await client.request(method, _concrete(path), headers=auth_headers(user), json={})
    if permission in ROLE_PERMISSIONS[role]:
        # Allowed: whatever the route answers to an empty body, it is not a refusal and not
        # a server error (placeholder ids give 404, an empty body 422, and so on).
        assert response.status_code not in (401, 403), response.text
        assert response.status_code < 500, response.text
    else:
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "PermissionDenied"
        assert str(permission) in response.json()["detail"]


AUTHENTICATED = [(m, p) for m, p, perm in GUARDED if perm is None or isinstance(perm, Permission)]


@pytest.mark.parametrize(("method", "path"), AUTHENTICATED)
async def test_anonymous_is_401(client: AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, _concrete(path), json={})
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "NotAuthenticated"
