"""The API during a database outage: every route answers 503 with `Retry-After` in the error
envelope (never 500), and works again, without a restart, once the database is back.

The outage is real: this module's own database stops accepting connections and its backends
are terminated (what clients see during a failover or a `pg_ctl restart`), or the app points at
a port where nothing listens."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import asyncpg
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response
from sqlalchemy.engine import make_url
from websockets.exceptions import ConnectionClosed

from plantpulse.app import create_app
from plantpulse.auth import service as auth
from plantpulse.auth.dependencies import Principal, get_principal
from plantpulse.auth.models import User
from plantpulse.auth.permissions import Role
from plantpulse.auth.principals import AuthUser
from plantpulse.auth.schemas import UserCreate
from plantpulse.auth.security import decode_token
from plantpulse.config import DatabaseSettings
from plantpulse.machines.dependencies import Sender, get_sender
from plantpulse.state import Resources
from tests import support
from tests.conftest import PASSWORD, make_settings
from tests.live import live_app, receive


@dataclass
class World:
    app: FastAPI
    client: AsyncClient
    resources: Resources
    url: str
    user: User
    headers: dict[str, str]
    ids: dict[str, str]

    def route(self, template: str) -> str:
        return template.format(**self.ids)

    def fresh_headers(self) -> dict[str, str]:
        """A token no process has checked yet: authenticating it needs the database (a token
        already checked may be answered from the principal cache, without it)."""
        token = auth.issue_tokens(self.resources.settings.auth, user=self.user).access_token
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
async def world() -> AsyncIterator[World]:
    url = await support.create_database("outage")
    try:
        await support.migrate(url)
        await support.pause_policies(url)
        app = create_app(make_settings(url))
        async with LifespanManager(app) as manager:
            transport = ASGITransport(app=manager.app, raise_app_exceptions=False)
            async with AsyncClient(transport=transport, base_url="http://test") as client:
                resources: Resources = manager._state["resources"]
                yield await _populate(app, client, resources, url)
    finally:
        await support.drop_database(url)


async def _populate(app: FastAPI, client: AsyncClient, resources: Resources, url: str) -> World:
    async with resources.sessionmaker() as session, session.begin():
        user = await auth.create_user(
            session,
            data=UserCreate(username="boss", email="boss@example.com", password=PASSWORD),
            role=Role.management,
        )
    token = auth.issue_tokens(resources.settings.auth, user=user).access_token
    headers = {"Authorization": f"Bearer {token}"}

    async def post(path: str, body: object = None) -> dict[str, str]:
        response = await client.post(path, json=body, headers=headers)
        assert response.status_code in (200, 201), response.text
        result: dict[str, str] = response.json()
        return result

    machine = await post("/api/v1/machines", {"name": "press-1"})
    group = await post("/api/v1/groups", {"name": "hall-1"})
    key = await post(f"/api/v1/machines/{machine['id']}/api-key")
    await post(f"/api/v1/machines/{machine['id']}/telemetry", {"data": {"temperature": 20.5}})
    rule = await post(
        "/api/v1/alert-rules",
        {
            "name": "hot",
            "scope": "machine",
            "machine_id": machine["id"],
            "metric": "temperature",
            "condition": ">",
            "threshold": 90,
        },
    )
    source = await post(
        "/api/v1/sources",
        {
            "name": "historian",
            "url": "http://historian.example.com/points",
            "machine_id": machine["id"],
            "metric": "level",
            "decoder": {"kind": "bytes-float32"},
        },
    )
    ids = {
        "source_id": source["id"],
        "user_id": str(user.id),
        "machine_id": machine["id"],
        "group_id": group["id"],
        "rule_id": rule["id"],
        "alert_id": str(uuid.uuid4()),
        "api_key": key["api_key"],
        "key": "retention_days",
    }
    return World(app, client, resources, url, user, headers, ids)


@contextmanager
def authenticated_without_database(world: World) -> Iterator[None]:
    """The caller is known without asking the database (as if authentication had passed just
    before the outage), so the route's own database work meets the outage: the SQLAlchemy
    session, the request transaction's commit and the raw asyncpg pool."""
    claims = decode_token(
        world.resources.settings.auth,
        world.headers["Authorization"].removeprefix("Bearer "),
        expected_type="access",
    )
    principal = Principal(user=AuthUser.of(world.user), claims=claims)

    async def known_principal() -> Principal:
        return principal

    async def known_sender() -> Sender:
        return Sender(principal=principal, machine_id=None)

    world.app.dependency_overrides[get_principal] = known_principal
    world.app.dependency_overrides[get_sender] = known_sender
    try:
        yield
    finally:
        world.app.dependency_overrides.clear()


