from __future__ import annotations

import uuid

from httpx import AsyncClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse.auth.models import User
from plantpulse.auth.permissions import Role
from tests.auth.test_router import assert_error, login
from tests.conftest import Headers, UserFactory


class TestListUsers:
    async def test_filters_and_pagination(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers, db: AsyncSession
    ) -> None:
        manager = await make_user(Role.management)
        for _ in range(3):
            await make_user(Role.operator)
        await make_user(Role.supervisor, is_active=False)
        headers = auth_headers(manager)

        page = await client.get("/api/v1/users?role=operator&limit=2", headers=headers)
        assert page.status_code == 200
        body = page.json()
        assert body["total"] == 3
        assert len(body["items"]) == 2
        assert body["limit"] == 2
        assert body["offset"] == 0
        rest = await client.get("/api/v1/users?role=operator&limit=2&offset=2", headers=headers)
        assert len(rest.json()["items"]) == 1
        seen = {u["id"] for u in body["items"]} | {u["id"] for u in rest.json()["items"]}
        assert len(seen) == 3

        inactive = (await client.get("/api/v1/users?is_active=false", headers=headers)).json()
        assert [u["role"] for u in inactive["items"]] == ["supervisor"]

    async def test_bad_filter_is_422(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        manager = await make_user(Role.management)
        response = await client.get(
            "/api/v1/users?role=king&limit=0", headers=auth_headers(manager)
        )
        assert response.status_code == 422
        assert len(response.json()["errors"]) == 2

    async def test_huge_offset_is_422_not_an_overflow(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        manager = await make_user(Role.management)
        response = await client.get(
            "/api/v1/users?offset=100000000000000000000", headers=auth_headers(manager)
        )
        assert response.status_code == 422


class TestUpdateUser:
    async def test_update_role_and_department(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        manager = await make_user(Role.management)
        user = await make_user()
        response = await client.patch(
            f"/api/v1/users/{user.id}",
            headers=auth_headers(manager),
            json={"role": "supervisor", "department": "quality"},
        )
        assert response.status_code == 200, response.text
        assert response.json()["role"] == "supervisor"
        assert response.json()["department"] == "quality"

    async def test_unknown_user_is_404(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        manager = await make_user(Role.management)
        response = await client.get(f"/api/v1/users/{uuid.uuid4()}", headers=auth_headers(manager))
        assert response.status_code == 404
        assert_error(response.json(), 404, "UserNotFound")

    async def test_malformed_id_is_422(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        manager = await make_user(Role.management)
        response = await client.get("/api/v1/users/not-a-uuid", headers=auth_headers(manager))
        assert response.status_code == 422


class TestDeactivation:
    async def test_deactivated_users_tokens_stop_working_immediately(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        manager = await make_user(Role.management)
        await make_user(username="mallory")
        tokens = await login(client, "mallory")
        me = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert (await client.get("/api/v1/auth/me", headers=me)).status_code == 200

        user_id = tokens["user"]["id"]  # type: ignore[index]
        response = await client.post(
            f"/api/v1/users/{user_id}/deactivate", headers=auth_headers(manager)
        )
        assert response.status_code == 200
        assert response.json()["is_active"] is False
        locked = await client.get("/api/v1/auth/me", headers=me)
        assert locked.status_code == 401
        assert "deactivated" in locked.json()["detail"]
        refresh = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refresh.status_code == 401

        await client.post(f"/api/v1/users/{user_id}/activate", headers=auth_headers(manager))
        assert (await client.get("/api/v1/auth/me", headers=me)).status_code == 200


class TestDelete:
    async def test_delete_is_soft_and_frees_the_name(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers, db: AsyncSession
    ) -> None:
        manager = await make_user(Role.management)
        user = await make_user(username="gone", email="gone@example.com")
        response = await client.delete(f"/api/v1/users/{user.id}", headers=auth_headers(manager))
        assert response.status_code == 204
        assert (
            await client.get(f"/api/v1/users/{user.id}", headers=auth_headers(manager))
        ).status_code == 404
        row = await db.scalar(select(User).where(User.id == user.id))
        assert row is not None
        assert row.deleted_at is not None
        assert not row.is_active
        again = await make_user(username="gone", email="gone@example.com")
        assert again.id != user.id


class TestLastManagementAccount:
    async def _only_manager(self, db: AsyncSession, make_user: UserFactory) -> User:
        # Other tests' managers are rolled back, but be explicit: this one must be the only one.
        existing = await db.scalar(
            select(User).where(User.role == Role.management, User.is_active.is_(True))
        )
        assert existing is None
        return await make_user(Role.management)

    async def test_cannot_delete_deactivate_or_demote_the_last_manager(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers, db: AsyncSession
    ) -> None:
        manager = await self._only_manager(db, make_user)
        headers = auth_headers(manager)
        attempts = [
            client.delete(f"/api/v1/users/{manager.id}", headers=headers),
            client.post(f"/api/v1/users/{manager.id}/deactivate", headers=headers),
            client.patch(f"/api/v1/users/{manager.id}", headers=headers, json={"role": "operator"}),
            client.patch(f"/api/v1/users/{manager.id}", headers=headers, json={"is_active": False}),
        ]
        for attempt in attempts:
            response = await attempt
            assert response.status_code == 409, response.text
            assert_error(response.json(), 409, "LastManagementAccount")
        me = await client.get("/api/v1/auth/me", headers=headers)
        assert me.json()["role"] == "management"
        assert me.json()["is_active"] is True

    async def test_a_manager_can_step_down_when_another_remains(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers, db: AsyncSession
    ) -> None:
        first = await self._only_manager(db, make_user)
        await make_user(Role.management)
        response = await client.patch(
            f"/api/v1/users/{first.id}", headers=auth_headers(first), json={"role": "supervisor"}
        )
        assert response.status_code == 200
        assert response.json()["role"] == "supervisor"


class TestTextThatPostgresCannotStore:
    async def test_nul_in_an_update_is_a_422(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        # Found by fuzzing the running service: NUL characters reached PostgreSQL (a 500).
        manager = await make_user(Role.management)
        user = await make_user()
        response = await client.patch(
            f"/api/v1/users/{user.id}",
            headers=auth_headers(manager),
            json={"department": "qa\x00"},
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["body", "department"]
