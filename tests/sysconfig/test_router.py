from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from httpx import AsyncClient

from plantpulse.auth.permissions import Role
from plantpulse.config import RedisSettings, Settings, SysconfigSettings
from plantpulse.state import Resources
from plantpulse.sysconfig.retention import purge_old_readings
from tests import support
from tests.conftest import Headers, MachineFactory, UserFactory, make_settings
from tests.live import eventually, live_app


@pytest.fixture
async def restore_live(resources: Resources) -> AsyncIterator[None]:
    """Requests here are rolled back, but what they applied to resources.live is not."""
    before = dict(vars(resources.live))
    yield
    for key, value in before.items():
        setattr(resources.live, key, value)


class TestReading:
    async def test_lists_every_key_with_value_default_and_type(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        user = await make_user(Role.supervisor)
        response = await client.get("/api/v1/config", headers=auth_headers(user))
        assert response.status_code == 200
        entries = {e["key"]: e for e in response.json()}
        assert set(entries) == {
            "future_skew_seconds",
            "auto_register_machines",
            "backfill_window_seconds",
            "retention_days",
            "rollup_1m_retention_days",
            "rollup_1h_retention_days",
        }
        skew = entries["future_skew_seconds"]
        assert skew["value"] == skew["default"] == 300.0
        assert skew["updated_by"] is None
        assert "future" in skew["description"]

    async def test_unknown_key_is_404(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        user = await make_user(Role.management)
        response = await client.get("/api/v1/config/nope", headers=auth_headers(user))
        assert response.status_code == 404
        assert response.json()["error"] == "UnknownConfigKey"


@pytest.mark.usefixtures("restore_live")
class TestChanging:
    async def test_supervisor_may_read_but_not_change(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        user = await make_user(Role.supervisor)
        response = await client.put(
            "/api/v1/config/future_skew_seconds", headers=auth_headers(user), json={"value": 5}
        )
        assert response.status_code == 403
        assert "config:write" in response.json()["detail"]

    async def test_change_applies_at_once_and_is_audited(
        self,
        client: AsyncClient,
        make_user: UserFactory,
        auth_headers: Headers,
        resources: Resources,
    ) -> None:
        user = await make_user(Role.management)
        headers = auth_headers(user)
        response = await client.put(
            "/api/v1/config/future_skew_seconds", headers=headers, json={"value": 12.5}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["value"], body["default"]) == (12.5, 300.0)
        assert body["updated_by"] == str(user.id)
        assert body["updated_at"].endswith("Z")
        assert resources.live.future_skew_seconds == 12.5
        await client.put("/api/v1/config/future_skew_seconds", headers=headers, json={"value": 60})
        audit = await client.get(
            "/api/v1/config/audit", headers=headers, params={"key": "future_skew_seconds"}
        )
        changes = [(a["old_value"], a["new_value"]) for a in audit.json()["items"]]
        assert changes == [(12.5, 60.0), (300.0, 12.5)]
        assert audit.json()["items"][0]["changed_by"] == str(user.id)

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("future_skew_seconds", -1),
            ("future_skew_seconds", 86_401),
            ("future_skew_seconds", "10"),
            ("future_skew_seconds", True),
            ("auto_register_machines", "yes"),
            ("auto_register_machines", 1),
            ("retention_days", 0),
            ("retention_days", 1.5),
            ("backfill_window_seconds", None),
        ],
    )
    async def test_values_are_validated_per_key(
        self,
        client: AsyncClient,
        make_user: UserFactory,
        auth_headers: Headers,
        resources: Resources,
        key: str,
        value: object,
    ) -> None:
        user = await make_user(Role.management)
        before = getattr(resources.live, key)
        response = await client.put(
            f"/api/v1/config/{key}", headers=auth_headers(user), json={"value": value}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "InvalidConfigValue"
        assert getattr(resources.live, key) == before

    async def test_retention_may_be_switched_off_with_null(
        self,
        client: AsyncClient,
        make_user: UserFactory,
        auth_headers: Headers,
        resources: Resources,
    ) -> None:
        headers = auth_headers(await make_user(Role.management))
        await client.put("/api/v1/config/retention_days", headers=headers, json={"value": 30})
        assert resources.live.retention_days == 30
        response = await client.put(
            "/api/v1/config/retention_days", headers=headers, json={"value": None}
        )
        assert response.status_code == 200
        assert resources.live.retention_days is None

    async def test_missing_value_is_422(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        headers = auth_headers(await make_user(Role.management))
        response = await client.put("/api/v1/config/retention_days", headers=headers, json={})
        assert response.status_code == 422
        assert response.json()["error"] == "ValidationError"


@pytest.fixture
async def clean_config(pg_pool: asyncpg.Pool) -> AsyncIterator[None]:
    yield
    await pg_pool.execute("DELETE FROM config_audit WHERE key = 'future_skew_seconds'")
    await pg_pool.execute("DELETE FROM system_config WHERE key = 'future_skew_seconds'")


@pytest.mark.usefixtures("clean_config")
class TestAcrossProcesses:
    async def test_a_change_reaches_the_other_process_through_redis(
        self, database_url: str, settings: Settings, committed_user: UserFactory
    ) -> None:
        prefix = f"pptest:{support.RUN_ID}:cfg:{uuid.uuid4().hex[:6]}:"
        config = make_settings(
            database_url,
            auth=settings.auth,
            redis=RedisSettings(url=support.REDIS_URL, key_prefix=prefix),
        )
        user = await committed_user(Role.management)
        async with live_app(config) as first, live_app(config) as second:
            headers = {"Authorization": f"Bearer {first.token(user)}"}
            async with httpx.AsyncClient(base_url=first.base_url) as http:
                response = await http.put(
                    "/api/v1/config/future_skew_seconds", headers=headers, json={"value": 42}
                )
            assert response.status_code == 200, response.text
            assert first.resources.live.future_skew_seconds == 42
            await eventually(lambda: second.resources.live.future_skew_seconds == 42)
            # A process started later reads the stored value.
            async with live_app(config) as third:
                assert third.resources.live.future_skew_seconds == 42

    async def test_without_redis_processes_reload_periodically(
        self, database_url: str, settings: Settings, pg_pool: asyncpg.Pool
    ) -> None:
        config = make_settings(
            database_url,
            auth=settings.auth,
            redis=RedisSettings(url=None),
            sysconfig=SysconfigSettings(reload_seconds=0.1),
        )
        async with live_app(config) as app:
            assert app.resources.live.future_skew_seconds == 300.0
            await pg_pool.execute(
                "INSERT INTO system_config (key, value) VALUES ('future_skew_seconds', '7')"
            )
            await eventually(lambda: app.resources.live.future_skew_seconds == 7.0)


class TestRetention:
    async def test_old_readings_are_removed_recent_ones_kept(
        self, pg_pool: asyncpg.Pool, committed_machine: MachineFactory, resources: Resources
    ) -> None:
        machine = await committed_machine()
        now = datetime.now(UTC)
        await pg_pool.executemany(
            "INSERT INTO readings (time, machine_id, metric, value) VALUES ($1, $2, 'temp', 1)",
            [(now - timedelta(days=d), machine) for d in (30, 20, 1, 0)],
        )
        await purge_old_readings(pg_pool, days=10, timescale=resources.timescale)
        left = await pg_pool.fetchval(
            "SELECT count(*) FROM readings WHERE machine_id = $1", machine
        )
        assert left == 2


class TestHostileQueries:
    async def test_audit_offset_beyond_the_database_integer_is_a_422(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        # Found by fuzzing the running service: it was a 500.
        user = await make_user(Role.supervisor)
        response = await client.get(
            "/api/v1/config/audit", params={"offset": 2**70}, headers=auth_headers(user)
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["query", "offset"]
