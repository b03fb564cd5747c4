from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from plantpulse.config import EXAMPLE_JWT_SECRET, Settings
from plantpulse.errors import install_error_handlers


class TestErrorEnvelope:
    async def test_unknown_route_is_a_404_envelope(self, client: AsyncClient) -> None:
        response = await client.get("/api/v1/nope")
        assert response.status_code == 404
        assert response.json() == {"error": "NotFound", "detail": "Not Found", "status": 404}

    async def test_wrong_method_is_a_405_envelope(self, client: AsyncClient) -> None:
        response = await client.delete("/health")
        assert response.status_code == 405
        assert response.json()["error"] == "MethodNotAllowed"

    async def test_body_that_is_not_json_is_a_422_envelope(self, client: AsyncClient) -> None:
        response = await client.post(
            "/api/v1/auth/register", content=b"{{{", headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422
        assert response.json()["error"] == "ValidationError"

    async def test_unexpected_exception_is_a_500_envelope_with_request_id(self) -> None:
        app = FastAPI()
        install_error_handlers(app)

        @app.get("/boom")
        async def boom() -> None:
            raise RuntimeError("kaput")

        transport = ASGITransport(app=app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/boom", headers={"X-Request-ID": "req-42"})
        assert response.status_code == 500
        body = response.json()
        assert body["error"] == "InternalError"
        assert body["request_id"] == "req-42"
        assert "kaput" not in body["detail"]

    async def test_an_unexplained_database_error_is_a_500_with_request_id_and_traceback(
        self, pg_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
    ) -> None:
        # A missing table is no outage and no client error: a bug (or a missing migration).
        app = FastAPI()
        install_error_handlers(app)

        @app.get("/broken")
        async def broken() -> None:
            await pg_pool.fetchval("SELECT 1 FROM no_such_table")

        transport = ASGITransport(app=app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/broken", headers={"X-Request-ID": "req-43"})
        assert response.status_code == 500
        assert "retry-after" not in response.headers
        assert response.json()["request_id"] == "req-43"
        assert "UndefinedTableError" in caplog.text
        assert "Traceback" in caplog.text
        assert "req-43" in caplog.text

    def test_openapi_documents_the_envelope_for_errors(
        self, running_app: tuple[FastAPI, object]
    ) -> None:
        app, _ = running_app
        responses = app.openapi()["paths"]["/api/v1/users/{user_id}"]["get"]["responses"]
        for code in ("401", "403", "404", "422"):
            schema = responses[code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, code


class TestOpenApiErrorShapes:
    """Found by fuzzing the running service against its own OpenAPI document."""

    @staticmethod
    def _operations(app: FastAPI) -> list[tuple[str, dict[str, Any]]]:
        return [
            (f"{method.upper()} {path}", operation)
            for path, item in app.openapi()["paths"].items()
            for method, operation in item.items()
        ]

    def test_every_documented_4xx_is_the_envelope(
        self, running_app: tuple[FastAPI, object]
    ) -> None:
        app, _ = running_app
        schemas = app.openapi()["components"]["schemas"]

        def is_envelope(schema: dict[str, Any]) -> bool:
            if "$ref" in schema:
                return is_envelope(schemas[schema["$ref"].rsplit("/", 1)[-1]])
            if "anyOf" in schema:
                return all(is_envelope(s) for s in schema["anyOf"])
            return {"error", "detail", "status"} <= set(schema.get("required", []))

        wrong = [
            f"{name} {code}"
            for name, operation in self._operations(app)
            for code, response in operation["responses"].items()
            if code.startswith("4")
            and not is_envelope(response["content"]["application/json"]["schema"])
        ]
        assert wrong == []
        assert "HTTPValidationError" not in schemas

    def test_every_route_with_a_body_documents_400(
        self, running_app: tuple[FastAPI, object]
    ) -> None:
        # A body that is not UTF-8 is a 400 envelope before validation runs.
        app, _ = running_app
        missing = [
            name
            for name, operation in self._operations(app)
            if "requestBody" in operation and "400" not in operation["responses"]
        ]
        assert missing == []

    def test_every_api_route_documents_the_503_of_a_database_outage(
        self, running_app: tuple[FastAPI, object]
    ) -> None:
        # Every API route authenticates or reads the database: an outage is a 503 anywhere.
        app, _ = running_app
        missing = [
            name
            for name, operation in self._operations(app)
            if name.split()[1].startswith("/api/")
            and (
                "503" not in operation["responses"]
                or "Retry-After" not in operation["responses"]["503"].get("headers", {})
            )
        ]
        assert missing == []

    async def test_a_body_that_is_not_utf8_is_a_400_envelope(self, client: AsyncClient) -> None:
        response = await client.post(
            "/api/v1/auth/register",
            content=b"\xff\xfe{",
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400
        assert response.json()["error"] == "BadRequest"


class TestSettings:
    def test_example_secret_is_refused_outside_development(self) -> None:
        import pytest
        from pydantic import ValidationError

        with pytest.raises(ValidationError, match="example value"):
            Settings(_env_file=None, env="production")
        settings = Settings(_env_file=None, env="development")
        assert settings.auth.jwt_secret.get_secret_value() == EXAMPLE_JWT_SECRET

    def test_empty_optional_values_mean_not_set(self) -> None:
        from plantpulse.config import MqttSettings, RedisSettings

        assert RedisSettings(url="").url is None
        mqtt = MqttSettings(username="", password="", shared_group="")
        assert (mqtt.username, mqtt.password, mqtt.shared_group) == (None, None, None)
