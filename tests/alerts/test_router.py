from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from httpx import AsyncClient

from plantpulse.alerts.evaluator import evaluator_of
from plantpulse.auth.permissions import Role
from plantpulse.config import RedisSettings, Settings
from plantpulse.realtime.hub import hub_of
from plantpulse.state import Resources
from tests import support
from tests.alerts.conftest import RuleFactory
from tests.conftest import Headers, MachineFactory, UserFactory, make_settings
from tests.live import eventually, live_app, receive, receive_until

NOW = datetime.now(UTC).replace(microsecond=0)


async def insert_alert(
    pool: asyncpg.Pool, rule_id: uuid.UUID, machine: uuid.UUID, **cols: Any
) -> uuid.UUID:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "rule_id": rule_id,
        "rule_name": "too hot",
        "kind": "threshold",
        "machine_id": machine,
        "metric": "temp",
        "severity": "warning",
        "message": "temp = 90 > 85",
        "value": 90.0,
        "raised_at": NOW,
    }
    values.update(cols)
    names = ", ".join(values)
    params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await pool.execute(f"INSERT INTO alerts ({names}) VALUES ({params})", *values.values())  # noqa: S608
    return uuid.UUID(str(values["id"]))


# Committed fixtures come before `client` in signatures: torn down after the test transaction
# is rolled back, so their DELETEs don't wait on its row locks.