# Every GET route of the API (checked against the OpenAPI document below), with ids filled in.
GET_ROUTES = [
    "/api/v1/auth/me",
    "/api/v1/users",
    "/api/v1/users/roles",
    "/api/v1/users/{user_id}",
    "/api/v1/machines",
    "/api/v1/machines/stats",
    "/api/v1/machines/{machine_id}",
    "/api/v1/machines/{machine_id}/metrics",
    "/api/v1/groups",
    "/api/v1/groups/{group_id}",
    "/api/v1/ingest/dead-letters",
    "/api/v1/ingest/stats",
    "/api/v1/config",
    "/api/v1/config/audit",
    "/api/v1/config/{key}",
    "/api/v1/stream",
    "/api/v1/alert-rules",
    "/api/v1/alert-rules/{rule_id}",
    "/api/v1/alerts",
    "/api/v1/alerts/{alert_id}",
    "/api/v1/machines/{machine_id}/telemetry",
    "/api/v1/machines/{machine_id}/telemetry?interval=1m",
    "/api/v1/machines/{machine_id}/telemetry/latest",
    "/api/v1/telemetry/latest?machine_ids={machine_id}",
    "/api/v1/machines/{machine_id}/telemetry/export",
    "/api/v1/sources",
    "/api/v1/sources/{source_id}",
    "/api/v1/sources/{source_id}/runs",
]
# Routes that need no database once the caller is known: they answer 200 in an outage.
WITHOUT_DATABASE = {"/api/v1/auth/me", "/api/v1/users/roles", "/api/v1/ingest/stats"}

# Writes across capabilities: (method, path, JSON body).
WRITES: list[tuple[str, str, object]] = [
    ("POST", "/api/v1/auth/login", {"username": "boss", "password": PASSWORD}),
    (
        "POST",
        "/api/v1/auth/register",
        {"username": "new", "email": "n@example.com", "password": PASSWORD},
    ),
    ("POST", "/api/v1/machines", {"name": "press-2"}),
    ("PATCH", "/api/v1/machines/{machine_id}", {"location": "hall 2"}),
    ("PATCH", "/api/v1/machines/{machine_id}/status", {"status": "maintenance"}),
    ("PUT", "/api/v1/machines/{machine_id}/metrics/temperature", {"unit": "C"}),
    ("POST", "/api/v1/groups/{group_id}/machines", {"machine_ids": ["{machine_id}"]}),
    ("PUT", "/api/v1/config/{key}", {"value": 30}),
    ("PATCH", "/api/v1/alert-rules/{rule_id}", {"threshold": 95}),
    ("POST", "/api/v1/alerts/{alert_id}/acknowledge", {"comment": "seen"}),
    (
        "POST",
        "/api/v1/telemetry/ingest",
        {"batch": [{"machine_id": "{machine_id}", "readings": [{"temperature": 21.0}]}]},
    ),
    ("POST", "/api/v1/machines/{machine_id}/telemetry", {"data": {"temperature": 21.5}}),
    ("DELETE", "/api/v1/machines/{machine_id}/telemetry?start_time=-1m", None),
    ("PATCH", "/api/v1/sources/{source_id}", {"interval_seconds": 60}),
    ("POST", "/api/v1/sources/{source_id}/poll", None),
]


