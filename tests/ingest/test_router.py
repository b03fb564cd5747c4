from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from httpx import AsyncClient
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse.auth.permissions import Role
from plantpulse.ingest.models import dead_letters
from tests.conftest import Headers, UserFactory

T0 = datetime(2026, 1, 5, 10, tzinfo=UTC)


@pytest.fixture
async def admin(make_user: UserFactory, auth_headers: Headers) -> dict[str, str]:
    return auth_headers(await make_user(Role.management))


@pytest.fixture
async def letters(db: AsyncSession) -> None:
    # Rolled back with the test's transaction.
    await db.execute(
        insert(dead_letters),
        [
            {
                "received_at": T0 + timedelta(minutes=i),
                "source": "mqtt",
                "topic": f"plantpulse/machines/x{i}/telemetry",
                "reason": ("not_json: bad" if i % 2 else "unknown_machine: who"),
                "payload_excerpt": f"payload {i}",
                "payload_size": 10 + i,
            }
            for i in range(5)
        ],
    )
    await db.flush()


class TestDeadLetterList:
    async def test_newest_first_with_total_and_pages(
        self, client: AsyncClient, admin: dict[str, str], letters: None
    ) -> None:
        response = await client.get(
            "/api/v1/ingest/dead-letters",
            params={"since": T0.isoformat(), "limit": 2, "offset": 1},
            headers=admin,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == 5
        assert [item["payload_excerpt"] for item in body["items"]] == ["payload 3", "payload 2"]
        assert body["items"][0]["received_at"] == "2026-01-05T10:03:00Z"
        assert body["items"][0]["payload_size"] == 13

    async def test_filter_by_reason_code_and_since(
        self, client: AsyncClient, admin: dict[str, str], letters: None
    ) -> None:
        response = await client.get(
            "/api/v1/ingest/dead-letters",
            params={"reason": "not_json", "since": (T0 + timedelta(minutes=2)).isoformat()},
            headers=admin,
        )
        body = response.json()
        assert body["total"] == 1
        assert body["items"][0]["reason"] == "not_json: bad"

    @pytest.mark.parametrize(
        "params",
        [
            {"reason": "nonsense"},
            {"since": "2026-01-05T10:00:00"},
            {"since": "2026-01-05T10:00:00Z", "until": "2026-01-05T09:00:00Z"},
            {"limit": 0},
        ],
    )
    async def test_bad_filters_are_422_envelopes(
        self, client: AsyncClient, admin: dict[str, str], params: dict[str, str | int]
    ) -> None:
        response = await client.get("/api/v1/ingest/dead-letters", params=params, headers=admin)
        assert response.status_code == 422, response.text
        assert set(response.json()) >= {"error", "detail", "status"}


class TestStats:
    async def test_stats_say_mqtt_is_off_in_a_process_without_it(
        self, client: AsyncClient, admin: dict[str, str]
    ) -> None:
        response = await client.get("/api/v1/ingest/stats", headers=admin)
        assert response.status_code == 200
        assert response.json()["enabled"] is False


class TestHostileQueries:
    """Found by fuzzing the running service: each was a 500."""

    async def test_offset_beyond_the_database_integer_is_a_422(
        self, client: AsyncClient, admin: dict[str, str]
    ) -> None:
        response = await client.get(
            "/api/v1/ingest/dead-letters", params={"offset": 2**64}, headers=admin
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["query", "offset"]

    @pytest.mark.parametrize(
        ("name", "value"),
        [("since", "9999-12-31T23:59:59-14:00"), ("until", "0001-01-01T00:00:00+14:00")],
    )
    async def test_timestamp_outside_the_utc_range_is_a_422(
        self, name: str, value: str, client: AsyncClient, admin: dict[str, str]
    ) -> None:
        response = await client.get(
            "/api/v1/ingest/dead-letters", params={name: value}, headers=admin
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["query", name]

    async def test_nul_in_the_topic_is_a_422(
        self, client: AsyncClient, admin: dict[str, str]
    ) -> None:
        response = await client.get(
            "/api/v1/ingest/dead-letters", params={"topic": "a\x00b"}, headers=admin
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["query", "topic"]
