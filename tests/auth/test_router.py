from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from httpx import AsyncClient
from jose import jwt

from plantpulse.auth.models import User
from plantpulse.auth.permissions import Role
from plantpulse.config import Settings
from tests.conftest import PASSWORD, Headers, UserFactory


def assert_error(body: dict[str, object], status: int, error: str | None = None) -> None:
    assert body["status"] == status
    assert isinstance(body["detail"], str)
    assert body["detail"]
    if error is not None:
        assert body["error"] == error


async def login(client: AsyncClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    response = await client.post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestRegister:
    async def test_self_registration_yields_operator(self, client: AsyncClient) -> None:
        response = await client.post(
            "/api/v1/auth/register",
            json={
                "username": "newbie",
                "email": "Newbie@Example.com",
                "password": PASSWORD,
                "factory_id": "F-1",
                "department": "maintenance",
            },
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["role"] == "operator"
        assert body["email"] == "newbie@example.com"
        assert body["department"] == "maintenance"
        assert "password" not in body
        assert "password_hash" not in body
        assert body["created_at"].endswith("Z")

    async def test_anonymous_cannot_choose_a_higher_role(self, client: AsyncClient) -> None:
        response = await client.post(
            "/api/v1/auth/register",
            json={
                "username": "sneaky",
                "email": "s@example.com",
                "password": PASSWORD,
                "role": "management",
            },
        )
        assert response.status_code == 403
        assert_error(response.json(), 403, "PermissionDenied")

    async def test_operator_cannot_choose_a_higher_role(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        operator = await make_user(Role.operator)
        response = await client.post(
            "/api/v1/auth/register",
            headers=auth_headers(operator),
            json={
                "username": "xone",
                "email": "xone@example.com",
                "password": PASSWORD,
                "role": "supervisor",
            },
        )
        assert response.status_code == 403

    async def test_management_can_choose_the_role(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        manager = await make_user(Role.management)
        response = await client.post(
            "/api/v1/auth/register",
            headers=auth_headers(manager),
            json={
                "username": "sup",
                "email": "sup@example.com",
                "password": PASSWORD,
                "role": "supervisor",
            },
        )
        assert response.status_code == 201, response.text
        assert response.json()["role"] == "supervisor"

    async def test_short_password_is_rejected_with_a_clear_message(
        self, client: AsyncClient
    ) -> None:
        response = await client.post(
            "/api/v1/auth/register",
            json={"username": "shorty", "email": "shorty@example.com", "password": "1234567"},
        )
        assert response.status_code == 422
        body = response.json()
        assert_error(body, 422, "ValidationError")
        assert "at least 8 characters" in body["detail"]
        assert body["errors"][0]["loc"] == ["body", "password"]

    @pytest.mark.parametrize(
        "payload",
        [
            {"username": "ab", "email": "ab@example.com", "password": PASSWORD},
            {"username": "bad name!", "email": "bn@example.com", "password": PASSWORD},
            {"username": "valid", "email": "not-an-email", "password": PASSWORD},
            {"username": "valid", "email": "v@example.com"},
            {"username": "valid", "email": "v@example.com", "password": PASSWORD, "x": 1},
        ],
    )
    async def test_invalid_fields_are_rejected(
        self, client: AsyncClient, payload: dict[str, object]
    ) -> None:
        response = await client.post("/api/v1/auth/register", json=payload)
        assert response.status_code == 422
        assert_error(response.json(), 422, "ValidationError")

    async def test_duplicate_username_or_email_conflicts(
        self, client: AsyncClient, make_user: UserFactory
    ) -> None:
        await make_user(username="taken", email="taken@example.com")
        for payload in (
            {"username": "TAKEN", "email": "other@example.com", "password": PASSWORD},
            {"username": "other", "email": "Taken@example.com", "password": PASSWORD},
        ):
            response = await client.post("/api/v1/auth/register", json=payload)
            assert response.status_code == 409
            assert_error(response.json(), 409, "UserExists")


class TestLogin:
    async def test_deeply_nested_json_is_a_400(self, client: AsyncClient) -> None:
        # Found by fuzzing the running service: RecursionError in the JSON decoder (a 500).
        response = await client.post(
            "/api/v1/auth/login",
            content=b"[" * 100_000 + b"]" * 100_000,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400, response.text
        assert_error(response.json(), 400, "BadRequest")

    async def test_json_login_returns_tokens_and_user(
        self, client: AsyncClient, make_user: UserFactory
    ) -> None:
        user = await make_user(username="alice")
        body = await login(client, "alice")
        assert body["token_type"] == "bearer"
        assert int(body["expires_in"]) == 30 * 60
        assert body["user"]["id"] == str(user.id)  # type: ignore[index]
        me = await client.get("/api/v1/auth/me", headers=bearer(body["access_token"]))
        assert me.status_code == 200
        assert me.json()["username"] == "alice"
        assert me.json()["last_login_at"] is not None

    async def test_form_login_for_the_docs_authorize_button(
        self, client: AsyncClient, make_user: UserFactory
    ) -> None:
        await make_user(username="bob")
        response = await client.post(
            "/api/v1/auth/login", data={"username": "bob", "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        assert response.json()["access_token"]

    async def test_login_by_email_case_insensitively(
        self, client: AsyncClient, make_user: UserFactory
    ) -> None:
        await make_user(username="carol", email="carol@example.com")
        assert (await login(client, "CAROL@example.com"))["access_token"]

    @pytest.mark.parametrize(
        ("username", "password"), [("dave", "wrong-password"), ("nobody", PASSWORD)]
    )
    async def test_bad_credentials_are_401(
        self, client: AsyncClient, make_user: UserFactory, username: str, password: str
    ) -> None:
        await make_user(username="dave")
        response = await client.post(
            "/api/v1/auth/login", json={"username": username, "password": password}
        )
        assert response.status_code == 401
        assert_error(response.json(), 401, "InvalidCredentials")
        assert response.json()["detail"] == "incorrect username or password"

    async def test_deactivated_user_cannot_log_in(
        self, client: AsyncClient, make_user: UserFactory
    ) -> None:
        await make_user(username="erin", is_active=False)
        response = await client.post(
            "/api/v1/auth/login", json={"username": "erin", "password": PASSWORD}
        )
        assert response.status_code == 401
        assert "deactivated" in response.json()["detail"]

    async def test_malformed_json_is_400(self, client: AsyncClient) -> None:
        response = await client.post(
            "/api/v1/auth/login",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400
        assert_error(response.json(), 400, "BadRequest")

    async def test_missing_fields_are_422(self, client: AsyncClient) -> None:
        response = await client.post("/api/v1/auth/login", json={"username": "x"})
        assert response.status_code == 422
        assert response.json()["errors"][0]["loc"] == ["body", "password"]

    async def test_unsupported_content_type_is_400(self, client: AsyncClient) -> None:
        response = await client.post(
            "/api/v1/auth/login", content=b"x", headers={"Content-Type": "text/plain"}
        )
        assert response.status_code == 400


class TestRefresh:
    async def test_refresh_rotates_and_the_old_refresh_token_dies(
        self, client: AsyncClient, make_user: UserFactory
    ) -> None:
        await make_user(username="frank")
        first = await login(client, "frank")
        response = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
        )
        assert response.status_code == 200, response.text
        second = response.json()
        assert second["refresh_token"] != first["refresh_token"]
        me = await client.get("/api/v1/auth/me", headers=bearer(second["access_token"]))
        assert me.status_code == 200
        again = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
        )
        assert again.status_code == 401
        assert again.json()["detail"] == "token has been revoked"

    async def test_access_token_is_not_a_refresh_token(
        self, client: AsyncClient, make_user: UserFactory
    ) -> None:
        await make_user(username="gina")
        tokens = await login(client, "gina")
        response = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["access_token"]}
        )
        assert response.status_code == 401
        assert response.json()["detail"] == "expected a refresh token"


class TestLogout:
    async def test_logout_revokes_access_and_refresh_tokens(
        self, client: AsyncClient, make_user: UserFactory
    ) -> None:
        await make_user(username="hank")
        tokens = await login(client, "hank")
        response = await client.post(
            "/api/v1/auth/logout",
            headers=bearer(tokens["access_token"]),
            json={"refresh_token": tokens["refresh_token"]},
        )
        assert response.status_code == 204
        me = await client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"]))
        assert me.status_code == 401
        assert me.json()["detail"] == "token has been revoked"
        refreshed = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.status_code == 401

    async def test_logout_without_body_revokes_the_access_token(
        self, client: AsyncClient, make_user: UserFactory
    ) -> None:
        await make_user(username="ivy")
        tokens = await login(client, "ivy")
        response = await client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"]))
        assert response.status_code == 204
        me = await client.get("/api/v1/auth/me", headers=bearer(tokens["access_token"]))
        assert me.status_code == 401

    async def test_cannot_revoke_someone_elses_refresh_token(
        self, client: AsyncClient, make_user: UserFactory
    ) -> None:
        await make_user(username="jack")
        await make_user(username="jill")
        jack, jill = await login(client, "jack"), await login(client, "jill")
        response = await client.post(
            "/api/v1/auth/logout",
            headers=bearer(jack["access_token"]),
            json={"refresh_token": jill["refresh_token"]},
        )
        assert response.status_code == 403


class TestChangePassword:
    async def test_change_password_ends_other_sessions(
        self, client: AsyncClient, make_user: UserFactory
    ) -> None:
        await make_user(username="kim")
        other_device = await login(client, "kim")
        this_device = await login(client, "kim")
        response = await client.post(
            "/api/v1/auth/change-password",
            headers=bearer(this_device["access_token"]),
            json={"current_password": PASSWORD, "new_password": "a much better secret"},
        )
        assert response.status_code == 200, response.text
        fresh = response.json()
        for stale in (other_device["access_token"], this_device["access_token"]):
            assert (await client.get("/api/v1/auth/me", headers=bearer(stale))).status_code == 401
        stale_refresh = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": other_device["refresh_token"]}
        )
        assert stale_refresh.status_code == 401
        me = await client.get("/api/v1/auth/me", headers=bearer(fresh["access_token"]))
        assert me.status_code == 200
        old = await client.post(
            "/api/v1/auth/login", json={"username": "kim", "password": PASSWORD}
        )
        assert old.status_code == 401
        assert (await login(client, "kim", "a much better secret"))["access_token"]

    async def test_wrong_current_password_is_401(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        user = await make_user()
        response = await client.post(
            "/api/v1/auth/change-password",
            headers=auth_headers(user),
            json={"current_password": "nope-nope", "new_password": "another good one"},
        )
        assert response.status_code == 401

    async def test_short_new_password_is_422(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        user = await make_user()
        response = await client.post(
            "/api/v1/auth/change-password",
            headers=auth_headers(user),
            json={"current_password": PASSWORD, "new_password": "short"},
        )
        assert response.status_code == 422
        assert "at least 8 characters" in response.json()["detail"]


def _forge(settings: Settings, user: User, **claims: object) -> str:
    now = datetime.now(UTC)
    payload: dict[str, object] = {
        "sub": str(user.id),
        "type": "access",
        "jti": "forged",
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=5)).timestamp()),
        "ver": 0,
    }
    payload.update(claims)
    return jwt.encode(payload, settings.auth.jwt_secret.get_secret_value(), algorithm="HS256")


class TestTokenValidation:
    async def test_a_well_formed_token_works(
        self, client: AsyncClient, make_user: UserFactory, settings: Settings
    ) -> None:
        user = await make_user()
        response = await client.get("/api/v1/auth/me", headers=bearer(_forge(settings, user)))
        assert response.status_code == 200

    async def test_expired_token_is_refused(
        self, client: AsyncClient, make_user: UserFactory, settings: Settings
    ) -> None:
        user = await make_user()
        past = datetime.now(UTC) - timedelta(minutes=10)
        token = _forge(
            settings,
            user,
            iat=int(past.timestamp()),
            exp=int((past + timedelta(minutes=1)).timestamp()),
        )
        response = await client.get("/api/v1/auth/me", headers=bearer(token))
        assert response.status_code == 401
        assert response.json()["detail"] == "token has expired"
        assert response.headers["www-authenticate"] == "Bearer"

    async def test_tampered_token_is_refused(
        self, client: AsyncClient, make_user: UserFactory, settings: Settings
    ) -> None:
        user = await make_user()
        other = await make_user()
        header, _, signature = _forge(settings, user).split(".")
        _, payload, _ = _forge(settings, other).split(".")
        response = await client.get(
            "/api/v1/auth/me", headers=bearer(f"{header}.{payload}.{signature}")
        )
        assert response.status_code == 401
        assert response.json()["detail"] == "invalid token"

    async def test_token_signed_with_another_key_is_refused(
        self, client: AsyncClient, make_user: UserFactory
    ) -> None:
        user = await make_user()
        token = jwt.encode(
            {"sub": str(user.id), "type": "access", "jti": "x", "iat": 1, "exp": 9999999999},
            "some-other-secret-entirely",
            algorithm="HS256",
        )
        assert (await client.get("/api/v1/auth/me", headers=bearer(token))).status_code == 401

    async def test_alg_none_is_refused(self, client: AsyncClient, make_user: UserFactory) -> None:
        import base64
        import json

        user = await make_user()

        def part(data: dict[str, object]) -> str:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

        now = int(datetime.now(UTC).timestamp())
        token = (
            part({"alg": "none", "typ": "JWT"})
            + "."
            + part(
                {
                    "sub": str(user.id),
                    "type": "access",
                    "jti": "n",
                    "iat": now,
                    "exp": now + 300,
                    "ver": 0,
                }
            )
            + "."
        )
        response = await client.get("/api/v1/auth/me", headers=bearer(token))
        assert response.status_code == 401

    async def test_refresh_token_is_not_an_access_token(
        self, client: AsyncClient, make_user: UserFactory
    ) -> None:
        await make_user(username="leo")
        tokens = await login(client, "leo")
        response = await client.get("/api/v1/auth/me", headers=bearer(tokens["refresh_token"]))
        assert response.status_code == 401
        assert response.json()["detail"] == "expected an access token"

    @pytest.mark.parametrize("header", [None, "Bearer", "Bearer garbage", "Basic dXNlcjpwYXNz"])
    async def test_missing_or_garbage_credentials_are_401(
        self, client: AsyncClient, header: str | None
    ) -> None:
        headers = {"Authorization": header} if header else {}
        response = await client.get("/api/v1/auth/me", headers=headers)
        assert response.status_code == 401
        assert_error(response.json(), 401)

    async def test_token_of_a_deleted_user_is_refused(
        self, client: AsyncClient, make_user: UserFactory, settings: Settings
    ) -> None:
        user = await make_user()
        token = _forge(settings, user)
        user.deleted_at = datetime.now(UTC)
        response = await client.get("/api/v1/auth/me", headers=bearer(token))
        assert response.status_code == 401


class TestInternalMailDomains:
    async def test_a_dot_local_address_is_accepted(self, client: AsyncClient) -> None:
        response = await client.post(
            "/api/v1/auth/register",
            json={"username": "plantop", "email": "op@plant.local", "password": PASSWORD},
        )
        assert response.status_code == 201, response.text


class TestTextThatPostgresCannotStore:
    """Found by fuzzing the running service: NUL characters reached PostgreSQL (a 500)."""

    @pytest.mark.parametrize("field", ["factory_id", "department"])
    async def test_nul_in_registration_is_a_422(self, field: str, client: AsyncClient) -> None:
        body = {"username": "nul-user", "email": "nul@example.com", "password": PASSWORD}
        body[field] = "a\x00b"
        response = await client.post("/api/v1/auth/register", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["body", field]

    async def test_nul_in_login_username_is_a_422(self, client: AsyncClient) -> None:
        response = await client.post(
            "/api/v1/auth/login", json={"username": "ad\x00min", "password": PASSWORD}
        )
        assert response.status_code == 422, response.text
        assert_error(response.json(), 422)