def _fill(world: World, body: object) -> object:
    if isinstance(body, str):
        return world.route(body)
    if isinstance(body, list):
        return [_fill(world, item) for item in body]
    if isinstance(body, dict):
        return {key: _fill(world, value) for key, value in body.items()}
    return body


async def _call(
    world: World,
    method: str,
    template: str,
    body: object = None,
    *,
    headers: dict[str, str] | None = None,
) -> Response:
    return await world.client.request(
        method,
        world.route(template),
        json=_fill(world, body) if body is not None else None,
        headers=headers or world.headers,
    )


def _is_outage_answer(response: Response) -> bool:
    return (
        response.status_code == 503
        and response.headers.get("retry-after") == "5"
        and response.json()
        == {
            "error": "DatabaseUnavailable",
            "detail": "the database is unavailable; retry later",
            "status": 503,
        }
    )


class TestRouteTable:
    def test_the_table_has_every_get_route(self, world: World) -> None:
        documented = {
            path
            for path, item in world.app.openapi()["paths"].items()
            if "get" in item and path.startswith("/api/")
        }
        assert documented == {route.split("?")[0] for route in GET_ROUTES}


class TestDatabaseCut:
    """ALLOW_CONNECTIONS false and every backend terminated: pooled connections are dead and
    new ones are refused ("database ... is not currently accepting connections")."""

    @pytest.mark.parametrize("route", GET_ROUTES)
    async def test_get_route_is_503_while_authentication_needs_the_database(
        self, world: World, route: str
    ) -> None:
        headers = world.fresh_headers()
        async with support.database_cut(world.url):
            response = await _call(world, "GET", route, headers=headers)
        assert _is_outage_answer(response), (response.status_code, response.text)

    @pytest.mark.parametrize("route", GET_ROUTES)
    async def test_get_route_is_503_when_the_route_itself_meets_the_outage(
        self, world: World, route: str
    ) -> None:
        with authenticated_without_database(world):
            async with support.database_cut(world.url):
                response = await _call(world, "GET", route)
        if route.split("?")[0] in WITHOUT_DATABASE:
            assert response.status_code == 200, response.text
        elif route.startswith("/api/v1/stream") and response.status_code == 200:
            # The stream's own token check may be answered by the principal cache; the stream
            # then opens and says at once, as an event, that the database is unavailable.
            assert '"code":1013' in response.text, response.text
        else:
            assert _is_outage_answer(response), (response.status_code, response.text)

    @pytest.mark.parametrize(
        ("method", "route", "body"), WRITES, ids=[f"{m} {r}" for m, r, _ in WRITES]
    )
    async def test_write_is_503(self, world: World, method: str, route: str, body: object) -> None:
        headers = world.fresh_headers()
        async with support.database_cut(world.url):
            response = await _call(world, method, route, body, headers=headers)
            assert _is_outage_answer(response), (response.status_code, response.text)
            with authenticated_without_database(world):
                response = await _call(world, method, route, body)
            assert _is_outage_answer(response), (response.status_code, response.text)

    async def test_a_device_with_its_api_key_gets_503(self, world: World) -> None:
        async with support.database_cut(world.url):
            response = await world.client.post(
                world.route("/api/v1/machines/{machine_id}/telemetry"),
                json={"data": {"temperature": 22.0}},
                headers={"X-API-Key": world.ids["api_key"]},
            )
        assert _is_outage_answer(response), (response.status_code, response.text)

    async def test_every_route_works_again_when_the_database_is_back(self, world: World) -> None:
        headers = world.fresh_headers()
        async with support.database_cut(world.url):
            for route in GET_ROUTES[:3]:
                assert _is_outage_answer(await _call(world, "GET", route, headers=headers))
        # Both pools held connections the cut terminated; neither needs a restart.
        failed = {}
        for route in GET_ROUTES:
            if route == "/api/v1/stream":
                continue
            response = await _call(world, "GET", route)
            expected = 404 if "{alert_id}" in route else 200
            if response.status_code != expected:
                failed[route] = (response.status_code, response.text[:200])
        assert failed == {}
        stored = await world.client.post(
            world.route("/api/v1/machines/{machine_id}/telemetry"),
            json={"data": {"temperature": 23.0}},
            headers={"X-API-Key": world.ids["api_key"]},
        )
        assert stored.status_code == 200, stored.text


