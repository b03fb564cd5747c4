from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from sqlalchemy.engine import make_url

from plantpulse.app import create_app
from plantpulse.auth.permissions import Role
from plantpulse.config import DatabaseSettings, Settings
from plantpulse.state import Resources
from plantpulse.telemetry.writer import BatchWriter
from tests import support
from tests.conftest import Headers, MachineFactory, UserFactory, make_settings
from tests.telemetry.support import give_api_key, stored

INGEST = "/api/v1/telemetry/ingest"
T0 = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


def batch(*entries: tuple[object, list[dict[str, Any]]], **extra: object) -> dict[str, Any]:
    return {
        "gateway_id": "Gateway-001",
        **extra,
        "batch": [{"machine_id": str(m), "readings": r} for m, r in entries],
    }


def device(machine_id: uuid.UUID) -> str:
    return f"/api/v1/machines/{machine_id}/telemetry"


class TestGatewayBatch:
    async def test_all_valid_readings_are_stored_and_answered_200(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        payload = batch(
            (m, [{"timestamp": "2024-01-15T10:30:00Z", "temperature": 72.5, "pressure": 101.3}]),
            (m, [{"timestamp": 1705314601, "temperature": 73}]),
        )
        response = await client.post(INGEST, json=payload, headers=supervisor)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "accepted": 3,
            "stored": 3,
            "duplicates": 0,
            "rejected": 0,
            "rejected_items": [],
            "rejected_items_truncated": False,
        }
        assert await stored(pg_pool, m) == [
            (T0, "pressure", 101.3),
            (T0, "temperature", 72.5),
            (T0 + timedelta(seconds=1), "temperature", 73.0),
        ]

    async def test_mixed_batch_stores_the_good_and_answers_207_with_reasons(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        unknown = uuid.uuid4()
        far_future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        payload = batch(
            (m, [{"timestamp": "2024-01-15T10:30:00Z", "temperature": 72.5, "speed": "fast"}]),
            (m, [{"timestamp": far_future, "temperature": 1}, {"temperature": None}]),
            ("not-a-uuid", [{"temperature": 1}]),
            (unknown, [{"temperature": 1}]),
            timestamp="2024-01-15T10:31:00Z",
        )
        # NaN is not JSON, but Python and many gateways send it: rejected, not a 400.
        body = json.dumps(payload).replace('"temperature": 72.5', '"temperature": 72.5, "x": NaN')
        response = await client.post(
            INGEST, content=body, headers={**supervisor, "Content-Type": "application/json"}
        )
        assert response.status_code == 207, response.text
        result = response.json()
        assert (result["accepted"], result["stored"], result["duplicates"]) == (1, 1, 0)
        assert result["rejected"] == 6
        reasons = {item["where"]: item["reason"] for item in result["rejected_items"]}
        assert reasons == {
            "batch[0].readings[0].x": "value of 'x' is not finite",
            "batch[0].readings[0].speed": "value of 'speed' is not a number",
            "batch[1].readings[0].timestamp": reasons["batch[1].readings[0].timestamp"],
            "batch[1].readings[1]": "the reading has no numeric metric",
            "batch[2].machine_id": "machine_id must be a UUID",
            str(unknown): f"machine {unknown} is not registered",
        }
        assert "in the future" in reasons["batch[1].readings[0].timestamp"]
        assert await stored(pg_pool, m) == [(T0, "temperature", 72.5)]

    async def test_resending_the_same_readings_stores_nothing_new(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        payload = batch((m, [{"timestamp": 1705314600 + i, "a": i, "b": -i} for i in range(50)]))
        first = await client.post(INGEST, json=payload, headers=supervisor)
        again = await client.post(INGEST, json=payload, headers=supervisor)
        assert first.json()["stored"] == 100
        assert again.status_code == 200
        assert (again.json()["accepted"], again.json()["stored"]) == (100, 0)
        assert again.json()["duplicates"] == 100
        assert len(await stored(pg_pool, m)) == 100

    async def test_reading_times_fall_back_to_the_batch_then_the_server(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        before = datetime.now(UTC)
        with_batch_time = batch((m, [{"a": 1}]), timestamp="2024-01-15T10:30:00Z")
        without = batch((m, [{"b": 2}]))
        assert (await client.post(INGEST, json=with_batch_time, headers=supervisor)).is_success
        assert (await client.post(INGEST, json=without, headers=supervisor)).is_success
        rows = await stored(pg_pool, m)
        assert rows[0] == (T0, "a", 1.0)
        assert before <= rows[1][0] <= datetime.now(UTC)

    async def test_nothing_accepted_is_a_422_envelope_with_the_items(
        self, client: AsyncClient, supervisor: dict[str, str], committed_machine: MachineFactory
    ) -> None:
        m = await committed_machine()
        unknown = uuid.uuid4()
        response = await client.post(
            INGEST, json=batch((m, [{"a": "x"}]), (unknown, [{"a": 1}])), headers=supervisor
        )
        assert response.status_code == 422
        body = response.json()
        assert (body["error"], body["status"]) == ("NothingAccepted", 422)
        assert body["detail"] == "no reading was accepted (2 rejected)"
        assert body["accepted"] == 0
        assert [i["where"] for i in body["rejected_items"]] == [
            "batch[0].readings[0].a",
            str(unknown),
        ]

    async def test_the_rejection_list_is_capped_but_counted(
        self, client: AsyncClient, supervisor: dict[str, str], committed_machine: MachineFactory
    ) -> None:
        m = await committed_machine()
        payload = batch((m, [{"a": "x"}] * 1001 + [{"timestamp": 1705314600, "a": 1}]))
        response = await client.post(INGEST, json=payload, headers=supervisor)
        assert response.status_code == 207
        body = response.json()
        assert (body["accepted"], body["rejected"]) == (1, 1001)
        assert len(body["rejected_items"]) == 1000
        assert body["rejected_items_truncated"] is True

    @pytest.mark.parametrize(
        ("payload", "detail"),
        [
            ({"batch": []}, "the payload holds no readings"),
            ({"batch": {}}, "'batch' must be a list of machine entries"),
            ([1, 2], "the payload must be a JSON object"),
        ],
    )
    async def test_unusable_payloads_are_422(
        self, client: AsyncClient, supervisor: dict[str, str], payload: object, detail: str
    ) -> None:
        response = await client.post(INGEST, json=payload, headers=supervisor)
        assert response.status_code == 422
        assert response.json()["detail"] == detail
        assert response.json()["status"] == 422

    @pytest.mark.parametrize("body", [b"{not json", b"", b'{"batch": [', b"[" * 100_000])
    async def test_malformed_json_is_a_400_envelope(
        self, client: AsyncClient, supervisor: dict[str, str], body: bytes
    ) -> None:
        response = await client.post(INGEST, content=body, headers=supervisor)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "BadRequest"

    async def test_operator_may_not_ingest(
        self, client: AsyncClient, make_user: UserFactory, auth_headers: Headers
    ) -> None:
        operator = auth_headers(await make_user(Role.operator))
        response = await client.post(INGEST, json={"batch": []}, headers=operator)
        assert response.status_code == 403
        assert "telemetry:write" in response.json()["detail"]


class TestLimits:
    async def test_declared_length_over_the_limit_is_413(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        resources: Resources,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(resources.settings.ingest, "max_payload_bytes", 2048)
        body = json.dumps(batch((uuid.uuid4(), [{"a": i} for i in range(500)])))
        response = await client.post(INGEST, content=body, headers=supervisor)
        assert response.status_code == 413
        assert response.json()["error"] == "PayloadTooLarge"
        assert "limit is 2048" in response.json()["detail"]

    async def test_actual_size_counts_when_no_length_is_declared(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        resources: Resources,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(resources.settings.ingest, "max_payload_bytes", 2048)

        async def chunked() -> AsyncIterator[bytes]:
            # No Content-Length: httpx sends a streamed body in chunks.
            yield b'{"batch": ['
            for _ in range(100):
                yield b'{"machine_id": "x", "readings": []},'
            yield b"]}"

        response = await client.post(INGEST, content=chunked(), headers=supervisor)
        assert response.status_code == 413
        assert response.json()["detail"] == "the body exceeds the limit of 2048 bytes"

    async def test_too_many_readings_is_413_and_stores_nothing(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        resources: Resources,
        monkeypatch: pytest.MonkeyPatch,
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        monkeypatch.setattr(resources.settings.ingest, "max_readings_per_request", 5)
        m = await committed_machine()
        ok = await client.post(INGEST, json=batch((m, [{"a": 1, "b": 2}] * 1)), headers=supervisor)
        assert ok.status_code == 200
        payload = batch((m, [{"timestamp": 1705314600 + i, "a": i, "b": i} for i in range(3)]))
        response = await client.post(INGEST, json=payload, headers=supervisor)
        assert response.status_code == 413
        assert response.json()["detail"] == (
            "6 readings in one request; the limit is 5 (split the batch)"
        )
        assert len(await stored(pg_pool, m)) == 2


class TestTimestampBoundaries:
    async def test_future_skew_edge_and_epoch_milliseconds(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        committed_machine: MachineFactory,
        resources: Resources,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        skew = timedelta(seconds=resources.live.future_skew_seconds)
        now = datetime.now(UTC)
        inside = (now + skew - timedelta(seconds=2)).isoformat()
        outside = (now + skew + timedelta(seconds=5)).isoformat()
        payload = batch(
            (
                m,
                [
                    {"timestamp": inside, "a": 1},
                    {"timestamp": outside, "a": 2},
                    {"timestamp": 1705314600123, "a": 3},
                    {"timestamp": 99_999_999_999, "a": 4},
                    {"timestamp": 0, "a": 5},
                    {"timestamp": 100_000_000_000, "a": 6},
                ],
            )
        )
        response = await client.post(INGEST, json=payload, headers=supervisor)
        assert response.status_code == 207
        # Just below 1e11 is still seconds: the year 5138, far in the future.
        assert [i["where"] for i in response.json()["rejected_items"]] == [
            "batch[0].readings[1].timestamp",
            "batch[0].readings[3].timestamp",
        ]
        times = {value: t for t, _, value in await stored(pg_pool, m)}
        assert set(times) == {1.0, 3.0, 5.0, 6.0}
        assert times[1.0] > now
        assert times[3.0] == T0 + timedelta(milliseconds=123)
        assert times[5.0] == datetime(1970, 1, 1, tzinfo=UTC)
        # From 1e11 on it is milliseconds.
        assert times[6.0] == datetime(1973, 3, 3, 9, 46, 40, tzinfo=UTC)

    async def test_timestamps_out_of_range_and_huge_values_are_rejected_not_500(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        # Found by fuzzing the running service: the first two were 500s, the third a 503
        # ("database unavailable") because TimescaleDB refuses year 1.
        m = await committed_machine()
        payload = {
            "readings": [
                {"timestamp": "9999-12-31T23:59:59-14:00", "a": 1},
                {"timestamp": "2024-01-15T10:30:00Z", "a": 10**400, "b": 2},
                {"timestamp": "0001-01-01T00:00:00Z", "a": 3},
            ]
        }
        response = await client.post(device(m), json=payload, headers=supervisor)
        assert response.status_code == 207, response.text
        assert [i["where"] for i in response.json()["rejected_items"]] == [
            "readings[0].timestamp",
            "readings[1].a",
            "readings[2].timestamp",
        ]
        assert await stored(pg_pool, m) == [(T0, "b", 2.0)]


class TestReadingsAtTheSameTime:
    """Issue 8, item 5: timestamp-less readings of one request used to collapse into one row,
    the rest answered as "duplicates" (200) and lost without a word."""

    async def test_device_readings_without_timestamps_are_207_with_reasons(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        response = await client.post(
            device(m),
            json={"readings": [{"vib": 1}, {"vib": 2}, {"vib": 3}]},
            headers=supervisor,
        )
        assert response.status_code == 207, response.text
        body = response.json()
        assert (body["accepted"], body["stored"], body["duplicates"], body["rejected"]) == (
            1,
            1,
            0,
            2,
        )
        assert [i["where"] for i in body["rejected_items"]] == [
            "readings[1].vib",
            "readings[2].vib",
        ]
        assert all(
            i["reason"].startswith("readings[0] already has 'vib' at ")
            for i in body["rejected_items"]
        )
        assert [(metric, value) for _, metric, value in await stored(pg_pool, m)] == [("vib", 1.0)]

    async def test_gateway_repeats_are_207_and_distinct_times_are_kept(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        payload = batch(
            (m, [{"timestamp": 1705314600, "t": 1}, {"timestamp": 1705314601, "t": 2}]),
            (m, [{"timestamp": "2024-01-15T10:30:00Z", "t": 9}]),
        )
        response = await client.post(INGEST, json=payload, headers=supervisor)
        assert response.status_code == 207, response.text
        body = response.json()
        assert (body["stored"], body["duplicates"], body["rejected"]) == (2, 0, 1)
        assert body["rejected_items"][0]["where"] == "batch[1].readings[0].t"
        assert await stored(pg_pool, m) == [
            (T0, "t", 1.0),
            (T0 + timedelta(seconds=1), "t", 2.0),
        ]


class TestDeviceRoute:
    async def test_data_shape_is_stored(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        response = await client.post(
            device(m),
            json={"timestamp": "2024-01-15T10:30:00Z", "data": {"t": 23.5}, "metadata": {"f": 1}},
            headers=supervisor,
        )
        assert response.status_code == 200, response.text
        assert await stored(pg_pool, m) == [(T0, "t", 23.5)]

    async def test_unknown_machine_is_404(
        self, client: AsyncClient, supervisor: dict[str, str]
    ) -> None:
        response = await client.post(device(uuid.uuid4()), json={"t": 1}, headers=supervisor)
        assert response.status_code == 404
        assert response.json()["error"] == "MachineNotFound"

    async def test_unknown_machines_are_registered_when_the_setting_allows(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        resources: Resources,
        monkeypatch: pytest.MonkeyPatch,
        pg_pool: asyncpg.Pool,
    ) -> None:
        monkeypatch.setattr(resources.live, "auto_register_machines", True)
        new = uuid.uuid4()
        try:
            response = await client.post(device(new), json={"t": 1}, headers=supervisor)
            assert response.status_code == 200, response.text
            gateway = await client.post(INGEST, json=batch((new, [{"u": 2}])), headers=supervisor)
            assert gateway.status_code == 200
            assert await pg_pool.fetchval("SELECT name FROM machines WHERE id = $1", new) == str(
                new
            )
            assert {r[1] for r in await stored(pg_pool, new)} == {"t", "u"}
        finally:
            await pg_pool.execute("DELETE FROM readings WHERE machine_id = $1", new)
            await pg_pool.execute("DELETE FROM machines WHERE id = $1", new)


class TestApiKey:
    async def test_a_machine_sends_its_own_readings(
        self, client: AsyncClient, committed_machine: MachineFactory, pg_pool: asyncpg.Pool
    ) -> None:
        m = await committed_machine()
        key = await give_api_key(pg_pool, m)
        response = await client.post(
            device(m), json={"timestamp": 1705314600, "t": 1}, headers={"X-API-Key": key}
        )
        assert response.status_code == 200, response.text
        assert await stored(pg_pool, m) == [(T0, "t", 1.0)]

    async def test_a_machine_may_not_send_for_another_on_its_route(
        self, client: AsyncClient, committed_machine: MachineFactory, pg_pool: asyncpg.Pool
    ) -> None:
        mine, other = await committed_machine(), await committed_machine()
        key = await give_api_key(pg_pool, mine)
        response = await client.post(device(other), json={"t": 1}, headers={"X-API-Key": key})
        assert response.status_code == 403
        assert response.json()["error"] == "PermissionDenied"
        assert await stored(pg_pool, other) == []

    async def test_gateway_batch_with_a_key_rejects_other_machines_per_item(
        self, client: AsyncClient, committed_machine: MachineFactory, pg_pool: asyncpg.Pool
    ) -> None:
        mine, other = await committed_machine(), await committed_machine()
        key = await give_api_key(pg_pool, mine)
        payload = batch(
            (mine, [{"timestamp": 1705314600, "t": 1}]),
            (other, [{"timestamp": 1705314600, "t": 2}]),
        )
        response = await client.post(INGEST, json=payload, headers={"X-API-Key": key})
        assert response.status_code == 207, response.text
        items = response.json()["rejected_items"]
        assert [i["where"] for i in items] == ["batch[1].machine_id"]
        assert f"may not send readings for {other}" in items[0]["reason"]
        assert await stored(pg_pool, mine) == [(T0, "t", 1.0)]
        assert await stored(pg_pool, other) == []

    async def test_a_wrong_key_is_401(
        self, client: AsyncClient, committed_machine: MachineFactory
    ) -> None:
        m = await committed_machine()
        response = await client.post(
            device(m), json={"t": 1}, headers={"X-API-Key": "pp_00000000_nope"}
        )
        assert response.status_code == 401
        assert response.json()["error"] == "InvalidApiKey"


class TestDatabaseOutage:
    async def test_a_failing_writer_is_503_not_500(
        self,
        client: AsyncClient,
        supervisor: dict[str, str],
        committed_machine: MachineFactory,
        resources: Resources,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        m = await committed_machine()
        await resources.catalog.known([m])
        # A real pool to a port nobody listens on: every acquire fails to connect.
        dead = await asyncpg.create_pool(
            f"postgresql://postgres@127.0.0.1:{support.free_port()}/none", min_size=0
        )
        monkeypatch.setattr(resources, "writer", BatchWriter(dead, resources.catalog))
        try:
            response = await client.post(INGEST, json=batch((m, [{"t": 1}])), headers=supervisor)
        finally:
            await dead.close()
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "DatabaseUnavailable"
        assert response.headers["retry-after"] == "5"

    async def test_database_down_for_the_whole_app_is_503(
        self, settings: Settings, supervisor: dict[str, str]
    ) -> None:
        # Nothing listens on a free port, whichever server the tests use.
        url = (
            make_url(support.database_url("x"))
            .set(port=support.free_port())
            .render_as_string(hide_password=False)
        )
        down = make_settings(url, database=DatabaseSettings(url=url), auth=settings.auth)
        app = create_app(down)
        async with (
            LifespanManager(app) as manager,
            AsyncClient(
                transport=ASGITransport(app=manager.app, raise_app_exceptions=False),
                base_url="http://test",
            ) as client,
        ):
            # A valid token (same secret) whose user lookup needs the database; a device key.
            for headers in (supervisor, {"X-API-Key": "pp_00000000_whatever"}):
                response = await client.post(INGEST, json={"batch": []}, headers=headers)
                assert response.status_code == 503, response.text
                assert response.json()["error"] == "DatabaseUnavailable"
                assert response.json()["status"] == 503
