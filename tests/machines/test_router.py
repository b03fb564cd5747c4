from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse.machines import service
from plantpulse.machines.dependencies import get_sender
from plantpulse.state import Resources
from tests.conftest import MachineFactory
from tests.machines.conftest import CommittedClient, MachineMaker, add_readings, count_readings

API = "/api/v1/machines"
NOW = datetime.now(UTC)


def assert_error(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["error"] == error
    assert body["detail"]
    return body


class TestCreateMachine:
    async def test_supervisor_registers_a_machine(
        self, client: AsyncClient, supervisor: dict[str, str]
    ) -> None:
        response = await client.post(
            API,
            headers=supervisor,
            json={
                "name": "  Press-7 ",
                "location": "Factory A",
                "sensor_type": "Temperature",
                "description": "hydraulic press",
                "tags": ["hydraulic", "line-2", "hydraulic"],
                "labels": {"vendor": "ACME"},
            },
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert response.headers["location"] == f"{API}/{body['id']}"
        assert body["name"] == "Press-7"
        assert body["status"] == "active"
        assert body["connectivity"] == "unknown"
        assert body["tags"] == ["hydraulic", "line-2"]
        assert body["labels"] == {"vendor": "ACME"}
        assert body["groups"] == []
        assert body["has_api_key"] is False
        assert body["last_seen_at"] is None
        assert body["created_at"].endswith("Z")
        assert "api_key_hash" not in body
        assert "api_key_prefix" not in body

    async def test_a_device_can_be_registered_under_its_own_id(
        self, client: AsyncClient, supervisor: dict[str, str]
    ) -> None:
        machine_id = uuid.uuid4()
        response = await client.post(
            API, headers=supervisor, json={"id": str(machine_id), "name": "gateway-device"}
        )
        assert response.status_code == 201, response.text
        assert response.json()["id"] == str(machine_id)
        again = await client.post(
            API, headers=supervisor, json={"id": str(machine_id), "name": "another"}
        )
        assert_error(again, 409, "MachineExists")

    async def test_duplicate_name_is_409(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        await make_machine("Press-1")
        response = await client.post(API, headers=supervisor, json={"name": "Press-1"})
        body = assert_error(response, 409, "MachineExists")
        assert "Press-1" in body["detail"]

    @pytest.mark.parametrize(
        ("payload", "field"),
        [
            ({}, "name"),
            ({"name": ""}, "name"),
            ({"name": "   "}, "name"),
            ({"name": "x" * 129}, "name"),
            ({"name": "nul\x00byte"}, "name"),
            ({"name": "ok", "status": "broken"}, "status"),
            ({"name": "ok", "tags": ["t"] * 33}, "tags"),
            ({"name": "ok", "tags": ["x" * 65]}, "tags"),
            ({"name": "ok", "tags": [""]}, "tags"),
            ({"name": "ok", "labels": {f"k{i}": "v" for i in range(65)}}, "labels"),
            ({"name": "ok", "labels": {"k": 1}}, "labels"),
            ({"name": "ok", "labels": {"k": {"nested": "v"}}}, "labels"),
            ({"name": "ok", "labels": {"": "v"}}, "labels"),
            ({"name": "ok", "location": "x" * 129}, "location"),
            ({"name": "ok", "sensor_type": "x" * 65}, "sensor_type"),
            ({"name": "ok", "id": "not-a-uuid"}, "id"),
            ({"name": "ok", "colour": "red"}, "colour"),
            ({"name": ["a list"]}, "name"),
        ],
    )
    async def test_invalid_input_is_422_with_field_detail(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        payload: dict[str, Any],
        field: str,
    ) -> None:
        body = assert_error(
            await client.post(API, headers=supervisor, json=payload), 422, "ValidationError"
        )
        assert any(field in error["loc"] for error in body["errors"]), body

    async def test_malformed_json_and_lone_surrogates_are_422(
        self, client: AsyncClient, supervisor: dict[str, str]
    ) -> None:
        headers = {**supervisor, "Content-Type": "application/json"}
        for raw in ('{"name": ', '{"name": "\\ud800"}', "[]", "null"):
            response = await client.post(API, headers=headers, content=raw)
            assert_error(response, 422, "ValidationError")

    async def test_operator_cannot_create(
        self, client: AsyncClient, operator: dict[str, str]
    ) -> None:
        response = await client.post(API, headers=operator, json={"name": "nope"})
        assert_error(response, 403, "PermissionDenied")


class TestListMachines:
    @pytest.fixture
    async def fleet(self, make_machine: MachineMaker, db: AsyncSession) -> dict[str, uuid.UUID]:
        specs: list[dict[str, Any]] = [
            {"name": "Alpha-press", "location": "Factory A", "sensor_type": "Temperature",
             "tags": ["hydraulic", "line-1"]},
            {"name": "beta_100%", "location": "Factory A", "sensor_type": "Vibration",
             "status": "maintenance", "tags": ["line-1"]},
            {"name": "Gamma", "location": "Factory B", "sensor_type": "Temperature",
             "status": "error", "tags": ["hydraulic"]},
            {"name": "delta", "sensor_type": "Pressure", "status": "inactive"},
        ]  # fmt: skip
        ids = {}
        for spec in specs:
            machine = await make_machine(**spec)
            ids[machine.name] = machine.id
        # Distinct created_at and last_seen_at, in a known order.
        base = datetime(2024, 1, 1, tzinfo=UTC)
        order = ["delta", "Gamma", "Alpha-press", "beta_100%"]
        for i, name in enumerate(order):
            await db.execute(
                text("UPDATE machines SET created_at = :t WHERE id = :id"),
                {"t": base + timedelta(days=i), "id": ids[name]},
            )
        for i, name in enumerate(["Gamma", "beta_100%"]):
            await db.execute(
                text("UPDATE machines SET last_seen_at = :t WHERE id = :id"),
                {"t": base + timedelta(hours=i), "id": ids[name]},
            )
        db.expire_all()
        return ids

    async def names(self, client: AsyncClient, headers: dict[str, str], **params: Any) -> list[str]:
        response = await client.get(API, headers=headers, params=params)
        assert response.status_code == 200, response.text
        return [item["name"] for item in response.json()["items"]]

    async def test_operator_lists_all_by_name(
        self, client: AsyncClient, operator: dict[str, str], fleet: dict[str, uuid.UUID]
    ) -> None:
        response = await client.get(API, headers=operator)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == 4
        assert (body["limit"], body["offset"]) == (50, 0)
        assert [i["name"] for i in body["items"]] == ["Alpha-press", "Gamma", "beta_100%", "delta"]
        assert "groups" not in body["items"][0]

    async def test_filters(
        self, client: AsyncClient, operator: dict[str, str], fleet: dict[str, uuid.UUID]
    ) -> None:
        h = operator
        assert await self.names(client, h, location="Factory A") == ["Alpha-press", "beta_100%"]
        assert await self.names(client, h, status="error") == ["Gamma"]
        assert await self.names(client, h, status=["error", "inactive"]) == ["Gamma", "delta"]
        assert await self.names(client, h, sensor_type="Temperature") == ["Alpha-press", "Gamma"]
        assert await self.names(client, h, tag="hydraulic") == ["Alpha-press", "Gamma"]
        assert await self.names(client, h, tag=["hydraulic", "line-1"]) == ["Alpha-press"]
        assert await self.names(client, h, location="Factory A", status="maintenance") == [
            "beta_100%"
        ]
        assert await self.names(client, h, location="Nowhere") == []

    async def test_name_search_is_case_insensitive_and_literal(
        self, client: AsyncClient, operator: dict[str, str], fleet: dict[str, uuid.UUID]
    ) -> None:
        assert await self.names(client, operator, q="ALPHA") == ["Alpha-press"]
        assert await self.names(client, operator, q="a") == [
            "Alpha-press",
            "Gamma",
            "beta_100%",
            "delta",
        ]
        # % and _ are searched for, not wildcards.
        assert await self.names(client, operator, q="100%") == ["beta_100%"]
        assert await self.names(client, operator, q="_") == ["beta_100%"]
        assert await self.names(client, operator, q="%") == ["beta_100%"]

    @pytest.mark.parametrize(
        ("sort", "expected"),
        [
            ("name", ["Alpha-press", "Gamma", "beta_100%", "delta"]),
            ("-name", ["delta", "beta_100%", "Gamma", "Alpha-press"]),
            ("created_at", ["delta", "Gamma", "Alpha-press", "beta_100%"]),
            ("-created_at", ["beta_100%", "Alpha-press", "Gamma", "delta"]),
            ("last_seen_at", ["Gamma", "beta_100%", "Alpha-press", "delta"]),
            ("-last_seen_at", ["beta_100%", "Gamma", "Alpha-press", "delta"]),
            ("status", ["Alpha-press", "delta", "beta_100%", "Gamma"]),
            ("-status", ["Gamma", "beta_100%", "delta", "Alpha-press"]),
        ],
    )
    async def test_sorting(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        fleet: dict[str, uuid.UUID],
        sort: str,
        expected: list[str],
    ) -> None:
        assert await self.names(client, operator, sort=sort) == expected

    async def test_pages_carry_the_total(
        self, client: AsyncClient, operator: dict[str, str], fleet: dict[str, uuid.UUID]
    ) -> None:
        seen = []
        for offset in (0, 3):
            response = await client.get(
                API, headers=operator, params={"limit": 3, "offset": offset, "sort": "-name"}
            )
            body = response.json()
            assert body["total"] == 4
            assert (body["limit"], body["offset"]) == (3, offset)
            seen += [item["name"] for item in body["items"]]
        assert seen == ["delta", "beta_100%", "Gamma", "Alpha-press"]
        response = await client.get(API, headers=operator, params={"offset": 10})
        assert response.json()["items"] == []
        assert response.json()["total"] == 4

    @pytest.mark.parametrize(
        "params",
        [
            {"sort": "colour"},
            {"status": "broken"},
            {"limit": 0},
            {"limit": 1001},
            {"offset": -1},
            {"offset": 10**20},
            {"q": "x" * 129},
            {"q": "nul\x00"},
            {"location": "nul\x00"},
            {"tag": "nul\x00"},
            {"group": "nul\x00"},
        ],
    )
    async def test_bad_parameters_are_422(
        self, client: AsyncClient, operator: dict[str, str], params: dict[str, Any]
    ) -> None:
        response = await client.get(API, headers=operator, params=params)
        assert_error(response, 422, "ValidationError")


class TestGetMachine:
    async def test_includes_groups_and_connectivity(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        supervisor: dict[str, str],
        make_machine: MachineMaker,
    ) -> None:
        machine = await make_machine("Press-1")
        for name in ("Line 2", "Hall A"):
            response = await client.post(
                "/api/v1/groups",
                headers=supervisor,
                json={"name": name, "machine_ids": [str(machine.id)]},
            )
            assert response.status_code == 201, response.text
        response = await client.get(f"{API}/{machine.id}", headers=operator)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == str(machine.id)
        assert body["connectivity"] == "unknown"
        assert [g["name"] for g in body["groups"]] == ["Hall A", "Line 2"]

    async def test_unknown_machine_is_404(
        self, client: AsyncClient, operator: dict[str, str]
    ) -> None:
        missing = uuid.uuid4()
        body = assert_error(
            await client.get(f"{API}/{missing}", headers=operator), 404, "MachineNotFound"
        )
        assert str(missing) in body["detail"]

    async def test_malformed_id_is_422(self, client: AsyncClient, operator: dict[str, str]) -> None:
        assert_error(
            await client.get(f"{API}/not-a-uuid", headers=operator), 422, "ValidationError"
        )


class TestUpdateMachine:
    async def test_changes_only_the_given_fields(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        machine = await make_machine(
            "Press-1", location="Factory A", sensor_type="Temperature", tags=["a"]
        )
        before = machine.updated_at
        response = await client.patch(
            f"{API}/{machine.id}",
            headers=supervisor,
            json={"description": "rebuilt 2024", "location": None, "labels": {"line": "2"}},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["name"] == "Press-1"
        assert body["sensor_type"] == "Temperature"
        assert body["tags"] == ["a"]
        assert body["location"] is None
        assert body["description"] == "rebuilt 2024"
        assert body["labels"] == {"line": "2"}
        assert datetime.fromisoformat(body["updated_at"]) >= before

    async def test_renaming_to_a_taken_name_is_409(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        await make_machine("Press-1")
        other = await make_machine("Press-2")
        response = await client.patch(
            f"{API}/{other.id}", headers=supervisor, json={"name": "Press-1"}
        )
        assert_error(response, 409, "MachineExists")
        # Keeping its own name is not a clash.
        response = await client.patch(
            f"{API}/{other.id}", headers=supervisor, json={"name": "Press-2"}
        )
        assert response.status_code == 200, response.text

    @pytest.mark.parametrize(
        "payload",
        [
            {"name": None},
            {"status": None},
            {"tags": None},
            {"labels": None},
            {"name": ""},
            {"tags": ["t"] * 33},
            {"unknown": 1},
        ],
    )
    async def test_invalid_updates_are_422(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        make_machine: MachineMaker,
        payload: dict[str, Any],
    ) -> None:
        machine = await make_machine()
        response = await client.patch(f"{API}/{machine.id}", headers=supervisor, json=payload)
        assert_error(response, 422, "ValidationError")

    async def test_unknown_machine_is_404(
        self, client: AsyncClient, supervisor: dict[str, str]
    ) -> None:
        response = await client.patch(f"{API}/{uuid.uuid4()}", headers=supervisor, json={})
        assert_error(response, 404, "MachineNotFound")


class TestMachineStatus:
    async def test_sets_status(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        machine = await make_machine()
        response = await client.patch(
            f"{API}/{machine.id}/status", headers=supervisor, json={"status": "maintenance"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "maintenance"
        listed = await client.get(API, headers=supervisor, params={"status": "maintenance"})
        assert [m["id"] for m in listed.json()["items"]] == [str(machine.id)]

    @pytest.mark.parametrize("payload", [{}, {"status": "exploded"}, {"status": None}])
    async def test_invalid_status_is_422(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        make_machine: MachineMaker,
        payload: dict[str, Any],
    ) -> None:
        machine = await make_machine()
        response = await client.patch(
            f"{API}/{machine.id}/status", headers=supervisor, json=payload
        )
        assert_error(response, 422, "ValidationError")

    async def test_unknown_machine_is_404(
        self, client: AsyncClient, supervisor: dict[str, str]
    ) -> None:
        response = await client.patch(
            f"{API}/{uuid.uuid4()}/status", headers=supervisor, json={"status": "active"}
        )
        assert_error(response, 404, "MachineNotFound")


class TestDeleteMachine:
    async def test_deletes_the_machine_its_metrics_memberships_and_readings(
        self,
        client: AsyncClient,
        db: AsyncSession,
        manager: dict[str, str],
        make_machine: MachineMaker,
    ) -> None:
        doomed = await make_machine("doomed")
        kept = await make_machine("kept")
        times = [NOW - timedelta(minutes=i) for i in range(5)]
        await add_readings(db, doomed.id, times)
        await add_readings(db, kept.id, times)
        await db.execute(
            text("INSERT INTO machine_metrics (machine_id, name) VALUES (:m, 'temp')"),
            {"m": doomed.id},
        )
        group = await client.post(
            "/api/v1/groups",
            headers=manager,
            json={"name": "line", "machine_ids": [str(doomed.id), str(kept.id)]},
        )
        group_id = group.json()["id"]

        response = await client.delete(f"{API}/{doomed.id}", headers=manager)
        assert response.status_code == 204, response.text
        assert response.content == b""

        assert await count_readings(db, doomed.id) == 0
        assert await count_readings(db, kept.id) == 5
        metrics = await db.scalar(
            text("SELECT count(*) FROM machine_metrics WHERE machine_id = :m"), {"m": doomed.id}
        )
        assert metrics == 0
        assert_error(
            await client.get(f"{API}/{doomed.id}", headers=manager), 404, "MachineNotFound"
        )
        members = (await client.get(f"/api/v1/groups/{group_id}", headers=manager)).json()
        assert [m["name"] for m in members["machines"]] == ["kept"]

    async def test_deleting_twice_is_404(
        self, client: AsyncClient, manager: dict[str, str], make_machine: MachineMaker
    ) -> None:
        machine = await make_machine()
        assert (await client.delete(f"{API}/{machine.id}", headers=manager)).status_code == 204
        assert_error(
            await client.delete(f"{API}/{machine.id}", headers=manager), 404, "MachineNotFound"
        )

    async def test_supervisor_cannot_delete(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        machine = await make_machine()
        response = await client.delete(f"{API}/{machine.id}", headers=supervisor)
        body = assert_error(response, 403, "PermissionDenied")
        assert "machines:delete" in body["detail"]


class TestApiKey:
    async def test_issued_key_authenticates_its_machine(
        self,
        client: AsyncClient,
        db: AsyncSession,
        resources: Resources,
        supervisor: dict[str, str],
        make_machine: MachineMaker,
    ) -> None:
        machine = await make_machine()
        response = await client.post(f"{API}/{machine.id}/api-key", headers=supervisor)
        assert response.status_code == 201, response.text
        body = response.json()
        key = body["api_key"]
        assert key.startswith("pp_")
        assert body["machine_id"] == str(machine.id)
        assert body["created_at"].endswith("Z")

        assert (await service.machine_for_api_key(db, key)).id == machine.id
        sender = await get_sender(db, resources, None, key)
        assert sender.machine_id == machine.id
        assert sender.may_send_for(machine.id)
        assert not sender.may_send_for(uuid.uuid4())

        detail = (await client.get(f"{API}/{machine.id}", headers=supervisor)).json()
        assert detail["has_api_key"] is True
        assert detail["api_key_created_at"] == body["created_at"]
        assert key not in str(detail)

    async def test_rotation_invalidates_the_previous_key(
        self,
        client: AsyncClient,
        db: AsyncSession,
        resources: Resources,
        supervisor: dict[str, str],
        make_machine: MachineMaker,
    ) -> None:
        machine = await make_machine()
        first = (await client.post(f"{API}/{machine.id}/api-key", headers=supervisor)).json()
        second = (await client.post(f"{API}/{machine.id}/api-key", headers=supervisor)).json()
        assert first["api_key"] != second["api_key"]
        with pytest.raises(service.InvalidApiKey):
            await service.machine_for_api_key(db, first["api_key"])
        with pytest.raises(service.InvalidApiKey):
            await get_sender(db, resources, None, first["api_key"])
        assert (await service.machine_for_api_key(db, second["api_key"])).id == machine.id

    @pytest.mark.parametrize("key", ["", "garbage", "pp_zzzzzzzz_x", "pp_1234_short"])
    async def test_malformed_keys_are_rejected(self, db: AsyncSession, key: str) -> None:
        with pytest.raises(service.InvalidApiKey):
            await service.machine_for_api_key(db, key)

    async def test_unknown_machine_is_404(
        self, client: AsyncClient, supervisor: dict[str, str]
    ) -> None:
        response = await client.post(f"{API}/{uuid.uuid4()}/api-key", headers=supervisor)
        assert_error(response, 404, "MachineNotFound")

    async def test_operator_cannot_issue_keys(
        self, client: AsyncClient, operator: dict[str, str], make_machine: MachineMaker
    ) -> None:
        machine = await make_machine()
        response = await client.post(f"{API}/{machine.id}/api-key", headers=operator)
        assert_error(response, 403, "PermissionDenied")


async def add_metric(db: AsyncSession, machine_id: uuid.UUID, name: str, **values: Any) -> None:
    columns = ", ".join(["machine_id", "name", *values])
    params = ", ".join([":machine_id", ":name", *(f":{k}" for k in values)])
    await db.execute(
        text(f"INSERT INTO machine_metrics ({columns}) VALUES ({params})"),  # noqa: S608
        {"machine_id": machine_id, "name": name, **values},
    )


class TestMetrics:
    async def test_lists_the_catalogue_by_name(
        self,
        client: AsyncClient,
        db: AsyncSession,
        operator: dict[str, str],
        make_machine: MachineMaker,
    ) -> None:
        machine = await make_machine()
        await add_metric(db, machine.id, "temperature", unit="°C", min_value=-20.0)
        await add_metric(db, machine.id, "pressure")
        response = await client.get(f"{API}/{machine.id}/metrics", headers=operator)
        assert response.status_code == 200, response.text
        body = response.json()
        assert [m["name"] for m in body] == ["pressure", "temperature"]
        assert body[1]["unit"] == "°C"
        assert body[1]["min_value"] == -20.0
        assert body[1]["max_value"] is None

    async def test_edits_unit_and_range(
        self,
        client: AsyncClient,
        db: AsyncSession,
        supervisor: dict[str, str],
        make_machine: MachineMaker,
    ) -> None:
        machine = await make_machine()
        await add_metric(db, machine.id, "temperature", unit="F", description="probe")
        url = f"{API}/{machine.id}/metrics/temperature"
        response = await client.patch(
            url, headers=supervisor, json={"unit": "°C", "min_value": -20, "max_value": 150}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["unit"], body["description"]) == ("°C", "probe")
        assert (body["min_value"], body["max_value"]) == (-20.0, 150.0)
        # null removes a bound; min == max is allowed.
        response = await client.patch(url, headers=supervisor, json={"max_value": None})
        assert (response.json()["min_value"], response.json()["max_value"]) == (-20.0, None)
        response = await client.patch(url, headers=supervisor, json={"max_value": -20})
        assert response.status_code == 200, response.text

    async def test_min_above_max_is_422(
        self,
        client: AsyncClient,
        db: AsyncSession,
        supervisor: dict[str, str],
        make_machine: MachineMaker,
    ) -> None:
        machine = await make_machine()
        await add_metric(db, machine.id, "temp", min_value=0.0, max_value=100.0)
        url = f"{API}/{machine.id}/metrics/temp"
        both = await client.patch(url, headers=supervisor, json={"min_value": 5, "max_value": 1})
        assert_error(both, 422, "ValidationError")
        # Against the stored bound too.
        one = await client.patch(url, headers=supervisor, json={"min_value": 101})
        body = assert_error(one, 422, "InvalidRange")
        assert "101" in body["detail"]

    @pytest.mark.parametrize(
        "raw",
        [
            '{"min_value": NaN}',
            '{"max_value": Infinity}',
            '{"min_value": 1e400}',
            '{"min_value": "low"}',
            '{"min_value": true}',
            '{"unit": ""}',
            '{"unit": "' + "x" * 33 + '"}',
            '{"colour": "red"}',
        ],
    )
    async def test_invalid_edits_are_422(
        self,
        client: AsyncClient,
        db: AsyncSession,
        supervisor: dict[str, str],
        make_machine: MachineMaker,
        raw: str,
    ) -> None:
        machine = await make_machine()
        await add_metric(db, machine.id, "temp")
        response = await client.patch(
            f"{API}/{machine.id}/metrics/temp",
            headers={**supervisor, "Content-Type": "application/json"},
            content=raw,
        )
        assert_error(response, 422, "ValidationError")

    async def test_unknown_metric_and_machine_are_404(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        machine = await make_machine()
        response = await client.patch(
            f"{API}/{machine.id}/metrics/nope", headers=supervisor, json={"unit": "V"}
        )
        body = assert_error(response, 404, "MetricNotFound")
        assert "nope" in body["detail"]
        response = await client.patch(
            f"{API}/{uuid.uuid4()}/metrics/nope", headers=supervisor, json={"unit": "V"}
        )
        assert_error(response, 404, "MachineNotFound")
        response = await client.get(f"{API}/{uuid.uuid4()}/metrics", headers=supervisor)
        assert_error(response, 404, "MachineNotFound")

    async def test_invalid_metric_name_is_422(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        machine = await make_machine()
        for name in ("-dash-first", "sp%20ace", "x" * 65, "nul%00"):
            response = await client.put(
                f"{API}/{machine.id}/metrics/{name}", headers=supervisor, json={}
            )
            assert_error(response, 422, "ValidationError")

    async def test_put_defines_a_metric_ahead_of_its_first_reading(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        machine = await make_machine()
        url = f"{API}/{machine.id}/metrics/rpm"
        response = await client.put(
            url, headers=supervisor, json={"unit": "1/min", "min_value": 0, "max_value": 3000}
        )
        assert response.status_code == 201, response.text
        assert response.json()["max_value"] == 3000.0
        # PUT replaces the whole definition: omitted fields become null.
        response = await client.put(url, headers=supervisor, json={"max_value": 6000})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["unit"], body["min_value"], body["max_value"]) == (None, None, 6000.0)
        listed = await client.get(f"{API}/{machine.id}/metrics", headers=supervisor)
        assert [m["name"] for m in listed.json()] == ["rpm"]
        response = await client.put(url, headers=supervisor, json={"min_value": 2, "max_value": 1})
        assert_error(response, 422, "ValidationError")

    async def test_operator_cannot_edit(
        self,
        client: AsyncClient,
        db: AsyncSession,
        operator: dict[str, str],
        make_machine: MachineMaker,
    ) -> None:
        machine = await make_machine()
        await add_metric(db, machine.id, "temp")
        response = await client.patch(
            f"{API}/{machine.id}/metrics/temp", headers=operator, json={"unit": "K"}
        )
        assert_error(response, 403, "PermissionDenied")


class TestStats:
    async def test_counts_by_status_location_recent_machines_and_readings(
        self,
        client: AsyncClient,
        db: AsyncSession,
        operator: dict[str, str],
        make_machine: MachineMaker,
    ) -> None:
        before = (await client.get(f"{API}/stats", headers=operator)).json()
        a = await make_machine(location="stats-hall-1")
        await make_machine(location="stats-hall-1", status="error")
        await make_machine(location="stats-hall-2", status="maintenance")
        await db.execute(
            text("UPDATE machines SET last_seen_at = now() - interval '1 minute' WHERE id = :m"),
            {"m": a.id},
        )
        # Well inside and outside the hour, so a slow run can't move them across its edge.
        now = datetime.now(UTC)
        await add_readings(
            db,
            a.id,
            [now - timedelta(minutes=10), now - timedelta(minutes=45), now - timedelta(hours=2)],
        )
        response = await client.get(f"{API}/stats", headers=operator)
        assert response.status_code == 200, response.text
        after = response.json()
        assert after["total"] - before["total"] == 3
        assert set(after["by_status"]) == {"active", "inactive", "maintenance", "error"}
        delta = {s: after["by_status"][s] - before["by_status"][s] for s in after["by_status"]}
        assert delta == {"active": 1, "inactive": 0, "maintenance": 1, "error": 1}
        locations = {row["location"]: row["count"] for row in after["by_location"]}
        assert locations["stats-hall-1"] == 2
        assert locations["stats-hall-2"] == 1
        counts = [row["count"] for row in after["by_location"]]
        assert counts == sorted(counts, reverse=True)
        assert after["seen_last_5_minutes"] - before["seen_last_5_minutes"] == 1
        # Event time: the reading from two hours ago does not count.
        assert after["readings_last_hour"] - before["readings_last_hour"] == 2

    async def test_stats_is_not_a_machine_id(
        self, client: AsyncClient, operator: dict[str, str]
    ) -> None:
        response = await client.get(f"{API}/stats", headers=operator)
        assert response.status_code == 200, response.text
        assert "total" in response.json()


class TestCatalogInvalidation:
    """The ingest path caches metric ranges and machine ids; edits through the API take effect
    at once. Runs against committed data, as the writer commits on its own connection."""

    async def test_a_new_range_applies_to_the_next_write(
        self,
        committed_client: CommittedClient,
        committed_machine: MachineFactory,
        resources: Resources,
        pg_pool: asyncpg.Pool,
    ) -> None:
        machine_id = await committed_machine()
        t0 = datetime(2024, 1, 15, 10, tzinfo=UTC)
        await resources.catalog.known([machine_id])
        await resources.writer.write([(t0, machine_id, "temp", 150.0)], source="test")
        # Discovered with no range: cached as unbounded.
        assert resources.catalog.metrics(machine_id)["temp"] == (None, None)

        response = await committed_client.client.patch(
            f"{API}/{machine_id}/metrics/temp",
            headers=committed_client.headers,
            json={"min_value": 0, "max_value": 100},
        )
        assert response.status_code == 200, response.text

        await resources.catalog.known([machine_id])
        second = t0 + timedelta(seconds=1)
        await resources.writer.write([(second, machine_id, "temp", 150.0)], source="test")
        rows = await pg_pool.fetch(
            "SELECT time, valid FROM readings WHERE machine_id = $1 ORDER BY time", machine_id
        )
        assert [(r["time"], r["valid"]) for r in rows] == [(t0, True), (second, False)]

    async def test_a_deleted_machine_is_forgotten_by_ingest(
        self,
        committed_client: CommittedClient,
        committed_machine: MachineFactory,
        resources: Resources,
    ) -> None:
        machine_id = await committed_machine()
        assert await resources.catalog.known([machine_id]) == {machine_id}
        response = await committed_client.client.delete(
            f"{API}/{machine_id}", headers=committed_client.headers
        )
        assert response.status_code == 204, response.text
        assert await resources.catalog.known([machine_id]) == set()


class TestNoServerErrors:
    """Odd input gets a 4xx envelope, never a 500."""

    @pytest.mark.parametrize(
        ("method", "path", "kwargs"),
        [
            ("POST", "", {"content": "hello", "headers": {"Content-Type": "text/plain"}}),
            ("POST", "", {"json": {"name": "x" * 100_000}}),
            ("POST", "", {"json": {"name": "ok", "labels": {"k": "\x00"}}}),
            ("POST", "", {"json": {"name": "ok", "labels": []}}),
            ("POST", "", {"json": {"name": "ok", "tags": "not-a-list"}}),
            ("POST", "", {"json": {"name": 123}}),
            (
                "POST",
                "",
                {
                    "content": '{"name": "ok", "description": "\\ud800"}',
                    "headers": {"Content-Type": "application/json"},
                },
            ),
            ("GET", "", {"params": {"limit": "abc"}}),
            ("GET", "", {"params": {"sort": ""}}),
            ("GET", "", {"params": {"tag": "x" * 65}}),
            ("PATCH", "/{m}", {"json": {"name": 123}}),
            ("PATCH", "/{m}", {"json": {"labels": {"k": 1.5}}}),
            ("PATCH", "/{m}/metrics/température", {"json": {}}),
            ("PUT", "/{m}/metrics/ok", {"json": []}),
            ("PUT", "/{m}/metrics/ok", {"json": {"min_value": True}}),
            ("DELETE", "/not-a-uuid", {}),
        ],
    )
    async def test_odd_requests_are_4xx(
        self,
        client: AsyncClient,
        manager: dict[str, str],
        make_machine: MachineMaker,
        method: str,
        path: str,
        kwargs: dict[str, Any],
    ) -> None:
        machine = await make_machine()
        headers = {**manager, **kwargs.pop("headers", {})}
        response = await client.request(
            method, API + path.format(m=machine.id), headers=headers, **kwargs
        )
        assert 400 <= response.status_code < 500, response.text
        assert set(response.json()) >= {"error", "detail", "status"}

    @pytest.mark.parametrize("q", ["\\", "' OR 1=1 --", "%_%", "a\\%"])
    async def test_search_text_is_data(
        self, client: AsyncClient, operator: dict[str, str], make_machine: MachineMaker, q: str
    ) -> None:
        await make_machine("plain")
        response = await client.get(API, headers=operator, params={"q": q})
        assert response.status_code == 200, response.text
        assert response.json()["total"] == 0

    async def test_labels_written_by_other_means_still_read(
        self,
        client: AsyncClient,
        db: AsyncSession,
        operator: dict[str, str],
        make_machine: MachineMaker,
    ) -> None:
        machine_id = (await make_machine()).id
        await db.execute(
            text("""UPDATE machines SET labels = '{"floor": 2}' WHERE id = :m"""), {"m": machine_id}
        )
        db.expire_all()
        response = await client.get(f"{API}/{machine_id}", headers=operator)
        assert response.status_code == 200, response.text
        assert response.json()["labels"] == {"floor": 2}
