from __future__ import annotations

from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from plantpulse import __version__
from plantpulse.app import create_app
from plantpulse.config import DatabaseSettings, RedisSettings, Settings
from tests.conftest import make_settings


class TestHealth:
    async def test_root_names_the_service_and_the_docs(self, client: AsyncClient) -> None:
        body = (await client.get("/")).json()
        assert body == {
            "name": "PlantPulse",
            "version": __version__,
            "docs": "/docs",
            "openapi": "/openapi.json",
        }

    async def test_liveness_needs_nothing(self, client: AsyncClient) -> None:
        response = await client.get("/health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    async def test_ready_reports_every_component(self, client: AsyncClient) -> None:
        response = await client.get("/ready")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ready"
        assert body["database"]["status"] == "up"
        assert body["timescaledb"]["status"] == "up"
        assert body["timescaledb"]["info"]["edition"] in ("apache", "community")
        # TimescaleDB's own housekeeping job may fail on this machine's builds (every
        # scheduled run does); only jobs on PlantPulse's data count.
        assert body["timescaledb_jobs"]["status"] == "up"
        assert all(job["job_id"] < 1000 for job in body["timescaledb_jobs"]["info"]["failing"])
        assert body["redis"]["status"] == "up"
        assert body["revocation_store"] == "redis"
        assert body["mqtt"]["status"] == "disabled"


async def _ready(settings: Settings) -> tuple[int, dict[str, object]]:
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = ASGITransport(app=manager.app)
        async with AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/ready")
            return response.status_code, response.json()


class TestReadinessFailures:
    async def test_database_down_is_503_and_the_api_still_answers(self, settings: Settings) -> None:
        down = make_settings(
            settings.database.url,
            database=DatabaseSettings(url="postgresql+asyncpg://postgres@127.0.0.1:9/nowhere"),
        )
        status, body = await _ready(down)
        assert status == 503
        assert body["status"] == "unavailable"
        assert body["database"]["status"] == "down"  # type: ignore[index]

    async def test_without_redis_the_memory_store_is_reported(self, settings: Settings) -> None:
        status, body = await _ready(
            make_settings(settings.database.url, redis=RedisSettings(url=""))
        )
        assert status == 200
        assert body["redis"]["status"] == "disabled"  # type: ignore[index]
        assert body["revocation_store"] == "memory"

    async def test_redis_down_is_degraded_not_unavailable(self, settings: Settings) -> None:
        status, body = await _ready(
            make_settings(settings.database.url, redis=RedisSettings(url="redis://127.0.0.1:9/0"))
        )
        assert status == 200
        assert body["status"] == "degraded"
        assert body["redis"]["status"] == "down"  # type: ignore[index]


class TestDocs:
    async def test_docs_page_uses_local_assets(self, client: AsyncClient) -> None:
        page = await client.get("/docs")
        assert page.status_code == 200
        assert "/docs-assets/swagger-ui-bundle.js" in page.text
        assert "cdn" not in page.text.lower()
        script = await client.get("/docs-assets/swagger-ui-bundle.js")
        assert script.status_code == 200
        assert len(script.content) > 100_000
        assert (await client.get("/docs/oauth2-redirect")).status_code == 200

    async def test_openapi_login_accepts_json_and_form(self, client: AsyncClient) -> None:
        spec = (await client.get("/openapi.json")).json()
        content = spec["paths"]["/api/v1/auth/login"]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "application/x-www-form-urlencoded"}
        flows = spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
        assert flows["password"]["tokenUrl"] == "/api/v1/auth/login"

    async def test_route_docstrings_are_the_summaries(self, client: AsyncClient) -> None:
        spec = (await client.get("/openapi.json")).json()
        assert spec["paths"]["/health"]["get"]["summary"] == (
            "Liveness: the process answers. Checks no dependency"
        )
