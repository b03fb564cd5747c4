from __future__ import annotations

import uuid
from typing import Any

import pytest
from httpx import AsyncClient

from tests.machines.conftest import MachineMaker
from tests.machines.test_router import assert_error

API = "/api/v1/groups"


async def create_group(
    client: AsyncClient, headers: dict[str, str], name: str, *members: uuid.UUID, **extra: Any
) -> dict[str, Any]:
    response = await client.post(
        API,
        headers=headers,
        json={"name": name, "machine_ids": [str(m) for m in members], **extra},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


class TestCreateGroup:
    async def test_creates_a_group_with_members(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        b = await make_machine("b-press")
        a = await make_machine("a-press")
        response = await client.post(
            API,
            headers=supervisor,
            json={
                "name": "Line 2",
                "description": "north hall",
                "machine_ids": [str(b.id), str(a.id)],
            },
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert response.headers["location"] == f"{API}/{body['id']}"
        assert body["name"] == "Line 2"
        assert body["description"] == "north hall"
        assert body["machine_count"] == 2
        assert [m["name"] for m in body["machines"]] == ["a-press", "b-press"]
        assert set(body["machines"][0]) == {
            "id",
            "name",
            "location",
            "status",
            "connectivity",
            "last_seen_at",
        }

    async def test_empty_group(self, client: AsyncClient, supervisor: dict[str, str]) -> None:
        body = await create_group(client, supervisor, "empty")
        assert (body["machine_count"], body["machines"]) == (0, [])

    async def test_duplicate_name_is_409(
        self, client: AsyncClient, supervisor: dict[str, str]
    ) -> None:
        await create_group(client, supervisor, "Line 2")
        response = await client.post(API, headers=supervisor, json={"name": "Line 2"})
        assert_error(response, 409, "GroupExists")

    async def test_unknown_initial_members_are_404_and_nothing_is_created(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        real = await make_machine()
        missing = uuid.uuid4()
        response = await client.post(
            API,
            headers=supervisor,
            json={"name": "half", "machine_ids": [str(real.id), str(missing)]},
        )
        body = assert_error(response, 404, "MachineNotFound")
        assert str(missing) in body["detail"]
        assert str(real.id) not in body["detail"]
        listed = await client.get(API, headers=supervisor, params={"q": "half"})
        assert listed.json()["total"] == 0

    @pytest.mark.parametrize(
        "payload",
        [
            {},
            {"name": ""},
            {"name": "x" * 129},
            {"name": "ok", "machine_ids": ["nope"]},
            {"name": "ok", "machine_ids": [str(uuid.UUID(int=i)) for i in range(1001)]},
            {"name": "ok", "extra": True},
        ],
    )
    async def test_invalid_input_is_422(
        self, client: AsyncClient, supervisor: dict[str, str], payload: dict[str, Any]
    ) -> None:
        assert_error(
            await client.post(API, headers=supervisor, json=payload), 422, "ValidationError"
        )

    async def test_operator_cannot_create(
        self, client: AsyncClient, operator: dict[str, str]
    ) -> None:
        response = await client.post(API, headers=operator, json={"name": "x"})
        assert_error(response, 403, "PermissionDenied")


class TestListGroups:
    async def test_pages_by_name_with_member_counts(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        operator: dict[str, str],
        make_machine: MachineMaker,
    ) -> None:
        m1, m2 = await make_machine(), await make_machine()
        await create_group(client, supervisor, "grp-c", m1.id, m2.id)
        await create_group(client, supervisor, "grp-a")
        await create_group(client, supervisor, "grp-b", m1.id)
        first = await client.get(API, headers=operator, params={"q": "GRP-", "limit": 2})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["total"] == 3
        assert [(g["name"], g["machine_count"]) for g in body["items"]] == [
            ("grp-a", 0),
            ("grp-b", 1),
        ]
        assert "machines" not in body["items"][0]
        rest = await client.get(API, headers=operator, params={"q": "grp-", "offset": 2})
        assert [(g["name"], g["machine_count"]) for g in rest.json()["items"]] == [("grp-c", 2)]

    @pytest.mark.parametrize("params", [{"limit": 0}, {"offset": -1}, {"q": "\x00"}])
    async def test_bad_parameters_are_422(
        self, client: AsyncClient, operator: dict[str, str], params: dict[str, Any]
    ) -> None:
        assert_error(await client.get(API, headers=operator, params=params), 422, "ValidationError")


class TestGetUpdateDeleteGroup:
    async def test_get_lists_members(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        operator: dict[str, str],
        make_machine: MachineMaker,
    ) -> None:
        machine = await make_machine("press", location="Hall A")
        group = await create_group(client, supervisor, "g", machine.id)
        response = await client.get(f"{API}/{group['id']}", headers=operator)
        assert response.status_code == 200, response.text
        assert response.json()["machines"][0]["location"] == "Hall A"

    async def test_unknown_group_is_404_everywhere(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        machine = await make_machine()
        url = f"{API}/{uuid.uuid4()}"
        for method, path, payload in [
            ("GET", url, None),
            ("PATCH", url, {"name": "x"}),
            ("DELETE", url, None),
            ("POST", f"{url}/machines", {"machine_ids": [str(machine.id)]}),
            ("DELETE", f"{url}/machines/{machine.id}", None),
        ]:
            response = await client.request(method, path, headers=supervisor, json=payload)
            assert_error(response, 404, "GroupNotFound")

    async def test_rename_and_describe(
        self, client: AsyncClient, supervisor: dict[str, str]
    ) -> None:
        group = await create_group(client, supervisor, "old", description="d")
        response = await client.patch(
            f"{API}/{group['id']}", headers=supervisor, json={"name": "new"}
        )
        assert response.status_code == 200, response.text
        assert (response.json()["name"], response.json()["description"]) == ("new", "d")
        response = await client.patch(
            f"{API}/{group['id']}", headers=supervisor, json={"description": None}
        )
        assert response.json()["description"] is None

    async def test_rename_to_a_taken_name_is_409(
        self, client: AsyncClient, supervisor: dict[str, str]
    ) -> None:
        await create_group(client, supervisor, "taken")
        group = await create_group(client, supervisor, "mine")
        response = await client.patch(
            f"{API}/{group['id']}", headers=supervisor, json={"name": "taken"}
        )
        assert_error(response, 409, "GroupExists")

    @pytest.mark.parametrize("payload", [{"name": None}, {"name": ""}, {"machine_ids": []}])
    async def test_invalid_update_is_422(
        self, client: AsyncClient, supervisor: dict[str, str], payload: dict[str, Any]
    ) -> None:
        group = await create_group(client, supervisor, "g")
        response = await client.patch(f"{API}/{group['id']}", headers=supervisor, json=payload)
        assert_error(response, 422, "ValidationError")

    async def test_delete_keeps_the_machines(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        machine = await make_machine()
        group = await create_group(client, supervisor, "g", machine.id)
        response = await client.delete(f"{API}/{group['id']}", headers=supervisor)
        assert response.status_code == 204, response.text
        assert_error(
            await client.get(f"{API}/{group['id']}", headers=supervisor), 404, "GroupNotFound"
        )
        assert_error(
            await client.delete(f"{API}/{group['id']}", headers=supervisor), 404, "GroupNotFound"
        )
        detail = await client.get(f"/api/v1/machines/{machine.id}", headers=supervisor)
        assert detail.status_code == 200
        assert detail.json()["groups"] == []

    async def test_operator_cannot_change_groups(
        self, client: AsyncClient, supervisor: dict[str, str], operator: dict[str, str]
    ) -> None:
        group = await create_group(client, supervisor, "g")
        url = f"{API}/{group['id']}"
        assert_error(
            await client.patch(url, headers=operator, json={"name": "x"}), 403, "PermissionDenied"
        )
        assert_error(await client.delete(url, headers=operator), 403, "PermissionDenied")


class TestMembership:
    async def test_adding_is_idempotent(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        a, b = await make_machine("a"), await make_machine("b")
        group = await create_group(client, supervisor, "g", a.id)
        url = f"{API}/{group['id']}/machines"
        for _ in range(2):
            response = await client.post(
                url, headers=supervisor, json={"machine_ids": [str(a.id), str(b.id), str(b.id)]}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["machine_count"] == 2
            assert [m["name"] for m in body["machines"]] == ["a", "b"]

    async def test_unknown_machines_are_404_naming_them(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        real = await make_machine()
        group = await create_group(client, supervisor, "g")
        missing = sorted([uuid.uuid4(), uuid.uuid4()], key=str)
        response = await client.post(
            f"{API}/{group['id']}/machines",
            headers=supervisor,
            json={"machine_ids": [str(real.id), *map(str, missing)]},
        )
        body = assert_error(response, 404, "MachineNotFound")
        assert all(str(m) in body["detail"] for m in missing)
        # All or nothing: the real machine was not added either.
        detail = (await client.get(f"{API}/{group['id']}", headers=supervisor)).json()
        assert detail["machine_count"] == 0

    async def test_empty_list_is_422(self, client: AsyncClient, supervisor: dict[str, str]) -> None:
        group = await create_group(client, supervisor, "g")
        response = await client.post(
            f"{API}/{group['id']}/machines", headers=supervisor, json={"machine_ids": []}
        )
        assert_error(response, 422, "ValidationError")

    async def test_removing_is_idempotent(
        self, client: AsyncClient, supervisor: dict[str, str], make_machine: MachineMaker
    ) -> None:
        a, b = await make_machine("a"), await make_machine("b")
        group = await create_group(client, supervisor, "g", a.id, b.id)
        url = f"{API}/{group['id']}/machines/{a.id}"
        for _ in range(2):
            response = await client.delete(url, headers=supervisor)
            assert response.status_code == 204, response.text
        detail = (await client.get(f"{API}/{group['id']}", headers=supervisor)).json()
        assert [m["name"] for m in detail["machines"]] == ["b"]

    async def test_removing_an_unknown_machine_is_404(
        self, client: AsyncClient, supervisor: dict[str, str]
    ) -> None:
        group = await create_group(client, supervisor, "g")
        response = await client.delete(
            f"{API}/{group['id']}/machines/{uuid.uuid4()}", headers=supervisor
        )
        assert_error(response, 404, "MachineNotFound")

    async def test_machines_filter_by_group_id_or_name(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        make_machine: MachineMaker,
    ) -> None:
        a, b = await make_machine("a"), await make_machine("b")
        c = await make_machine("c")
        group = await create_group(client, supervisor, "Line 2", a.id, b.id)
        # A name that looks like an id is still found by name.
        uuid_name = str(uuid.uuid4())
        await create_group(client, supervisor, uuid_name, c.id)
        for value, expected in [
            (group["id"], ["a", "b"]),
            ("Line 2", ["a", "b"]),
            (uuid_name, ["c"]),
        ]:
            response = await client.get(
                "/api/v1/machines", headers=supervisor, params={"group": value}
            )
            assert response.status_code == 200, response.text
            assert [m["name"] for m in response.json()["items"]] == expected
            assert response.json()["total"] == len(expected)
        response = await client.get(
            "/api/v1/machines", headers=supervisor, params={"group": "no such group"}
        )
        assert response.json()["total"] == 0