class TestNothingListens:
    async def test_every_route_is_503_when_the_database_port_is_closed(self, world: World) -> None:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{support.free_port()}/nowhere"
        settings = make_settings(
            url, database=DatabaseSettings(url=url), auth=world.resources.settings.auth
        )
        app = create_app(settings)
        async with LifespanManager(app) as manager:
            transport = ASGITransport(app=manager.app, raise_app_exceptions=False)
            async with AsyncClient(transport=transport, base_url="http://test") as client:
                down = World(
                    app,
                    client,
                    manager._state["resources"],
                    url,
                    world.user,
                    world.headers,
                    world.ids,
                )
                answers = {}
                for route in GET_ROUTES:
                    answers[f"GET {route}"] = await _call(down, "GET", route)
                for method, route, body in WRITES:
                    answers[f"{method} {route}"] = await _call(down, method, route, body)
                with authenticated_without_database(down):
                    for route in GET_ROUTES:
                        if route.split("?")[0] not in WITHOUT_DATABASE | {"/api/v1/stream"}:
                            answers[f"GET {route} (known caller)"] = await _call(down, "GET", route)
        wrong = {
            name: (r.status_code, r.text[:200])
            for name, r in answers.items()
            if not _is_outage_answer(r)
        }
        assert wrong == {}


async def _admin(world: World, *statements: str) -> None:
    """Run SQL as the administrator in this module's own database."""
    conn = await asyncpg.connect(world.url.replace("+asyncpg", ""))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def commit_triggers(world: World) -> AsyncIterator[None]:
    """A deferred constraint trigger on machine groups, fired at COMMIT: it refuses the group
    named `refuse-at-commit` (SQLSTATE 23514) and terminates its own connection for the group
    named `kill-at-commit` (a connection lost during COMMIT)."""
    await _admin(
        world,
        """
        CREATE FUNCTION test_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.name = 'refuse-at-commit' THEN
                RAISE EXCEPTION 'group name refused by policy' USING ERRCODE = 'check_violation';
            ELSIF NEW.name = 'kill-at-commit' THEN
                PERFORM pg_terminate_backend(pg_backend_pid());
            END IF;
            RETURN NULL;
        END $$
        """,
        """
        CREATE CONSTRAINT TRIGGER test_at_commit AFTER INSERT ON machine_groups
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_at_commit()
        """,
    )
    yield
    await _admin(
        world,
        "DROP TRIGGER test_at_commit ON machine_groups",
        "DROP FUNCTION test_at_commit()",
    )


