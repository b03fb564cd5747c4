from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import asyncpg
import pytest
from httpx import AsyncClient
from redis.asyncio import Redis

from plantpulse.auth.permissions import Role
from plantpulse.state import Resources
from plantpulse.telemetry import queries
from plantpulse.telemetry.cache import TelemetryCache
from plantpulse.telemetry.schemas import TelemetryPage
from tests import support
from tests.conftest import Headers, MachineFactory, UserFactory
from tests.telemetry.support import seed

T0 = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
ISO = "%Y-%m-%dT%H:%M:%SZ"


def url(machine_id: uuid.UUID) -> str:
    return f"/api/v1/machines/{machine_id}/telemetry"


def iso(moment: datetime) -> str:
    return moment.strftime(ISO)


class TestRawRows:
    async def test_narrow_storage_comes_back_as_wide_rows(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        await seed(
            pg_pool,
            m,
            [
                (T0, "temperature", 20.0),
                (T0, "pressure", 101.0),
                (T0 + timedelta(seconds=1), "temperature", 21.0),
                (T0 + timedelta(seconds=2), "pressure", 102.0),
            ],
        )
        params = {"start_time": iso(T0), "end_time": iso(T0 + timedelta(minutes=1))}
        response = await client.get(url(m), params=params, headers=operator)
        assert response.status_code == 200, response.text
        body = response.json()
        TelemetryPage.model_validate(body)
        assert body["fields"] == ["pressure", "temperature"]
        assert body["items"] == [
            {"timestamp": "2024-01-15T10:00:02Z", "pressure": 102.0},
            {"timestamp": "2024-01-15T10:00:01Z", "temperature": 21.0},
            {"timestamp": "2024-01-15T10:00:00Z", "pressure": 101.0, "temperature": 20.0},
        ]
        assert body["has_more"] is False
        assert (body["start_time"], body["end_time"]) == (
            "2024-01-15T10:00:00Z",
            "2024-01-15T10:01:00Z",
        )

    async def test_limit_offset_and_order_count_timestamps(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        await seed(
            pg_pool,
            m,
            [(T0 + timedelta(seconds=i), name, float(i)) for i in range(10) for name in "ab"],
        )
        base = {"start_time": iso(T0), "end_time": iso(T0 + timedelta(hours=1))}
        page = (await client.get(url(m), params={**base, "limit": 3}, headers=operator)).json()
        assert [r["a"] for r in page["items"]] == [9.0, 8.0, 7.0]
        assert page["has_more"] is True
        asc: dict[str, str | int] = {**base, "order": "asc", "limit": 4, "offset": 8}
        page = (await client.get(url(m), params=asc, headers=operator)).json()
        assert [(r["a"], r["b"]) for r in page["items"]] == [(8.0, 8.0), (9.0, 9.0)]
        assert page["has_more"] is False
        only_b: dict[str, str | int] = {**base, "fields": "b", "limit": 1}
        page = (await client.get(url(m), params=only_b, headers=operator)).json()
        assert page["items"] == [{"timestamp": iso(T0 + timedelta(seconds=9)), "b": 9.0}]

    async def test_relative_times_are_relative_to_now(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        now = datetime.now(UTC).replace(microsecond=0)
        await seed(
            pg_pool,
            m,
            [
                (now - timedelta(minutes=10), "a", 1.0),
                (now - timedelta(minutes=45), "a", 2.0),
                (now - timedelta(hours=3), "a", 3.0),
                (now - timedelta(days=3), "a", 4.0),
            ],
        )

        async def values(**params: str) -> list[float]:
            response = await client.get(url(m), params=params, headers=operator)
            assert response.status_code == 200, response.text
            return [r["a"] for r in response.json()["items"]]

        assert await values(start_time="-30m") == [1.0]
        assert await values(start_time="-1h", end_time="now") == [1.0, 2.0]
        assert await values(start_time="-1h", end_time="-30m") == [2.0]
        # The default window is the last 24 hours.
        assert await values() == [1.0, 2.0, 3.0]
        assert await values(start_time="-7d") == [1.0, 2.0, 3.0, 4.0]
        assert await values(start_time="-1w", end_time="-1d") == [4.0]

    @pytest.mark.parametrize(
        ("params", "fragment"),
        [
            ({"start_time": "-1h", "end_time": "-2h"}, "must be before end_time"),
            ({"start_time": "yesterday"}, "neither ISO 8601"),
            ({"interval": "7x"}, "interval '7x' must look like"),
            ({"interval": "0m"}, "must look like"),
            ({"interval": "1s", "start_time": "-7d"}, "604800 buckets"),
            ({"interval": "1m", "agg": "median"}, "agg: unknown median"),
            ({"agg": "avg"}, "agg and fill need an interval"),
            ({"fields": "bad name"}, "not a metric name"),
            ({"limit": "0"}, "limit"),
            ({"order": "sideways"}, "order"),
        ],
    )
    async def test_bad_parameters_are_422(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        params: dict[str, str],
        fragment: str,
    ) -> None:
        m = await committed_machine()
        response = await client.get(url(m), params=params, headers=operator)
        assert response.status_code == 422, response.text
        assert fragment in response.json()["detail"]

    async def test_unknown_machine_is_404(
        self, client: AsyncClient, operator: dict[str, str]
    ) -> None:
        for path in ("", "/latest", "/export"):
            response = await client.get(url(uuid.uuid4()) + path, headers=operator)
            assert response.status_code == 404, path
            assert response.json()["error"] == "MachineNotFound"

    async def test_a_machine_without_readings_has_no_rows(
        self, client: AsyncClient, operator: dict[str, str], committed_machine: MachineFactory
    ) -> None:
        m = await committed_machine()
        for params in ({}, {"interval": "1h"}):
            response = await client.get(url(m), params=params, headers=operator)
            assert response.status_code == 200
            assert response.json()["items"] == []


def series(start: datetime, minutes: int, every: int = 10) -> list[tuple[datetime, str, float]]:
    """value i at start + i * every seconds: in minute k the values are 6k .. 6k+5."""
    count = minutes * 60 // every
    return [(start + timedelta(seconds=i * every), "v", float(i)) for i in range(count)]


class TestBuckets:
    async def test_a_known_series_gives_known_aggregates(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        await seed(pg_pool, m, series(T0, minutes=3))
        params = {
            "start_time": iso(T0),
            "end_time": iso(T0 + timedelta(minutes=3)),
            "interval": "1m",
            "agg": "avg,min,max,sum,count,first,last",
            "order": "asc",
        }
        response = await client.get(url(m), params=params, headers=operator)
        assert response.status_code == 200, response.text
        body = response.json()
        TelemetryPage.model_validate(body)
        assert (body["interval"], body["agg"]) == ("1m", params["agg"].split(","))
        expected = []
        for k in range(3):
            values = [6.0 * k + j for j in range(6)]
            expected.append(
                {
                    "timestamp": iso(T0 + timedelta(minutes=k)),
                    "v_avg": sum(values) / 6,
                    "v_min": values[0],
                    "v_max": values[-1],
                    "v_sum": sum(values),
                    "v_count": 6,
                    "v_first": values[0],
                    "v_last": values[-1],
                }
            )
        assert body["items"] == expected

    async def test_buckets_align_to_the_interval_not_the_start_time(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        await seed(pg_pool, m, series(T0, minutes=30, every=60))
        params = {
            "start_time": iso(T0 + timedelta(minutes=7)),
            "end_time": iso(T0 + timedelta(minutes=30)),
            "interval": "15m",
            "agg": "count,first",
            "order": "asc",
        }
        body = (await client.get(url(m), params=params, headers=operator)).json()
        # The first bucket starts at 10:00 but holds only minutes 7..14 of the range.
        assert body["items"] == [
            {"timestamp": "2024-01-15T10:00:00Z", "v_count": 8, "v_first": 7.0},
            {"timestamp": "2024-01-15T10:15:00Z", "v_count": 15, "v_first": 15.0},
        ]

    async def test_empty_buckets_are_omitted_unless_fill_null(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        await seed(pg_pool, m, [(T0, "v", 1.0), (T0 + timedelta(minutes=3, seconds=5), "v", 2.0)])
        params = {
            "start_time": iso(T0),
            "end_time": iso(T0 + timedelta(minutes=4)),
            "interval": "1m",
            "agg": "avg,count",
            "order": "asc",
        }
        sparse = (await client.get(url(m), params=params, headers=operator)).json()["items"]
        assert [r["timestamp"][11:16] for r in sparse] == ["10:00", "10:03"]
        filled = await client.get(url(m), params={**params, "fill": "null"}, headers=operator)
        assert filled.json()["items"] == [
            {"timestamp": "2024-01-15T10:00:00Z", "v_avg": 1.0, "v_count": 1},
            {"timestamp": "2024-01-15T10:01:00Z", "v_avg": None, "v_count": None},
            {"timestamp": "2024-01-15T10:02:00Z", "v_avg": None, "v_count": None},
            {"timestamp": "2024-01-15T10:03:00Z", "v_avg": 2.0, "v_count": 1},
        ]
        newest_first = await client.get(
            url(m), params={**params, "fill": "null", "order": "desc", "limit": 1}, headers=operator
        )
        assert newest_first.json()["items"][0]["timestamp"] == "2024-01-15T10:03:00Z"
        assert newest_first.json()["has_more"] is True

    @pytest.mark.parametrize("aggregates", [("avg", "min", "max", "sum", "count", "first", "last")])
    async def test_plain_postgresql_date_bin_matches_time_bucket(
        self,
        resources: Resources,
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
        aggregates: tuple[str, ...],
    ) -> None:
        assert resources.timescale.installed, "the test cluster has TimescaleDB"
        m = await committed_machine()
        await seed(pg_pool, m, series(T0 - timedelta(minutes=7), minutes=40, every=7))
        results = []
        for timescale in (True, False):
            records = await queries.buckets(
                pg_pool,
                machine_id=m,
                metrics=["v"],
                start=T0 - timedelta(minutes=5),
                end=T0 + timedelta(minutes=30),
                interval=timedelta(minutes=5),
                aggregates=aggregates,
                include_invalid=False,
                timescale=timescale,
            )
            results.append(sorted(tuple(r) for r in records))
        assert len(results[0]) == 7
        assert results[0] == results[1]


class TestInvalidReadings:
    """Readings outside their metric's plausible range: management only, and marked."""

    @pytest.fixture
    async def machine(self, committed_machine: MachineFactory, pg_pool: asyncpg.Pool) -> uuid.UUID:
        m = await committed_machine(name=f"press/{uuid.uuid4().hex[:6]} A")
        await seed(
            pg_pool,
            m,
            [
                (T0, "t", 10.0, True),
                (T0, "p", 5.0, True),
                (T0 + timedelta(seconds=10), "t", 999.0, False),
                (T0 + timedelta(seconds=20), "p", -1.0, False),
                (T0 + timedelta(seconds=20), "t", 12.0, True),
                (T0 + timedelta(seconds=30), "t", -500.0, False),
            ],
        )
        return m

    WINDOW: ClassVar[dict[str, str]] = {
        "start_time": iso(T0),
        "end_time": iso(T0 + timedelta(minutes=1)),
    }

    async def test_operator_never_sees_them(
        self, client: AsyncClient, operator: dict[str, str], machine: uuid.UUID
    ) -> None:
        raw = (await client.get(url(machine), params=self.WINDOW, headers=operator)).json()
        assert raw["items"] == [
            {"timestamp": iso(T0 + timedelta(seconds=20)), "t": 12.0},
            {"timestamp": iso(T0), "p": 5.0, "t": 10.0},
        ]
        buckets = await client.get(
            url(machine),
            params={**self.WINDOW, "interval": "1m", "agg": "min,max,count,last"},
            headers=operator,
        )
        assert buckets.json()["items"] == [
            {
                "timestamp": iso(T0),
                "p_min": 5.0,
                "p_max": 5.0,
                "p_count": 1,
                "p_last": 5.0,
                "t_min": 10.0,
                "t_max": 12.0,
                "t_count": 2,
                "t_last": 12.0,
            }
        ]
        latest = (await client.get(url(machine) + "/latest", headers=operator)).json()
        assert {k: v["value"] for k, v in latest["metrics"].items()} == {"p": 5.0, "t": 12.0}
        assert "valid" not in latest["metrics"]["t"]
        fleet = await client.get(
            "/api/v1/telemetry/latest", params={"machine_ids": str(machine)}, headers=operator
        )
        assert fleet.json()["items"][0]["metrics"] == latest["metrics"]
        export = await client.get(
            url(machine) + "/export", params={**self.WINDOW, "format": "csv"}, headers=operator
        )
        assert export.text == (
            "timestamp,p,t\n2024-01-15T10:00:00Z,5.0,10.0\n2024-01-15T10:00:20Z,,12.0\n"
        )
        ndjson = await client.get(
            url(machine) + "/export", params={**self.WINDOW, "format": "ndjson"}, headers=operator
        )
        assert "999" not in ndjson.text
        assert "-500" not in ndjson.text
        assert len(ndjson.text.splitlines()) == 2

    async def test_operator_may_not_ask_for_them(
        self, client: AsyncClient, operator: dict[str, str], machine: uuid.UUID
    ) -> None:
        for path in ("", "/latest", "/export"):
            response = await client.get(
                url(machine) + path, params={"include_invalid": "true"}, headers=operator
            )
            assert response.status_code == 403, path
            assert "telemetry:read-invalid" in response.json()["detail"]
        fleet = await client.get(
            "/api/v1/telemetry/latest", params={"include_invalid": "true"}, headers=operator
        )
        assert fleet.status_code == 403

    async def test_supervisor_does_not_see_them_either(
        self,
        client: AsyncClient,
        make_user: UserFactory,
        auth_headers: Headers,
        machine: uuid.UUID,
    ) -> None:
        supervisor = auth_headers(await make_user(Role.supervisor))
        raw = await client.get(url(machine), params=self.WINDOW, headers=supervisor)
        assert len(raw.json()["items"]) == 2
        denied = await client.get(
            url(machine), params={"include_invalid": "true"}, headers=supervisor
        )
        assert denied.status_code == 403

    async def test_management_sees_them_marked_on_request(
        self, client: AsyncClient, manager: dict[str, str], machine: uuid.UUID
    ) -> None:
        default = await client.get(url(machine), params=self.WINDOW, headers=manager)
        assert len(default.json()["items"]) == 2
        params = {**self.WINDOW, "include_invalid": "true", "order": "asc"}
        raw = (await client.get(url(machine), params=params, headers=manager)).json()
        assert raw["items"] == [
            {"timestamp": iso(T0), "p": 5.0, "t": 10.0, "valid": {"p": True, "t": True}},
            {"timestamp": iso(T0 + timedelta(seconds=10)), "t": 999.0, "valid": {"t": False}},
            {
                "timestamp": iso(T0 + timedelta(seconds=20)),
                "p": -1.0,
                "t": 12.0,
                "valid": {"p": False, "t": True},
            },
            {"timestamp": iso(T0 + timedelta(seconds=30)), "t": -500.0, "valid": {"t": False}},
        ]
        buckets = await client.get(
            url(machine),
            params={**params, "interval": "1m", "agg": "max,count"},
            headers=manager,
        )
        assert buckets.json()["items"] == [
            {
                "timestamp": iso(T0),
                "p_max": 5.0,
                "p_count": 2,
                "t_max": 999.0,
                "t_count": 4,
                "p_invalid": 1,
                "t_invalid": 2,
            }
        ]
        latest = await client.get(
            url(machine) + "/latest", params={"include_invalid": "true"}, headers=manager
        )
        assert latest.json()["metrics"]["t"] == {
            "value": -500.0,
            "timestamp": iso(T0 + timedelta(seconds=30)),
            "valid": False,
        }
        export = await client.get(
            url(machine) + "/export", params={**params, "format": "csv"}, headers=manager
        )
        assert export.text.splitlines() == [
            "timestamp,p,t,valid",
            "2024-01-15T10:00:00Z,5.0,10.0,true",
            "2024-01-15T10:00:10Z,,999.0,false",
            "2024-01-15T10:00:20Z,-1.0,12.0,false",
            "2024-01-15T10:00:30Z,,-500.0,false",
        ]


class TestDelete:
    async def test_deletes_the_range_and_reports_the_count(
        self,
        client: AsyncClient,
        manager: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        await seed(pg_pool, m, series(T0, minutes=3))
        params = {
            "start_time": iso(T0 + timedelta(minutes=1)),
            "end_time": iso(T0 + timedelta(minutes=2)),
        }
        response = await client.delete(url(m), params=params, headers=manager)
        assert response.status_code == 200, response.text
        assert response.json()["deleted"] == 6
        left = await pg_pool.fetchval("SELECT count(*) FROM readings WHERE machine_id = $1", m)
        assert left == 12

    async def test_start_time_is_required(
        self, client: AsyncClient, manager: dict[str, str], committed_machine: MachineFactory
    ) -> None:
        response = await client.delete(url(await committed_machine()), headers=manager)
        assert response.status_code == 422
        assert response.json()["detail"] == "start_time is required"

    async def test_only_management_deletes(
        self,
        client: AsyncClient,
        make_user: UserFactory,
        auth_headers: Headers,
        committed_machine: MachineFactory,
    ) -> None:
        m = await committed_machine()
        for role in (Role.operator, Role.supervisor):
            headers = auth_headers(await make_user(role))
            response = await client.delete(url(m), params={"start_time": "-1d"}, headers=headers)
            assert response.status_code == 403


class TestCache:
    PARAMS: ClassVar[dict[str, str]] = {
        "start_time": iso(T0),
        "end_time": iso(T0 + timedelta(minutes=3)),
        "interval": "1m",
        "agg": "count,sum",
    }

    async def test_historic_buckets_are_cached_until_a_delete(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        manager: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        await seed(pg_pool, m, series(T0, minutes=3))
        first = await client.get(url(m), params=self.PARAMS, headers=operator)
        second = await client.get(url(m), params=self.PARAMS, headers=operator)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
        assert first.json() == second.json()
        # Management without include_invalid sees the same data: same entry.
        shared = await client.get(url(m), params=self.PARAMS, headers=manager)
        assert shared.headers["x-cache"] == "hit"
        marked = await client.get(
            url(m), params={**self.PARAMS, "include_invalid": "true"}, headers=manager
        )
        assert marked.headers["x-cache"] == "miss"

        deleted = await client.delete(url(m), params=self.PARAMS, headers=manager)
        assert deleted.json()["deleted"] == 18
        after = await client.get(url(m), params=self.PARAMS, headers=operator)
        assert after.headers["x-cache"] == "miss"
        assert after.json()["items"] == []

    async def test_backfilled_readings_retire_the_cache(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        resources: Resources,
        committed_machine: MachineFactory,
    ) -> None:
        m = await committed_machine()
        await resources.catalog.known([m])
        await resources.writer.write([(T0, m, "v", 1.0)], source="test")
        first = await client.get(url(m), params=self.PARAMS, headers=operator)
        assert first.json()["items"][0]["v_count"] == 1
        await resources.writer.write([(T0 + timedelta(seconds=1), m, "v", 2.0)], source="test")
        # The writer's listener bumps the machine's version in the background.
        for _ in range(100):
            response = await client.get(url(m), params=self.PARAMS, headers=operator)
            if response.headers["x-cache"] == "miss":
                break
            await asyncio.sleep(0.02)
        assert response.json()["items"][0]["v_count"] == 2

    async def test_recent_windows_live_only_seconds(self, resources: Resources) -> None:
        cache = resources.extras["telemetry_cache"]
        now = datetime.now(UTC)
        assert cache.ttl_for(end=now, relative=False, now=now) == cache.recent_ttl
        assert cache.ttl_for(end=now - timedelta(hours=1), relative=True, now=now) == 5
        historic = cache.ttl_for(end=now - timedelta(minutes=6), relative=False, now=now)
        assert historic == cache.historic_ttl > 60

    async def test_queries_work_when_redis_is_down(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        manager: dict[str, str],
        resources: Resources,
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        m = await committed_machine()
        await seed(pg_pool, m, series(T0, minutes=3))
        dead = Redis.from_url(f"redis://127.0.0.1:{support.free_port()}/0")
        monkeypatch.setitem(resources.extras, "telemetry_cache", TelemetryCache(dead, "x:"))
        try:
            for _ in range(2):
                response = await client.get(url(m), params=self.PARAMS, headers=operator)
                assert response.status_code == 200, response.text
                assert response.headers["x-cache"] == "miss"
                assert [r["v_count"] for r in response.json()["items"]] == [6, 6, 6]
            # Invalidation cannot reach Redis either: the delete still succeeds.
            deleted = await client.delete(url(m), params={"start_time": iso(T0)}, headers=manager)
            assert deleted.status_code == 200, deleted.text
            assert deleted.json()["deleted"] == 18
        finally:
            await dead.aclose()


class TestHostileTimes:
    @pytest.mark.parametrize(
        "start", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "-999999999w"]
    )
    async def test_start_time_that_overflows_is_a_422(
        self,
        start: str,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
    ) -> None:
        # Found by fuzzing the running service: each was a 500.
        m = await committed_machine()
        response = await client.get(url(m), params={"start_time": start}, headers=operator)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "InvalidQuery"
        assert response.json()["detail"].startswith("start_time:")


class TestGapFilling:
    @pytest.mark.parametrize(
        ("fill", "values"),
        [
            ("previous", [1.0, 1.0, 1.0, 4.0, 4.0]),
            ("linear", [1.0, 2.0, 3.0, 4.0, None]),
            ("null", [1.0, None, None, 4.0, None]),
        ],
    )
    async def test_empty_buckets_are_filled_as_asked(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
        fill: str,
        values: list[float | None],
    ) -> None:
        m = await committed_machine()
        await seed(pg_pool, m, [(T0, "v", 1.0), (T0 + timedelta(minutes=3, seconds=5), "v", 4.0)])
        params = {
            "start_time": iso(T0),
            "end_time": iso(T0 + timedelta(minutes=5)),
            "interval": "1m",
            "agg": "avg,count",
            "order": "asc",
            "fill": fill,
        }
        response = await client.get(url(m), params=params, headers=operator)
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert [r["v_avg"] for r in items] == values
        counts = [1, 0, 0, 1, 0] if fill != "null" else [1, None, None, 1, None]
        assert [r["v_count"] for r in items] == counts
