from __future__ import annotations

import json
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from httpx import AsyncClient

from plantpulse.telemetry import service
from tests.conftest import MachineFactory
from tests.telemetry.support import seed

T0 = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
METRICS = ("pressure", "speed", "temperature")
TIMESTAMPS = 34_000  # x 3 metrics = 102,000 readings over ~9.4 hours (1 s apart)


@pytest.fixture
async def big_machine(committed_machine: MachineFactory, pg_pool: asyncpg.Pool) -> uuid.UUID:
    m = await committed_machine(name="Press #7 (hall B)")
    await seed(
        pg_pool,
        m,
        [
            (T0 + timedelta(seconds=i), name, i + k / 10)
            for i in range(TIMESTAMPS)
            for k, name in enumerate(METRICS)
        ],
    )
    return m


WINDOW = service.TimeRange(T0, T0 + timedelta(days=2))


class TestExportFormats:
    async def test_csv_has_a_header_wide_rows_and_a_filename(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine(name="Line 1/Press")
        await seed(
            pg_pool,
            m,
            [(T0, "b", 1.5), (T0, "a", 2.0), (T0 + timedelta(seconds=1), "a", -3.25)],
        )
        response = await client.get(
            f"/api/v1/machines/{m}/telemetry/export",
            params={"start_time": "2024-01-15T10:00:00Z", "end_time": "2024-01-15T11:00:00Z"},
            headers=operator,
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.headers["content-disposition"] == (
            'attachment; filename="Line-1-Press_20240115T100000Z_20240115T110000Z.csv"'
        )
        assert response.text == "timestamp,a,b\n2024-01-15T10:00:00Z,2.0,1.5\n" + (
            "2024-01-15T10:00:01Z,-3.25,\n"
        )

    async def test_ndjson_rows_match_the_query_api(
        self,
        client: AsyncClient,
        operator: dict[str, str],
        committed_machine: MachineFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        m = await committed_machine()
        await seed(pg_pool, m, [(T0, "a", 1.0), (T0 + timedelta(days=1, seconds=1), "a", 2.0)])
        params = {"start_time": "2024-01-15T00:00:00Z", "end_time": "2024-01-17T00:00:00Z"}
        response = await client.get(
            f"/api/v1/machines/{m}/telemetry/export",
            params={**params, "format": "ndjson", "fields": "a"},
            headers=operator,
        )
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["content-disposition"].endswith('.ndjson"')
        assert [json.loads(line) for line in response.text.splitlines()] == [
            {"timestamp": "2024-01-15T10:00:00Z", "a": 1.0},
            {"timestamp": "2024-01-16T10:00:01Z", "a": 2.0},
        ]
        raw = await client.get(
            f"/api/v1/machines/{m}/telemetry", params={**params, "order": "asc"}, headers=operator
        )
        assert raw.json()["items"] == [json.loads(line) for line in response.text.splitlines()]

    async def test_an_empty_range_is_just_the_header(
        self, client: AsyncClient, operator: dict[str, str], committed_machine: MachineFactory
    ) -> None:
        m = await committed_machine()
        response = await client.get(
            f"/api/v1/machines/{m}/telemetry/export", params={"fields": "x,y"}, headers=operator
        )
        assert response.text == "timestamp,x,y\n"


async def measure(
    pool: asyncpg.Pool, machine_id: uuid.UUID, window: service.TimeRange, fmt: str
) -> tuple[int, int, int, bytes]:
    """(lines, bytes, peak traced memory, last bytes) of consuming an export, keeping nothing."""
    lines = size = 0
    tail = b""
    tracemalloc.start()
    try:
        async for chunk in service.export_chunks(
            pool,
            machine_id=machine_id,
            metrics=METRICS,
            window=window,
            fmt=fmt,
            include_invalid=False,
        ):
            lines += chunk.count(b"\n")
            size += len(chunk)
            tail = chunk[-200:]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return lines, size, peak, tail


class TestExportAtScale:
    @pytest.mark.parametrize("fmt", ["csv", "ndjson"])
    async def test_100k_readings_stream_in_bounded_memory(
        self, pg_pool: asyncpg.Pool, big_machine: uuid.UUID, fmt: str
    ) -> None:
        # Warm up first: prepared statements, type codecs and pool connections are one-off
        # allocations, not part of the export's footprint.
        await measure(pg_pool, big_machine, service.TimeRange(T0, T0 + timedelta(minutes=1)), fmt)
        quarter = service.TimeRange(T0, T0 + timedelta(seconds=TIMESTAMPS // 4))
        _, quarter_size, quarter_peak, _ = await measure(pg_pool, big_machine, quarter, fmt)
        lines, size, peak, tail = await measure(pg_pool, big_machine, WINDOW, fmt)

        header = 1 if fmt == "csv" else 0
        assert lines == TIMESTAMPS + header
        assert size > 1_000_000
        # Holding the export (or its records) would cost several times its size; what is
        # left is the cursor's prefetch and the socket buffers, whatever the size.
        assert peak < size / 2, f"peak {peak} bytes for a {size}-byte export"
        assert size > 3.9 * quarter_size
        assert peak < 1.3 * quarter_peak + 64 * 1024, (peak, quarter_peak)
        last = tail.splitlines()[-1].decode()
        stamp = "2024-01-15T19:26:39Z"  # T0 + 33,999 s
        if fmt == "csv":
            assert last == f"{stamp},33999.0,33999.1,33999.2"
        else:
            assert json.loads(last) == {
                "timestamp": stamp,
                "pressure": 33999.0,
                "speed": 33999.1,
                "temperature": 33999.2,
            }

    async def test_the_http_export_carries_every_reading(
        self, client: AsyncClient, operator: dict[str, str], big_machine: uuid.UUID
    ) -> None:
        response = await client.get(
            f"/api/v1/machines/{big_machine}/telemetry/export",
            params={"start_time": "2024-01-15T00:00:00Z", "end_time": "2024-01-17T00:00:00Z"},
            headers=operator,
        )
        assert response.status_code == 200
        rows = response.text.splitlines()
        assert rows[0] == "timestamp,pressure,speed,temperature"
        assert len(rows) == TIMESTAMPS + 1
        assert rows[1] == "2024-01-15T10:00:00Z,0.0,0.1,0.2"
        assert response.headers["content-disposition"] == (
            'attachment; filename="Press-7-hall-B_20240115T000000Z_20240117T000000Z.csv"'
        )