class TestPermanentErrors:
    """B3: a data or configuration error is not an outage (no 503, no Retry-After)."""

    async def test_a_value_the_database_refuses_is_422_with_the_reason(
        self, world: World, caplog: pytest.LogCaptureFixture
    ) -> None:
        await _admin(
            world,
            "ALTER TABLE machines ADD CONSTRAINT ck_test_no_attic "
            "CHECK (location IS DISTINCT FROM 'attic') NOT VALID",
        )
        try:
            response = await _call(
                world, "POST", "/api/v1/machines", {"name": "press-9", "location": "attic"}
            )
        finally:
            await _admin(world, "ALTER TABLE machines DROP CONSTRAINT ck_test_no_attic")
        assert response.status_code == 422, response.text
        assert "retry-after" not in response.headers
        body = response.json()
        assert body["error"] == "ValueRefused"
        assert "ck_test_no_attic" in body["detail"]
        assert "SQLSTATE 23514" in caplog.text
        assert "ck_test_no_attic" in caplog.text

    async def test_an_ingested_value_the_database_refuses_is_422_not_503(
        self, world: World
    ) -> None:
        await _admin(
            world,
            "ALTER TABLE readings ADD CONSTRAINT ck_test_sane CHECK (value < 1e9) NOT VALID",
        )
        try:
            response = await _call(
                world,
                "POST",
                "/api/v1/telemetry/ingest",
                {"batch": [{"machine_id": "{machine_id}", "readings": [{"temperature": 2e9}]}]},
            )
        finally:
            await _admin(world, "ALTER TABLE readings DROP CONSTRAINT ck_test_sane")
        assert response.status_code == 422, response.text
        assert "retry-after" not in response.headers
        assert response.json()["error"] == "ValueRefused"
        assert "ck_test_sane" in response.json()["detail"]

    @pytest.mark.usefixtures("commit_triggers")
    async def test_a_refusal_at_commit_is_422(self, world: World) -> None:
        # The request transaction commits in the DbSession dependency, after the handler.
        response = await _call(world, "POST", "/api/v1/groups", {"name": "refuse-at-commit"})
        assert response.status_code == 422, response.text
        assert response.json()["detail"] == (
            "the database refused a value: group name refused by policy"
        )
        listed = await _call(world, "GET", "/api/v1/groups")
        assert "refuse-at-commit" not in listed.text

    @pytest.mark.usefixtures("commit_triggers")
    async def test_a_connection_lost_at_commit_is_503_and_the_next_request_works(
        self, world: World
    ) -> None:
        response = await _call(world, "POST", "/api/v1/groups", {"name": "kill-at-commit"})
        assert _is_outage_answer(response), (response.status_code, response.text)
        listed = await _call(world, "GET", "/api/v1/groups")
        assert listed.status_code == 200
        assert "kill-at-commit" not in listed.text

    async def test_a_configured_limit_is_507_without_retry_after(
        self, world: World, caplog: pytest.LogCaptureFixture
    ) -> None:
        name = make_url(world.url).database
        await _admin(
            world,
            "INSERT INTO machines (id, name) SELECT gen_random_uuid(), "
            "'bulk-' || g || repeat('x', 100) FROM generate_series(1, 3000) g",
            f"ALTER DATABASE \"{name}\" SET work_mem = '64kB'",
            f"ALTER DATABASE \"{name}\" SET temp_file_limit = '64kB'",
        )
        try:
            async with support.database_cut(world.url):
                pass  # every pooled connection is replaced by one with the limits
            response = await _call(
                world, "GET", "/api/v1/machines?sort=-created_at&limit=1000&offset=2000"
            )
        finally:
            await _admin(
                world,
                f'ALTER DATABASE "{name}" RESET work_mem',
                f'ALTER DATABASE "{name}" RESET temp_file_limit',
                "DELETE FROM machines WHERE name LIKE 'bulk-%'",
            )
            async with support.database_cut(world.url):
                pass
        assert response.status_code == 507, response.text
        assert "retry-after" not in response.headers
        body = response.json()
        assert body["error"] == "DatabaseLimitExceeded"
        assert "temp_file_limit" in body["detail"]
        assert "SQLSTATE 53400" in caplog.text


class TestLiveStreams:
    async def test_a_websocket_is_closed_with_try_again_while_the_database_is_cut(
        self, world: World
    ) -> None:
        async with live_app(world.resources.settings) as live:
            token = world.headers["Authorization"].removeprefix("Bearer ")
            async with support.database_cut(world.url):
                async with live.connect(token) as ws:
                    with pytest.raises(ConnectionClosed):
                        await receive(ws)
                    assert (ws.close_code, ws.close_reason) == (
                        1013,
                        "the database is unavailable; retry later",
                    )
            async with live.connect(token) as ws:
                assert (await receive(ws))["type"] == "welcome"