class TestRules:
    async def test_create_read_update_delete(
        self,
        committed_machine: MachineFactory,
        client: AsyncClient,
        make_user: UserFactory,
        auth_headers: Headers,
    ) -> None:
        machine = await committed_machine()
        manager = await make_user(Role.management)
        headers = auth_headers(manager)
        body = {
            "name": "bearing hot",
            "scope": "machine",
            "machine_id": str(machine),
            "metric": "temp",
            "condition": ">=",
            "threshold": 85,
            "duration_seconds": 30,
            "hysteresis": 2,
            "severity": "critical",
        }
        created = await client.post("/api/v1/alert-rules", headers=headers, json=body)
        assert created.status_code == 201, created.text
        rule = created.json()
        assert (rule["created_by"], rule["kind"], rule["enabled"]) == (
            str(manager.id),
            "threshold",
            True,
        )
        supervisor = auth_headers(await make_user(Role.supervisor))
        listed = await client.get(
            "/api/v1/alert-rules", headers=supervisor, params={"machine_id": str(machine)}
        )
        assert [r["id"] for r in listed.json()["items"]] == [rule["id"]]
        patched = await client.patch(
            f"/api/v1/alert-rules/{rule['id']}",
            headers=headers,
            json={"threshold": 90, "enabled": False},
        )
        assert (patched.json()["threshold"], patched.json()["enabled"]) == (90, False)
        deleted = await client.delete(f"/api/v1/alert-rules/{rule['id']}", headers=headers)
        assert deleted.status_code == 204
        missing = await client.get(f"/api/v1/alert-rules/{rule['id']}", headers=headers)
        assert missing.status_code == 404
        assert missing.json()["error"] == "AlertRuleNotFound"

    @pytest.mark.parametrize(
        ("body", "fragment"),
        [
            (
                {"scope": "machine", "metric": "t", "condition": ">", "threshold": 1},
                "machine_id is required",
            ),
            ({"scope": "fleet", "metric": "t", "condition": ">"}, "needs a threshold"),
            ({"scope": "fleet", "condition": ">", "threshold": 1}, "need a metric"),
            (
                {
                    "scope": "fleet",
                    "metric": "t",
                    "condition": "outside",
                    "threshold_low": 5,
                    "threshold_high": 1,
                },
                "threshold_low < threshold_high",
            ),
            (
                {
                    "scope": "fleet",
                    "metric": "t",
                    "condition": "outside",
                    "threshold_low": 0,
                    "threshold_high": 10,
                    "hysteresis": 5,
                },
                "never clears",
            ),
            ({"scope": "fleet", "kind": "no_data"}, "no_data_seconds"),
            ({"scope": "fleet", "metric": "t", "condition": "~", "threshold": 1}, "condition"),
            (
                {
                    "scope": "fleet",
                    "metric": "t",
                    "condition": ">",
                    "threshold": 1,
                    "duration_seconds": -1,
                },
                "duration",
            ),
        ],
    )
    async def test_inconsistent_rules_are_422(
        self,
        client: AsyncClient,
        make_user: UserFactory,
        auth_headers: Headers,
        body: dict[str, Any],
        fragment: str,
    ) -> None:
        headers = auth_headers(await make_user(Role.management))
        response = await client.post(
            "/api/v1/alert-rules", headers=headers, json={"name": "r", **body}
        )
        assert response.status_code == 422, response.text
        assert fragment in response.text

    async def test_a_rule_for_a_missing_machine_is_404(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        headers = auth_headers(await make_user(Role.management))
        body = {
            "name": "r",
            "scope": "machine",
            "machine_id": str(uuid.uuid4()),
            "metric": "t",
            "condition": "<",
            "threshold": 1,
        }
        response = await client.post("/api/v1/alert-rules", headers=headers, json=body)
        assert response.status_code == 404
        assert response.json()["error"] == "MachineNotFound"

    async def test_an_update_that_breaks_the_rule_is_422(
        self,
        committed_rule: RuleFactory,
        client: AsyncClient,
        make_user: UserFactory,
        auth_headers: Headers,
    ) -> None:
        rule = await committed_rule(scope="fleet")
        headers = auth_headers(await make_user(Role.management))
        response = await client.patch(
            f"/api/v1/alert-rules/{rule.id}", headers=headers, json={"condition": "outside"}
        )
        assert response.status_code == 422
        assert response.json()["error"] == "InvalidRule"


class TestAlerts:
    async def test_filters_and_pagination(
        self,
        committed_machine: MachineFactory,
        committed_rule: RuleFactory,
        pg_pool: asyncpg.Pool,
        client: AsyncClient,
        make_user: UserFactory,
        auth_headers: Headers,
    ) -> None:
        machine = await committed_machine()
        rule = await committed_rule(scope="machine", machine_id=machine)
        old = await insert_alert(
            pg_pool,
            rule.id,
            machine,
            raised_at=NOW - timedelta(hours=2),
            cleared_at=NOW - timedelta(hours=1),
        )
        open_ = await insert_alert(pg_pool, rule.id, machine, severity="critical")
        headers = auth_headers(await make_user(Role.operator))

        async def ids(**params: Any) -> list[str]:
            response = await client.get(
                "/api/v1/alerts", headers=headers, params={"machine_id": str(machine), **params}
            )
            assert response.status_code == 200, response.text
            return [a["id"] for a in response.json()["items"]]

        assert await ids() == [str(open_), str(old)]
        assert await ids(active=True) == [str(open_)]
        assert await ids(active=False) == [str(old)]
        assert await ids(severity="critical") == [str(open_)]
        assert await ids(since=(NOW - timedelta(minutes=1)).isoformat()) == [str(open_)]
        assert await ids(until=(NOW - timedelta(minutes=1)).isoformat()) == [str(old)]
        assert await ids(limit=1, offset=1) == [str(old)]
        page = await client.get(
            "/api/v1/alerts", headers=headers, params={"machine_id": str(machine), "limit": 1}
        )
        assert page.json()["total"] == 2

    async def test_acknowledge_records_who_when_and_why_once(
        self,
        committed_machine: MachineFactory,
        committed_rule: RuleFactory,
        pg_pool: asyncpg.Pool,
        client: AsyncClient,
        make_user: UserFactory,
        auth_headers: Headers,
        resources: Resources,
    ) -> None:
        machine = await committed_machine()
        rule = await committed_rule(scope="machine", machine_id=machine)
        alert_id = await insert_alert(pg_pool, rule.id, machine)
        operator = await make_user(Role.operator)
        sub = hub_of(resources).subscriber(include_invalid=False, include_alerts=True)
        sub.subscribe([machine])
        try:
            url = f"/api/v1/alerts/{alert_id}/acknowledge"
            response = await client.post(
                url, headers=auth_headers(operator), json={"comment": "on it"}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["acknowledged_by"], body["ack_comment"]) == (str(operator.id), "on it")
            acknowledged_at = datetime.fromisoformat(body["acknowledged_at"])
            assert abs((acknowledged_at - datetime.now(UTC)).total_seconds()) < 10
            kind, text = sub.queue.get_nowait()
            assert (kind, json.loads(text)["action"]) == ("alert", "acknowledged")
            again = await client.post(url, headers=auth_headers(operator), json={"comment": "x"})
            assert again.status_code == 409
            assert again.json()["error"] == "AlreadyAcknowledged"
        finally:
            sub.close()

    async def test_acknowledging_a_missing_alert_is_404(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        headers = auth_headers(await make_user(Role.operator))
        response = await client.post(f"/api/v1/alerts/{uuid.uuid4()}/acknowledge", headers=headers)
        assert response.status_code == 404


class TestEndToEnd:
    async def test_a_rule_made_over_http_fires_an_alert_event_on_a_socket(
        self,
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
        database_url: str,
        settings: Settings,
        committed_user: UserFactory,
    ) -> None:
        prefix = f"pptest:{support.RUN_ID}:e2e:{uuid.uuid4().hex[:6]}:"
        config = make_settings(
            database_url,
            auth=settings.auth,
            redis=RedisSettings(url=support.REDIS_URL, key_prefix=prefix),
        )
        manager = await committed_user(Role.management)
        machine = await committed_machine()
        async with live_app(config) as live:
            token = live.token(manager)
            body = {
                "name": "hot",
                "scope": "machine",
                "machine_id": str(machine),
                "metric": "temp",
                "condition": ">",
                "threshold": 50,
            }
            async with httpx.AsyncClient(base_url=live.base_url) as http:
                created = await http.post(
                    "/api/v1/alert-rules", json=body, headers={"Authorization": f"Bearer {token}"}
                )
            assert created.status_code == 201
            async with live.connect(token) as ws:
                await receive(ws)
                await ws.send(json.dumps({"action": "subscribe", "machine_ids": [str(machine)]}))
                await receive(ws)

                async def hot() -> None:
                    await live.resources.catalog.known([machine])
                    await live.resources.writer.write(
                        [(datetime.now(UTC), machine, "temp", 60.0)], source="test"
                    )

                # The rule reaches the evaluator after the commit (a background task).
                evaluator = evaluator_of(live.resources)
                await eventually(lambda: evaluator.loaded_rules == 1)
                await hot()
                event = await receive_until(ws, lambda m: m["type"] == "alert")
        assert event["action"] == "raised"
        assert event["alert"]["rule_id"] == created.json()["id"]
        await pg_pool.execute(
            "DELETE FROM alert_rules WHERE id = $1", uuid.UUID(created.json()["id"])
        )


class TestHostileInput:
    """Found by fuzzing the running service: each was a 500."""

    @pytest.mark.parametrize("path", ["/api/v1/alert-rules", "/api/v1/alerts"])
    async def test_offset_beyond_the_database_integer_is_a_422(
        self, path: str, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        headers = auth_headers(await make_user(Role.management))
        response = await client.get(path, params={"offset": 2**63}, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["query", "offset"]

    @pytest.mark.parametrize(
        ("name", "value"),
        [("since", "9999-12-31T23:59:59-14:00"), ("until", "0001-01-01T00:00:00+14:00")],
    )
    async def test_timestamp_outside_the_utc_range_is_a_422(
        self,
        name: str,
        value: str,
        client: AsyncClient,
        make_user: UserFactory,
        auth_headers: Headers,
    ) -> None:
        headers = auth_headers(await make_user(Role.operator))
        response = await client.get("/api/v1/alerts", params={name: value}, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["query", name]

    @pytest.mark.parametrize("field", ["name", "description", "metric"])
    async def test_nul_in_a_rule_text_is_a_422(
        self, field: str, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        headers = auth_headers(await make_user(Role.management))
        body = {"name": "hot", "scope": "fleet", "metric": "temp", "condition": ">", "threshold": 1}
        body[field] = "te\x00mp"
        response = await client.post("/api/v1/alert-rules", json=body, headers=headers)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["body", field]
        patched = await client.patch(
            f"/api/v1/alert-rules/{uuid.uuid4()}", json={field: "a\x00"}, headers=headers
        )
        assert patched.status_code == 422, patched.text

    @pytest.mark.parametrize(
        "field", ["name", "enabled", "scope", "severity", "duration_seconds", "hysteresis"]
    )
    async def test_null_for_a_field_that_cannot_be_cleared_is_a_422(
        self,
        field: str,
        committed_rule: RuleFactory,
        client: AsyncClient,
        make_user: UserFactory,
        auth_headers: Headers,
    ) -> None:
        rule = await committed_rule(scope="fleet")
        headers = auth_headers(await make_user(Role.management))
        response = await client.patch(
            f"/api/v1/alert-rules/{rule.id}", json={field: None}, headers=headers
        )
        assert response.status_code == 422, response.text
        assert f"{field} cannot be null" in response.json()["detail"]

    async def test_nul_in_an_acknowledgement_comment_is_a_422(
        self,
        committed_machine: MachineFactory,
        committed_rule: RuleFactory,
        pg_pool: asyncpg.Pool,
        client: AsyncClient,
        make_user: UserFactory,
        auth_headers: Headers,
    ) -> None:
        machine = await committed_machine()
        rule = await committed_rule(scope="machine", machine_id=machine)
        alert_id = await insert_alert(pg_pool, rule.id, machine)
        headers = auth_headers(await make_user(Role.operator))
        response = await client.post(
            f"/api/v1/alerts/{alert_id}/acknowledge", json={"comment": "on\x00it"}, headers=headers
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["body", "comment"]
