from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from httpx import AsyncClient

from plantpulse.telemetry import queries
from plantpulse.telemetry.router import _machine_latest
from plantpulse.telemetry.schemas import FleetLatest, MachineLatest
from tests.conftest import MachineFactory
from tests.telemetry.support import seed

T0 = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
FLEET = "/api/v1/telemetry/latest"


class TestMachineLatest:
    async def test_newest_by_event_time_not_arrival(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine(name="latest-press")
        await seed(pg_pool, m, [(T0 + timedelta(minutes=5), "t", 2.0), (T0, "p", 7.0)])
        # Arrives last but happened first: not the latest.
        await seed(pg_pool, m, [(T0, "t", 1.0)])
        response = await client.get(f"/api/v1/machines/{m}/telemetry/latest", headers=operator)
        assert response.status_code == 200, response.text
        # Built without the model on the hot path: it must still match the documented schema.
        MachineLatest.model_validate(response.json())
        assert response.json() == {
            "machine_id": str(m),
            "name": "latest-press",
            "metrics": {
                "p": {"value": 7.0, "timestamp": "2024-01-15T10:00:00Z"},
                "t": {"value": 2.0, "timestamp": "2024-01-15T10:05:00Z"},
            },
        }

    async def test_a_machine_without_readings_has_no_metrics(
        self, client: AsyncClient, operator: dict[str, str], committed_machine: MachineFactory
    ) -> None:
        m = await committed_machine()
        response = await client.get(f"/api/v1/machines/{m}/telemetry/latest", headers=operator)
        assert response.json()["metrics"] == {}


class TestFleetLatest:
    async def test_named_machines_and_unknown_ids(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        a, b = await committed_machine(name="fleet-a"), await committed_machine(name="fleet-b")
        await seed(pg_pool, a, [(T0, "t", 1.0), (T0 + timedelta(seconds=1), "t", 1.5)])
        await seed(pg_pool, b, [(T0, "rpm", 900.0)])
        ghost = uuid.uuid4()
        response = await client.get(
            FLEET, params={"machine_ids": f"{b},{a},{ghost},{a}"}, headers=operator
        )
        assert response.status_code == 200, response.text
        body = response.json()
        FleetLatest.model_validate(body)
        assert [(i["name"], i["metrics"]) for i in body["items"]] == [
            ("fleet-a", {"t": {"value": 1.5, "timestamp": "2024-01-15T10:00:01Z"}}),
            ("fleet-b", {"rpm": {"value": 900.0, "timestamp": "2024-01-15T10:00:00Z"}}),
        ]
        assert (body["total"], body["unknown_machine_ids"]) == (2, [str(ghost)])

    async def test_all_machines_paged_by_name(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        ids = [await committed_machine(name=f"zz-fleet-{i}") for i in range(3)]
        for i, m in enumerate(ids):
            await seed(pg_pool, m, [(T0, "t", float(i))])
        everything = (await client.get(FLEET, headers=operator)).json()
        names = [i["name"] for i in everything["items"]]
        assert {"zz-fleet-0", "zz-fleet-1", "zz-fleet-2"} <= set(names)
        assert names == sorted(names)
        assert everything["total"] >= 3
        page = await client.get(
            FLEET, params={"limit": 1, "offset": everything["total"] - 1}, headers=operator
        )
        assert [i["name"] for i in page.json()["items"]] == [names[-1]]

    @pytest.mark.parametrize(
        ("machine_ids", "fragment"),
        [
            ("nope", "'nope' is not a UUID"),
            (",".join(str(uuid.uuid4()) for _ in range(1001)), "at most 1000"),
        ],
    )
    async def test_bad_ids_are_422(
        self, client: AsyncClient, operator: dict[str, str], machine_ids: str, fragment: str
    ) -> None:
        response = await client.get(FLEET, params={"machine_ids": machine_ids}, headers=operator)
        assert response.status_code == 422
        assert fragment in response.json()["detail"]


class TestHostileQueries:
    async def test_fleet_offset_beyond_the_database_integer_is_a_422(
        self, client: AsyncClient, operator: dict[str, str]
    ) -> None:
        # Found by fuzzing the running service: it was a 503 "database unavailable".
        response = await client.get(FLEET, params={"offset": 2**100}, headers=operator)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == ["query", "offset"]


class TestSameAnswerAsBefore:
    """The one-query route against the way it was answered before (the machine row, then
    `queries.latest`, shaped by the same function) on the same data."""

    async def _before(
        self, pool: asyncpg.Pool, machine_id: uuid.UUID, *, include_invalid: bool
    ) -> dict[str, object]:
        name = await pool.fetchval("SELECT name FROM machines WHERE id = $1", machine_id)
        records = await queries.latest(
            pool, machine_ids=[machine_id], include_invalid=include_invalid
        )
        return _machine_latest(machine_id, name, records, include_invalid)

    @pytest.mark.parametrize("include_invalid", [False, True])
    async def test_identical_json(
        self,
        client: AsyncClient,
        manager: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
        include_invalid: bool,
    ) -> None:
        m = await committed_machine(name="same-answer")
        empty = await committed_machine(name="no-readings")
        await seed(
            pg_pool,
            m,
            [
                (T0 + timedelta(minutes=3), "t", 3.25),
                (T0 + timedelta(minutes=9), "t", 99.0, False),  # newest, but invalid
                (T0 + timedelta(seconds=1), "p", -1e-9),
                (T0 + timedelta(days=400), "rpm", 1e300),  # far future: another chunk
                (T0 - timedelta(days=30), "only-invalid", 1.0, False),
                (T0 + timedelta(microseconds=123456), "µ-metric", 0.0),
            ],
        )
        # Arrives late, happened earlier than what is there: not the latest.
        await seed(pg_pool, m, [(T0, "rpm", 7.0)])
        params = {"include_invalid": "true"} if include_invalid else {}
        for machine in (m, empty):
            response = await client.get(
                f"/api/v1/machines/{machine}/telemetry/latest", params=params, headers=manager
            )
            assert response.status_code == 200, response.text
            expected = await self._before(pg_pool, machine, include_invalid=include_invalid)
            assert response.json() == expected
            MachineLatest.model_validate(response.json())

    async def test_unknown_machine_is_the_same_404(
        self, client: AsyncClient, operator: dict[str, str]
    ) -> None:
        ghost = uuid.uuid4()
        response = await client.get(f"/api/v1/machines/{ghost}/telemetry/latest", headers=operator)
        assert response.status_code == 404
        assert response.json() == {
            "error": "MachineNotFound",
            "detail": f"machine {ghost} does not exist",
            "status": 404,
        }
